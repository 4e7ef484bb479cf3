"""The latent format: Coconut's (Hao et al. 2024) continuous thoughts, as text slots and a curriculum.

A latent reasoner at curriculum stage `s` reads and writes

    prompt <think> <bot> <latent> x k <eot> [steps s, s+1, ...] </think> answer <eos>

`<think>`, `<bot>`, the `<latent>` slots and `<eot>` are given (PROMPT and
LATENT roles, never trained on); the remaining language steps (joined with
`LatentConfig.step_separator`) and the answer are what the model learns to
write. Stage 0 is the full chain of thought with no thought; stage
`1 <= s <= max_stage` replaces the first `s` steps with `k = s * c` thoughts;
the final stage `max_stage + 1` drops every language step and keeps
`max_stage * c` thoughts. As in Coconut's ProsQA setup (`pad_latent_to_max`),
the thought count depends on the stage only, never on how many steps a row
has: a row with fewer steps than `s` still gets `s * c` thoughts (and no
language steps), and inference, which cannot know the number of steps, uses
the final stage's `max_stage * c`. A completion parses like a `cot` one: the
language steps left before `</think>`, then the answer.

This module is the text only. What fills the slots (the backbone's last
hidden state fed back, or `<pause>` embeddings in the "pause as thought"
ablation) is computed by `framework.models.latent`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Example, Role, Segment
from framework.data.tokenizer import LATENT, LATENT_END, LATENT_START, PAUSE, THINK_END, THINK_START
from framework.models.formats.base import Generation, ReasoningFormat, parse_trace_then_answer

Thought = Literal["continuous", "pause"]
# The fewest other positions a latent sequence holds: <think>, <bot>, <eot>, one prompt token, one answer token.
_TOKENS_BESIDE_THOUGHTS = 5


@dataclass(frozen=True)
class LatentConfig:
    """How a latent reasoner thinks, and its curriculum's shape.

    Args:
        thoughts_per_step: c, thoughts that replace one language step.
        max_stage: the last stage that still replaces steps one at a time; the
            final stage `max_stage + 1` removes all language steps.
        step_separator: joins the remaining `Example.steps` into trace text (the
            task's `step_separator`); needed to tokenize stages 0 … max_stage.
        thought: `continuous` (hidden states fed back) or `pause` (the
            pause-as-thought ablation: learned `<pause>` embeddings in the slots).
        projection: feed thoughts back through a learned `LatentProjection`.
        match_norm: rescale each thought to the mean norm of the input embeddings before it is fed back. A
            pretrained model's last hidden states are far larger than its input embeddings (14-15x their mean
            norm for SmolLM2-135M-Instruct, README), so fed back as they are, thoughts are inputs unlike any token.
    """

    thoughts_per_step: int = 1
    max_stage: int = 3
    step_separator: str | None = None
    thought: Thought = "continuous"
    projection: bool = False
    match_norm: bool = False

    def __post_init__(self) -> None:
        if self.thoughts_per_step < 1:
            raise ValueError(f"thoughts_per_step must be >= 1, got {self.thoughts_per_step}")
        if self.max_stage < 1:
            raise ValueError(f"max_stage must be >= 1 (stage 1 replaces the first step), got {self.max_stage}")
        if self.thought not in ("continuous", "pause"):
            raise ValueError(f"thought must be 'continuous' or 'pause', got {self.thought!r}")
        if self.projection and self.thought == "pause":
            raise ValueError("projection=True feeds hidden states back; it has no meaning with thought='pause'")
        if self.match_norm and self.thought == "pause":
            raise ValueError("match_norm=True rescales fed-back hidden states; it has no meaning with thought='pause'")

    @property
    def final_stage(self) -> int:
        return self.max_stage + 1

    def check_stage(self, stage: int) -> int:
        if not 0 <= stage <= self.final_stage:
            raise ValueError(f"stage must be in 0 … {self.final_stage} (max_stage + 1), got {stage}")
        return stage

    def num_thoughts(self, stage: int) -> int:
        """Thought slots at `stage`: `min(stage, max_stage) * c`, whatever the row's number of steps."""
        return min(self.check_stage(stage), self.max_stage) * self.thoughts_per_step

    @property
    def slot_token(self) -> str:
        return LATENT if self.thought == "continuous" else PAUSE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LatentConfig:
        return cls(**values)


class LatentFormat(ReasoningFormat):
    """Thought slots in the prompt, then the language steps the curriculum stage keeps, then the answer.

    Holds the stage that `prompt_segments`, `completion_segments` (and so
    `Reasoner.prompt_ids`, `tokenize` and generation) use when given none: the
    final stage unless a regime sets it, as `LatentSFT` does while its
    curriculum runs.
    """

    name = "latent"

    def __init__(self, latent: LatentConfig | None = None) -> None:
        self.latent = latent or LatentConfig()
        self.required_tokens = (THINK_START, THINK_END, LATENT_START, LATENT, LATENT_END) + (
            (PAUSE,) if self.latent.thought == "pause" else ()
        )
        self._stage = self.latent.final_stage

    @property
    def stage(self) -> int:
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        self._stage = self.latent.check_stage(value)

    def check_context(self, context: int) -> None:
        thoughts = self.latent.num_thoughts(self.latent.final_stage)
        if thoughts + _TOKENS_BESIDE_THOUGHTS > context:
            raise ValueError(
                f"latent mode with {thoughts} thoughts (max_stage x thoughts_per_step) does not fit the model's "
                f"context of {context} positions"
            )

    def prompt_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """`prompt <think> <bot>`, the thought slots, `<eot>`: everything the model is given."""
        return [
            Segment(Role.PROMPT, example.prompt + THINK_START + LATENT_START),
            Segment(Role.LATENT, self.latent.slot_token * self.latent.num_thoughts(self._resolve(stage))),
            Segment(Role.PROMPT, LATENT_END),
        ]

    def completion_segments(self, example: Example, stage: int | None = None) -> list[Segment]:
        """The language steps the stage keeps, `</think>`, the answer: what the model learns to write."""
        stage = self._resolve(stage)
        answer = Segment(Role.ANSWER, example.answer)
        if stage == self.latent.final_stage:
            return [Segment(Role.TRACE, THINK_END), answer]
        if example.trace and not example.steps:  # an empty trace has no steps to keep, and needs none
            raise ValueError(
                f"example {example.prompt[:40]!r}… has a trace but no `steps`: latent curriculum stage {stage} keeps "
                f"the steps after the first {stage}, so the trace must come split into Example.steps (only the final "
                f"stage {self.latent.final_stage} needs none)"
            )
        if self.latent.step_separator is None:
            raise ValueError(
                "LatentConfig.step_separator is not set: pass the task's step_separator so stage "
                f"{stage} can join the steps it keeps into trace text"
            )
        remaining = self.latent.step_separator.join(example.steps[stage:])
        return [Segment(Role.TRACE, remaining + THINK_END), answer]

    def parse(self, completion_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> Generation:
        return parse_trace_then_answer(completion_ids, tokenizer, THINK_END)

    def _resolve(self, stage: int | None) -> int:
        return self._stage if stage is None else self.latent.check_stage(stage)
