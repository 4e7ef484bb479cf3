"""``decode_attention`` as a transformers attention implementation, so it serves any model that uses the interface.

Importing this module registers the name ``DECODE_ATTENTION`` ("thoughtlab_decode")
with transformers' ``AttentionInterface`` (the attention function) and
``AttentionMaskInterface`` (the mask builder), after which::

    model = AutoModelForCausalLM.from_config(config, attn_implementation=DECODE_ATTENTION)
    model.set_attn_implementation(DECODE_ATTENTION)   # or: use_decode_attention(model)

Steps with one query position per row (decoding, latent thoughts) run
``decode_attention``; everything else (prefill, training over full sequences)
and every feature the op does not cover (attention dropout, softcapping,
attention sinks, position biases, additive float masks, per-head masks) is
handed to transformers' own SDPA implementation with the same arguments (which
supports or rejects each as it does under "sdpa"), so the name is safe to leave
switched on for a whole run, training included.

The mask builder is transformers' ``sdpa_mask``: a custom attention name without
a registered mask builder would get no mask at all, silently dropping padding.
For one query position that mask is ``[B, 1, 1, T]`` bool (True = attend), or
None when no key is padded; its last query row is exactly ``decode_attention``'s
``key_mask``.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .decode_attention import decode_attention

DECODE_ATTENTION = "thoughtlab_decode"
# Keyword arguments that change the attention computation; decode_attention implements none of them.
_DELEGATED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias", "cache")


def decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``[B, Hq, q, D]``, ``key``/``value`` ``[B, Hkv, T, D]``.

    Returns ``([B, q, Hq, D], None)`` like every implementation in the interface.
    """
    key_mask = _single_query_key_mask(query, key, attention_mask)
    if (
        key_mask is False
        or dropout > 0.0
        or kwargs.get("output_attentions", False)
        or any(kwargs.get(name) is not None for name in _DELEGATED_KWARGS)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = decode_attention(query, key, value, key_mask, scale=scaling)
    return out.transpose(1, 2), None


def _single_query_key_mask(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor | None | bool:
    """The ``[B, T]`` key mask of a one-position query, None if every key is valid, False if not expressible."""
    if query.shape[2] != 1:
        return False
    if attention_mask is None:
        return None
    if attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[1] != 1 \
            or attention_mask.shape[-1] != key.shape[2] or attention_mask.shape[0] not in (1, key.shape[0]):
        return False
    return attention_mask[:, 0, -1, :].expand(key.shape[0], -1)


def register() -> str:
    """Register ``DECODE_ATTENTION`` with transformers (idempotent); returns the name."""
    AttentionInterface.register(DECODE_ATTENTION, decode_attention_forward)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    return DECODE_ATTENTION


def use_decode_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` (in place) to ``DECODE_ATTENTION``; ``model.set_attn_implementation("sdpa")`` undoes it."""
    model.set_attn_implementation(register())
    return model


register()
