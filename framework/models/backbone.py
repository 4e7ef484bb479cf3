"""The one call every regime and the latent thought loop make: a causal LM's backbone, without its head."""

from __future__ import annotations

import torch
from transformers import Cache, PreTrainedModel


def backbone_hidden_states(
    model: PreTrainedModel,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Cache | None = None,
) -> torch.Tensor:
    """Last hidden states `[B, T, H]` (after the final norm) of any `AutoModelForCausalLM`; the LM head never runs.

    Give `input_ids` or `inputs_embeds`. Without `cache` nothing is cached;
    with one, the T positions come after those it holds (`attention_mask`
    then covers both, `position_ids` the new ones) and it grows by them.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("backbone_hidden_states takes exactly one of input_ids and inputs_embeds")
    output = model.base_model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=cache is not None,
    )
    return output.last_hidden_state
