"""Continuous thoughts (Coconut, Hao et al. 2024) for any Hugging Face causal LM.

Format. A latent reasoner at curriculum stage `s` reads and writes

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
the final stage's `max_stage * c`.

Thoughts. The input embedding of each `<latent>` slot is replaced by the
backbone's last hidden state (`model.base_model(...).last_hidden_state`,
after the final norm, as Coconut feeds back) at the position before it,
optionally through a learned `LatentProjection` (CODI's idea; off by default).
The "pause as thought" ablation (`thought="pause"`) writes `<pause>` tokens in
the slots instead: their own learned embedding, nothing fed back, so a plain
forward pass computes them.

Compute. `run_with_thoughts` runs the prefix before the first slot in one
pass, then one position per column through the slots against a `DynamicCache`
(`forward_one_position`, the hot path a decode-attention kernel serves), then
the rest of the sequence in one pass against the cache. Gradients flow through
the fed-back hidden states and the cached keys and values, so training on the
result is Coconut's k+1 full-sequence passes at the cost of one. Rows may hold
different numbers of thoughts at different columns; the walk covers every
column from the first slot of any row to the last. `collate_latent`
(`framework.data.collate`) left-pads rows so that their `<bot>` share a
column, which keeps that walk as short as the longest row's thoughts
(Coconut's collator does the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from framework.data.sample import Example, Role, Segment
from framework.data.tokenizer import LATENT, LATENT_END, LATENT_START, PAUSE, THINK_END, THINK_START
from framework.models.backbone import backbone_hidden_states

Thought = Literal["continuous", "pause"]


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
    """

    thoughts_per_step: int = 1
    max_stage: int = 3
    step_separator: str | None = None
    thought: Thought = "continuous"
    projection: bool = False

    def __post_init__(self) -> None:
        if self.thoughts_per_step < 1:
            raise ValueError(f"thoughts_per_step must be >= 1, got {self.thoughts_per_step}")
        if self.max_stage < 1:
            raise ValueError(f"max_stage must be >= 1 (stage 1 replaces the first step), got {self.max_stage}")
        if self.thought not in ("continuous", "pause"):
            raise ValueError(f"thought must be 'continuous' or 'pause', got {self.thought!r}")
        if self.projection and self.thought == "pause":
            raise ValueError("projection=True feeds hidden states back; it has no meaning with thought='pause'")

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


def latent_prompt_segments(example: Example, config: LatentConfig, stage: int) -> list[Segment]:
    """`prompt <think> <bot>`, the thought slots, `<eot>`: everything the model is given."""
    return [
        Segment(Role.PROMPT, example.prompt + THINK_START + LATENT_START),
        Segment(Role.LATENT, config.slot_token * config.num_thoughts(stage)),
        Segment(Role.PROMPT, LATENT_END),
    ]


def latent_completion_segments(example: Example, config: LatentConfig, stage: int) -> list[Segment]:
    """The language steps the stage keeps, `</think>`, the answer: what the model learns to write."""
    answer = Segment(Role.ANSWER, example.answer)
    if config.check_stage(stage) == config.final_stage:
        return [Segment(Role.TRACE, THINK_END), answer]
    if example.trace and not example.steps:  # an empty trace has no steps to keep, and needs none
        raise ValueError(
            f"example {example.prompt[:40]!r}… has a trace but no `steps`: latent curriculum stage {stage} keeps the "
            f"steps after the first {stage}, so the trace must come split into Example.steps (only the final stage "
            f"{config.final_stage} needs none)"
        )
    if config.step_separator is None:
        raise ValueError(
            "LatentConfig.step_separator is not set: pass the task's step_separator so stage "
            f"{stage} can join the steps it keeps into trace text"
        )
    remaining = config.step_separator.join(example.steps[stage:])
    return [Segment(Role.TRACE, remaining + THINK_END), answer]


