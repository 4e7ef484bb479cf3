"""Built-in rewards computed exactly from the task: answer correctness, step validity, format, length.

Each is a TRL-signature reward function (see `framework.rewards.base`). Those
that need ground truth read the `example` column, the `Example` each
completion answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.data.tokenizer import THINK_END, THINK_START
from framework.rewards.base import message_content, split_completion


def _examples(columns: dict, name: str, count: int) -> list[Example]:
    if "example" not in columns:
        raise ValueError(
            f"reward {name!r} needs the 'example' column (the Example each completion answers); "
            "pass framework.rewards.reward_columns(examples) as keyword columns"
        )
    examples = columns["example"]
    if len(examples) != count:
        raise ValueError(f"reward {name!r}: the 'example' column has {len(examples)} entries for {count} completions")
    return examples


class AnswerCorrectness:
    """1.0 when the task's checker accepts the completion's answer, else 0.0 (an unclosed trace has none).

    Without a task, the answer must equal the example's reference answer up to whitespace.
    """

    __name__ = "answer_correct"

    def __init__(self, task: Task | None = None) -> None:
        self.task = task

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float]:
        examples = _examples(columns, self.__name__, len(completions))
        rewards = []
        for prompt, completion, example in zip(prompts, completions, examples):
            answer = split_completion(prompt, completion).answer
            rewards.append(float(answer is not None and self._check(example, answer)))
        return rewards

    def _check(self, example: Example, answer: str) -> bool:
        if self.task is not None:
            return self.task.check_answer(example, answer)
        return " ".join(answer.split()) == " ".join(example.answer.split())


class StepReward:
    """A verifiable process reward from the task's step checker.

    - `fraction`: valid steps / n
    - `first_invalid`: steps before the first invalid one / n

    where n = max(steps written, reference steps), so that stopping early or
    padding a trace with extra valid-looking steps cannot raise the reward
    (without reference steps, n is the number written). None when the mode has
    no trace to judge (`none`/`pause` prompts close the think block
    themselves); 0.0 when a trace was expected and none was written.
    """

    def __init__(self, task: Task, variant: Literal["fraction", "first_invalid"] = "fraction") -> None:
        if variant not in ("fraction", "first_invalid"):
            raise ValueError(f"unknown step reward variant {variant!r}; expected 'fraction' or 'first_invalid'")
        self.task = task
        self.variant = variant
        self.__name__ = f"steps_{variant}"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float | None]:
        examples = _examples(columns, self.__name__, len(completions))
        rewards: list[float | None] = []
        for prompt, completion, example in zip(prompts, completions, examples):
            parsed = split_completion(prompt, completion)
            if not parsed.trace_expected:
                rewards.append(None)
                continue
            verdicts = self.task.check_steps(example, parsed.trace)
            n = max(len(verdicts), len(example.steps))
            if n == 0:
                rewards.append(0.0)
                continue
            if self.variant == "fraction":
                credited = sum(verdicts)
            else:
                credited = verdicts.index(False) if False in verdicts else len(verdicts)
            rewards.append(credited / n)
        return rewards


def think_format(prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float]:
    """1.0 when prompt + completion hold exactly one `<think>` … `</think>` block followed by a non-empty answer.

    TRL's `think_format_reward` checks the completion alone; here the block
    may open (cot) or open and close (none, pause) in the prompt. A
    conversational completion holds the whole block in its content.
    """
    rewards = []
    for prompt, completion in zip(prompts, completions):
        text = prompt + completion if isinstance(completion, str) else message_content(completion)
        well_formed = (
            text.count(THINK_START) == 1
            and text.count(THINK_END) == 1
            and text.index(THINK_START) < text.index(THINK_END)
            and bool(text[text.index(THINK_END) + len(THINK_END) :].strip())
        )
        rewards.append(float(well_formed))
    return rewards


class LengthPenalty:
    """DAPO's soft overlong punishment (TRL's `get_soft_overlong_punishment`) in completion tokens.

    0 up to `max_tokens - margin` tokens, then falling linearly to -1 at
    `max_tokens`, and -1 beyond. `margin = max_tokens` makes it a plain linear
    cost `-tokens / max_tokens`. Reads the `completion_ids` column.
    """

    __name__ = "length_penalty"

    def __init__(self, max_tokens: int, margin: int) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if not 0 < margin <= max_tokens:
            raise ValueError(f"margin must be in (0, max_tokens={max_tokens}], got {margin}")
        self.max_tokens = max_tokens
        self.margin = margin

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float]:
        if "completion_ids" not in columns:
            raise ValueError(f"reward {self.__name__!r} needs the 'completion_ids' column (generated token ids)")
        free = self.max_tokens - self.margin
        return [-min(max(len(ids) - free, 0) / self.margin, 1.0) for ids in columns["completion_ids"]]
