"""The formats whose every token is text: a visible chain of thought, none, or content-free pauses.

- `cot`:   prompt `<think>` trace `</think>` answer
- `none`:  prompt `<think></think>` answer (the "non-thinking" mode: an empty
           think block is part of the prompt, as Qwen3 does)
- `pause`: prompt `<think>` k x `<pause>` `</think>` answer (compute without
           content: the fillers are given, never generated or trained on)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Example, Role, Segment
from framework.data.tokenizer import PAUSE, THINK_END, THINK_START
from framework.models.formats.base import Generation, ReasoningFormat, parse_answer_only, parse_trace_then_answer


class CoT(ReasoningFormat):
    """A visible trace in a think block, then the answer; both are trained on and both are generated."""

    name = "cot"
    required_tokens = (THINK_START, THINK_END)

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.PROMPT, example.prompt + THINK_START)]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.TRACE, example.trace + THINK_END), Segment(Role.ANSWER, example.answer)]

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        return parse_trace_then_answer(completion_ids, tokenizer, THINK_END)


class NoThinking(ReasoningFormat):
    """The answer straight after an empty think block that the prompt already holds."""

    name = "none"
    required_tokens = (THINK_START, THINK_END)

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.PROMPT, example.prompt + THINK_START + THINK_END)]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.ANSWER, example.answer)]

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        return parse_answer_only(completion_ids, tokenizer)


class Pause(ReasoningFormat):
    """`pause_tokens` given fillers (LATENT role: computed over, never trained on), then the answer.

    The control for "more compute, no content": it has the positions a trace
    would give, but nothing in them to read.
    """

    name = "pause"
    required_tokens = (THINK_START, THINK_END, PAUSE)

    def __init__(self, pause_tokens: int = 8) -> None:
        if pause_tokens < 1:
            raise ValueError(f"pause_tokens must be >= 1 in pause mode, got {pause_tokens}")
        self.pause_tokens = pause_tokens

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [
            Segment(Role.PROMPT, example.prompt + THINK_START),
            Segment(Role.LATENT, PAUSE * self.pause_tokens),
            Segment(Role.PROMPT, THINK_END),
        ]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        self._no_stage(stage)
        return [Segment(Role.ANSWER, example.answer)]

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        return parse_answer_only(completion_ids, tokenizer)

    def options(self) -> dict[str, Any]:
        return {"pause_tokens": self.pause_tokens}
