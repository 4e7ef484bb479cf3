"""The one call every regime and the latent thought loop make: a causal LM's backbone, without its head."""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version
from transformers import Cache, DynamicCache, PreTrainedModel

from framework.models.kv_cache import growing_cache

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


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … over each row's real tokens, so left padding does not shift positions (as HF generate does)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def distinct_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`first`, the index of each distinct row (its first occurrence, in order), and `of`, each row's index into
    `first`, rows being compared across all `tensors` (same first dimension): `tensors[k][first][of]` is
    `tensors[k]`."""
    rows = torch.arange(tensors[0].shape[0], device=tensors[0].device)
    if len(rows) == 0:
        return rows, rows
    key = torch.cat([t.reshape(t.shape[0], -1).long() for t in tensors], dim=1)
    _, of = torch.unique(key, dim=0, sorted=True, return_inverse=True)
    first = torch.full((int(of.max()) + 1,), key.shape[0], device=key.device).scatter_reduce(0, of, rows, "amin")
    order = first.argsort()  # distinct rows in order of first occurrence, so a batch of distinct rows keeps its order
    return first[order], order.argsort()[of]


def repeated_rows(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`distinct_rows` of a batch when some rows repeat another and may share one pass, else None.

    Sharing gives every row the pass it would have run alone only when the
    pass is deterministic: under active dropout each row draws its own mask
    (as TRL's rows do), so rows are not shared then.
    """
    if model.training and dropout_rate(model) > 0:
        return None
    first, of = distinct_rows(input_ids, attention_mask)
    return (first, of) if len(first) < input_ids.shape[0] else None


def dropout_rate(model: PreTrainedModel) -> float:
    """The largest dropout probability in `model`: its `nn.Dropout` modules and the attention dropout that
    transformers passes to the attention function from `config.attention_dropout`."""
    rates = [module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    return max([*rates, float(getattr(model.config, "attention_dropout", 0.0) or 0.0)])


def prompt_pass(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, DynamicCache]:
    """Hidden states `[B, T, H]` and the KV cache of left-padded prompts, each distinct prompt run once.

    GRPO samples a group of completions per prompt, and sampling and scoring
    them would otherwise run the same prompt once per completion. Here the
    distinct rows run and their hidden states and cache are gathered back to
    every row (`repeated_rows`: not under active dropout). The gather is
    differentiable: a loss on each row's continuation reaches the shared pass
    summed over the rows that share it, which is the gradient of running
    every row on its own.
    """
    shared = repeated_rows(model, input_ids, attention_mask)
    if shared is not None:
        first, of = shared
        hidden, cache = prompt_pass(model, input_ids[first], attention_mask[first])
        cache.reorder_cache(of)
        return hidden[of], cache
    cache = growing_cache(model.config)
    hidden = backbone_hidden_states(
        model, input_ids, attention_mask, position_ids=position_ids_from_mask(attention_mask), cache=cache
    )
    return hidden, cache