class LatentProjection(nn.Linear):
    """A learned map applied to a thought before it is fed back (CODI's projection, in its simplest form).

    Initialised to the identity, so training starts from plain Coconut
    feedback. It is not part of the Hugging Face model: `Reasoner` saves it
    beside the checkpoint (`latent_projection.safetensors`) and loads it back.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size, hidden_size)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.in_features))
            self.bias.zero_()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … over each row's real tokens, so left padding does not shift positions (as HF generate does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_one_position(
    model: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache,
) -> torch.Tensor:
    """The step of a continuous thought: one new position per row against the KV cache.

    `inputs_embeds` is `[B, 1, H]`, `attention_mask` covers the cache plus the
    new position (`[B, cache_length + 1]`), `position_ids` is `[B, 1]`.
    Returns the new position's last hidden state `[B, 1, H]`. Never calls the
    LM head. This is the per-step hot path of latent training and rollouts.
    """
    if inputs_embeds.shape[1] != 1:
        raise ValueError(f"forward_one_position takes one position per row, got {inputs_embeds.shape[1]}")
    return backbone_hidden_states(
        model, attention_mask=attention_mask, inputs_embeds=inputs_embeds, position_ids=position_ids, cache=cache
    )


@dataclass
class ThoughtPass:
    """What `run_with_thoughts` computed: hidden states of every column and the filled cache."""

    hidden: torch.Tensor  # [B, T, H], last hidden states (the thoughts fed back sit at the columns before the slots)
    cache: DynamicCache  # keys and values of all T columns
    slots: torch.Tensor  # [B, T] bool, where the thoughts went


def run_with_thoughts(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    latent_token_id: int,
    projection: nn.Module | None = None,
) -> ThoughtPass:
    """Run `input_ids`, feeding each `<latent>` slot the hidden state of the position before it.

    The prefix before the first slot of any row is one pass; each column from
    there to the last slot of any row is one `forward_one_position` call, where
    a row with a slot in that column gets its previous hidden state (through
    `projection` if given) and other rows their token's embedding; the rest is
    one pass against the cache. Position ids come from `attention_mask`, so
    left padding is transparent. Differentiable end to end.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    slots = (input_ids == latent_token_id) & attention_mask.bool()
    embeds = model.get_input_embeddings()(input_ids)
    positions = position_ids_from_mask(attention_mask)
    cache = DynamicCache(config=model.config)
    columns = slots.any(0).nonzero().flatten().tolist()
    if not columns:
        hidden = backbone_hidden_states(
            model, attention_mask=attention_mask, inputs_embeds=embeds, position_ids=positions, cache=cache
        )
        return ThoughtPass(hidden, cache, slots)
    first, last = columns[0], columns[-1]
    if first == 0:
        raise ValueError("a <latent> slot in column 0 has no position before it to take its thought from")
    prefix = backbone_hidden_states(
        model, attention_mask=attention_mask[:, :first], inputs_embeds=embeds[:, :first],
        position_ids=positions[:, :first], cache=cache,
    )
    pieces = [prefix]
    previous = prefix[:, -1:]
    for column in range(first, last + 1):
        thought = projection(previous) if projection is not None else previous
        inputs = torch.where(slots[:, column, None, None], thought.to(embeds.dtype), embeds[:, column : column + 1])
        previous = forward_one_position(
            model, inputs, attention_mask[:, : column + 1], positions[:, column : column + 1], cache
        )
        pieces.append(previous)
    if last + 1 < input_ids.shape[1]:
        rest = backbone_hidden_states(
            model, attention_mask=attention_mask, inputs_embeds=embeds[:, last + 1 :],
            position_ids=positions[:, last + 1 :], cache=cache,
        )
        pieces.append(rest)
    return ThoughtPass(torch.cat(pieces, dim=1), cache, slots)


def latent_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    latent_token_id: int,
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Last hidden states `[B, T, H]` of a teacher-forced latent sequence (see `run_with_thoughts`).

    Feed them to `framework.regimes.loss.hidden_states_loss`: the LM head is
    applied by the fused loss, and only at labelled positions.
    """
    return run_with_thoughts(
        model, input_ids, attention_mask, latent_token_id=latent_token_id, projection=projection
    ).hidden


def gather_thoughts(hidden: torch.Tensor, slots: torch.Tensor) -> list[torch.Tensor]:
    """The thoughts fed to each row's slots: one `[k_i, H]` tensor per row, `k_i` its number of slots.

    Thought i of a row is the hidden state of the column before its slot i,
    before any projection: the vector the LM head would read there. Rows are
    not padded to a common k, so no consumer can mistake padding for a thought.
    """
    return [hidden[row, slots[row].nonzero().flatten() - 1] for row in range(hidden.shape[0])]
