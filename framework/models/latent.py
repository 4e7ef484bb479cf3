"""Continuous thoughts (Coconut, Hao et al. 2024) for any Hugging Face causal LM: the compute.

The text a latent reasoner reads and writes (`<bot>`, the `<latent>` slots,
`<eot>`, the curriculum stages) is its format, `framework.models.formats.latent`;
this module fills the slots and runs the model through them.

Thoughts. The input embedding of each `<latent>` slot is replaced by the
backbone's last hidden state (`model.base_model(...).last_hidden_state`,
after the final norm, as Coconut feeds back) at the position before it,
optionally through a learned `LatentProjection` (CODI's idea; off by default)
and optionally rescaled to the input embeddings' mean norm (`match_norm`: a
pretrained model's last hidden states are an order of magnitude larger).
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

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from framework.models.backbone import backbone_hidden_states, position_ids_from_mask, repeated_rows
from framework.models.kv_cache import growing_cache


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


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def embedding_norm(model: PreTrainedModel) -> torch.Tensor:
    """The mean norm of `model`'s input embedding rows, without gradient: the norm `match_norm` gives each thought
    (it follows the embeddings as they train; the thought's direction carries the gradient)."""
    return _at_least_float32(model.get_input_embeddings().weight.detach()).norm(dim=-1).mean()


def matched_to_embeddings(thought: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`thought` rescaled to norm `target` (`embedding_norm`); norms in float32 at least, so a half-precision thought
    cannot overflow to inf on the way."""
    wide = _at_least_float32(thought)
    norm = wide.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(wide.dtype).eps)
    return (wide * (target / norm)).to(thought.dtype)


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
    match_norm: bool = False,
) -> ThoughtPass:
    """Run `input_ids`, feeding each `<latent>` slot the hidden state of the position before it.

    The prefix before the first slot of any row is one pass; each column from
    there to the last slot of any row is one `forward_one_position` call, where
    a row with a slot in that column gets its previous hidden state (through
    `projection` if given, then `matched_to_embeddings` with `match_norm`) and
    other rows their token's embedding; the rest is
    one pass against the cache. Position ids come from `attention_mask`, so
    left padding is transparent. Rows that repeat a prompt (GRPO's groups)
    think once and share the result, as `prompt_pass` shares a prompt (not
    under active dropout). Differentiable end to end.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    shared = repeated_rows(model, input_ids, attention_mask)
    if shared is not None:
        distinct, of = shared
        thought_pass = run_with_thoughts(model, input_ids[distinct], attention_mask[distinct],
                                         latent_token_id=latent_token_id, projection=projection, match_norm=match_norm)
        thought_pass.cache.reorder_cache(of)
        return ThoughtPass(thought_pass.hidden[of], thought_pass.cache, thought_pass.slots[of])
    slots = (input_ids == latent_token_id) & attention_mask.bool()
    embeds = model.get_input_embeddings()(input_ids)
    positions = position_ids_from_mask(attention_mask)
    cache = growing_cache(model.config)
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
    target = embedding_norm(model) if match_norm else None
    for column in range(first, last + 1):
        thought = projection(previous) if projection is not None else previous
        if target is not None:
            thought = matched_to_embeddings(thought, target)
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
    match_norm: bool = False,
) -> torch.Tensor:
    """Last hidden states `[B, T, H]` of a teacher-forced latent sequence (see `run_with_thoughts`).

    Feed them to `framework.regimes.loss.hidden_states_loss`: the LM head is
    applied by the fused loss, and only at labelled positions.
    """
    return run_with_thoughts(
        model, input_ids, attention_mask, latent_token_id=latent_token_id, projection=projection, match_norm=match_norm
    ).hidden


def gather_thoughts(hidden: torch.Tensor, slots: torch.Tensor) -> list[torch.Tensor]:
    """The thoughts fed to each row's slots: one `[k_i, H]` tensor per row, `k_i` its number of slots.

    Thought i of a row is the hidden state of the column before its slot i,
    before any projection: the vector the LM head would read there. Rows are
    not padded to a common k, so no consumer can mistake padding for a thought.
    """
    return [hidden[row, slots[row].nonzero().flatten() - 1] for row in range(hidden.shape[0])]
