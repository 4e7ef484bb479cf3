"""The reward-function contract (TRL's), the completion text it reads, and weighted combination.

A reward function is any callable

    f(prompts: list[str], completions: list[str], **columns) -> list[float | None]

called with keyword arguments only, exactly as TRL's `GRPOTrainer` calls its
`reward_funcs`, so a TRL reward function works here unchanged (and these work
in TRL). `None` means "not applicable to this completion" (e.g. a process
reward for a completion with no trace); such entries are left out of that
function's mean and of the weighted sum.

`prompts[i] + completions[i]` is the full text the model read and wrote, the
reasoning markup included: a `cot` reasoner's prompt ends with `<think>` and
its completion reads `trace </think> answer`; a `none` reasoner's prompt ends
with `<think></think>` and its completion is the answer. `split_completion`
recovers trace and answer from that text for every mode.

Columns every regime passes (see `reward_columns`): `example` (the `Example`
each completion answers, so checkers get their ground truth), `answer` (its
reference answer, a TRL-style ground-truth column) and `completion_ids` (the
generated token ids, EOS included when the model stopped).

Conversational data (`Rewards(..., conversational=True)`) is scored as TRL's
`GRPOTrainer` scores it: each prompt is a list of messages (the example's
context messages, then the user's), each completion a one-message list
`[{"role": "assistant", "content": ...}]` whose content is the whole think
block and answer (`<think>trace</think>answer`), as a Qwen3-style model
writes it, even where the format puts `<think>` in the prompt. So TRL's own
conversational rewards (`trl.rewards.think_format_reward`) run unchanged, and
so do this package's, which read either form (`split_completion`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from framework.data.sample import Example
from framework.data.tokenizer import PAUSE, THINK_END, THINK_START

RewardFunction = Callable[..., Sequence[Any]]


@dataclass(frozen=True)
class ParsedCompletion:
    trace: str  # the visible reasoning (pause fillers removed); "" when there is none
    answer: str | None  # text after the think block; None when the block never closed
    trace_expected: bool  # the completion was where reasoning goes (the prompt did not close the block)


Messages = list[dict[str, str]]


def split_completion(prompt: str | Messages, completion: str | Messages) -> ParsedCompletion:
    """Trace and answer of `prompt + completion`: the answer follows the first `</think>`.

    The trace is the text between that `</think>` and the `<think>` before it
    (or everything after the last `<think>` when the block never closed, in
    which case there is no answer). A conversational completion's content
    holds the whole block, so whether the format gave it is not known there:
    a trace counts as expected when the block holds one, or never closed.
    """
    if not isinstance(completion, str):
        parsed = split_completion("", message_content(completion))
        return replace(parsed, trace_expected=bool(parsed.trace) or parsed.answer is None)
    text = prompt + completion
    end = text.find(THINK_END)
    if end < 0:
        start = text.rfind(THINK_START)
        trace = text[start + len(THINK_START) :] if start >= 0 else completion
        return ParsedCompletion(_clean_trace(trace), None, trace_expected=True)
    start = text.rfind(THINK_START, 0, end)
    trace = text[start + len(THINK_START) : end] if start >= 0 else text[:end]
    return ParsedCompletion(_clean_trace(trace), text[end + len(THINK_END) :].strip(), THINK_END not in prompt)


def message_content(completion: str | Messages) -> str:
    """The text of a completion: itself, or the content of a conversational one (TRL's one-message list)."""
    if isinstance(completion, str):
        return completion
    if len(completion) != 1 or completion[0].get("role") != "assistant":
        raise ValueError(f"a conversational completion is one assistant message, got {completion!r}")
    return completion[0]["content"]


def conversational(
    prompts: Sequence[str], completions: Sequence[str], examples: Sequence[Example]
) -> tuple[list[Messages], list[Messages]]:
    """Prompts and completions as TRL gives them for conversational data (see the module docstring).

    The reasoning markup that a format's prompt holds after the example's text
    (`<think>`, an empty block, pause fillers) moves into the assistant's content.
    """
    chat_prompts, chat_completions = [], []
    for prompt, completion, example in zip(prompts, completions, examples, strict=True):
        if not prompt.startswith(example.prompt):
            raise ValueError(f"the prompt {prompt!r} does not start with its example's prompt {example.prompt!r}: "
                             "cannot tell the user's text from the reasoning markup")
        context = list(example.metadata.get("context_messages", []))
        chat_prompts.append([*context, {"role": "user", "content": example.prompt}])
        chat_completions.append([{"role": "assistant", "content": prompt[len(example.prompt) :] + completion}])
    return chat_prompts, chat_completions


def _clean_trace(trace: str) -> str:
    return trace.replace(PAUSE, " ").strip()


def reward_columns(examples: Sequence[Example], completion_ids: Sequence[Sequence[int]] | None = None) -> dict[str, list]:
    """The keyword columns a regime passes to reward functions, one entry per completion."""
    columns: dict[str, list] = {"example": list(examples), "answer": [example.answer for example in examples]}
    if completion_ids is not None:
        columns["completion_ids"] = [list(ids) for ids in completion_ids]
    return columns


def reward_name(func: RewardFunction) -> str:
    """The name TRL logs a reward function under: its `__name__`, else its class name."""
    return getattr(func, "__name__", None) or type(func).__name__


@dataclass(frozen=True)
class RewardScores:
    """Every function's reward for every completion, and their weighted sum.

    `per_function[i, j]` is function j's reward for completion i, NaN where it
    returned None. `total` is the weighted sum over the functions that applied
    (TRL's `nansum`), NaN where none did.
    """

    names: tuple[str, ...]
    per_function: torch.Tensor  # [N, F] float32
    weights: torch.Tensor  # [F]

    @property
    def total(self) -> torch.Tensor:
        total = (self.per_function * self.weights).nansum(dim=1)
        return total.masked_fill(self.per_function.isnan().all(dim=1), math.nan)

    def means(self) -> dict[str, float]:
        """Each function's mean over the completions it applied to (NaN if none)."""
        return {name: torch.nanmean(self.per_function[:, j]).item() for j, name in enumerate(self.names)}


class Rewards:
    """Several reward functions combined with weights (TRL's `reward_funcs` + `reward_weights`).

    `score(...)` returns the full breakdown; calling the object returns the
    weighted totals, so a `Rewards` is itself a reward function (expert
    iteration can filter on it, and it can be nested). With
    `conversational=True` the functions get prompts and completions as
    messages, as TRL passes conversational data (`conversational`; it needs the
    `example` column that regimes pass).

    Raises ValueError, naming the function, when a function returns the wrong
    number of rewards or something that is not a finite real number or None.
    """

    __name__ = "rewards"

    def __init__(
        self,
        funcs: RewardFunction | Sequence[RewardFunction],
        weights: Sequence[float] | None = None,
        *,
        conversational: bool = False,
    ) -> None:
        funcs = [funcs] if callable(funcs) else list(funcs)
        if not funcs:
            raise ValueError("Rewards needs at least one reward function")
        for func in funcs:
            if not callable(func):  # bad input is a ValueError throughout the project
                raise ValueError(f"reward function {func!r} is not callable")  # noqa: TRY004
        names = [reward_name(func) for func in funcs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"reward functions share the names {duplicates}, so their logged means would collide; "
                "give each a distinct __name__"
            )
        if weights is None:
            weights = [1.0] * len(funcs)
        weights = list(weights)
        if len(weights) != len(funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries but there are {len(funcs)} reward functions")
        if not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in weights):
            raise ValueError(f"reward_weights must be finite numbers, got {weights}")
        self.funcs = funcs
        self.conversational = conversational
        self.names = tuple(names)
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def score(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> RewardScores:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        for key, column in columns.items():
            if len(column) != len(completions):
                raise ValueError(f"column {key!r} has {len(column)} entries but there are {len(completions)} completions")
        if self.conversational and not _is_messages(completions):  # a nested Rewards gets them converted already
            if "example" not in columns:
                raise ValueError("conversational rewards need the 'example' column (reward_columns(examples))")
            prompts, completions = conversational(prompts, completions, columns["example"])
        per_function = torch.empty(len(completions), len(self.funcs), dtype=torch.float32)
        for j, (func, name) in enumerate(zip(self.funcs, self.names)):
            try:
                rewards = func(prompts=list(prompts), completions=list(completions), **columns)
            except TypeError as error:
                if _is_messages(completions):
                    raise
                # What a function that reads `completion[0]["content"]` (TRL's conversational rewards) says on text.
                raise TypeError(f"reward function {name!r} failed on text completions ({error}); if it reads "
                                "conversational completions, as trl.rewards.think_format_reward does, score with "
                                "Rewards(funcs, conversational=True)") from error
            per_function[:, j] = torch.tensor(_validated(rewards, len(completions), name), dtype=torch.float32)
        return RewardScores(self.names, per_function, self.weights)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
        total = self.score(prompts, completions, **columns).total
        return [None if math.isnan(value) else value for value in total.tolist()]


def _is_messages(completions: Sequence[str | Messages]) -> bool:
    return bool(completions) and not isinstance(completions[0], str)


def _validated(rewards: Any, expected: int, name: str) -> list[float]:
    """Rewards as floats (None -> NaN), or a ValueError naming the function."""
    if isinstance(rewards, torch.Tensor):
        rewards = rewards.tolist()
    try:
        count = len(rewards)
    except TypeError:
        raise ValueError(f"reward function {name!r} returned {type(rewards).__name__}, expected a list of rewards") from None
    if count != expected:
        raise ValueError(
            f"reward function {name!r} returned {count} rewards for {expected} completions (one per completion expected)"
        )
    values = []
    for i, reward in enumerate(rewards):
        if reward is None:
            values.append(math.nan)
            continue
        if not isinstance(reward, numbers.Real) or not math.isfinite(reward):
            raise ValueError(
                f"reward function {name!r} returned {reward!r} for completion {i}; expected a finite number (or None when not applicable)"
            )
        values.append(float(reward))
    return values
