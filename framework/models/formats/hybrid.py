"""Thinking and non-thinking rows in one model, as Qwen3 is.

A row with a trace formats as `cot` (`<think>` trace `</think>` answer, loss
on both); a row without one formats as `none` (an empty `<think></think>` in
the prompt, loss on the answer alone). So one training set can teach both
behaviours, and a data row, not a switch on the model, says which one it
shows. Parsing is `cot`'s, for every row: the evaluation this format serves
generates from thinking prompts (to see a model answer without thinking, use
the `none` format, whose parse reads everything after the prompt as answer).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Example, Segment
from framework.data.tokenizer import THINK_END, THINK_START
from framework.models.formats.base import Generation, ReasoningFormat
from framework.models.formats.text import CoT, NoThinking


class Hybrid(ReasoningFormat):
    """`cot` for a row with a trace, `none` for a row without one; generates and parses as `cot`."""

    name = "hybrid"
    required_tokens = (THINK_START, THINK_END)

    def __init__(self) -> None:
        self.thinking, self.non_thinking = CoT(), NoThinking()

    def _for(self, example: Example) -> ReasoningFormat:
        return self.thinking if example.trace else self.non_thinking

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        return self._for(example).prompt_segments(example, stage)

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        return self._for(example).completion_segments(example, stage)

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        return self.thinking.parse(completion_ids, tokenizer)
