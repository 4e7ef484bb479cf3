"""The one call every regime and the latent thought loop make: a causal LM's backbone, without its head."""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version
from transformers import Cache, PreTrainedModel

# transformers 5.24 renamed the `past_key_values` argument of models and `generate` to `cache` and warns on the old
# name, which 5.40 removes from models; 5.17 (on the GPU machines) knows only the old name.
_CACHE_ARGUMENT = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def cache_argument(cache: Cache | None) -> dict[str, Cache | None]:
    """`cache` as the keyword argument this transformers version's models and `generate` take."""
    return {_CACHE_ARGUMENT: cache}


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    """The transformer under the LM head: `model.base_model`, or, for a PEFT-wrapped model (LoRA), that of the
    causal LM it wraps (a `PeftModel`'s own `base_model` is its tuner, whose forward runs the head)."""
    get_base_model = getattr(model, "get_base_model", None)  # peft's PeftModel; no import of peft needed
    return (get_base_model() if callable(get_base_model) else model).base_model


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
    output = backbone(model)(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **cache_argument(cache),
        use_cache=cache is not None,
    )
    return output.last_hidden_state
