"""Batched sampling with a KV cache, on top of Hugging Face `generate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel

from framework.data.collate import left_pad
from framework.eval_mode import eval_mode
from framework.models.backbone import cache_argument


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    do_sample: bool = False  # greedy by default: evaluation should be deterministic
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


# Regimes keep it among their hyperparameters: let `torch.load(weights_only=True)` (Lightning's resume) read it.
torch.serialization.add_safe_globals([SamplingConfig])


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    config: SamplingConfig = SamplingConfig(),
) -> list[list[int]]:
    """New tokens per prompt, cut after the first EOS (which is kept).

    Left padding plus the attention mask lets `generate` derive each row's
    position ids, so a batched row decodes exactly as it would alone.
    """
    if not prompts:
        return []
    input_ids, attention_mask = left_pad(prompts, pad_token_id, next(model.parameters()).device)
    return generate_completions(
        model, input_ids, attention_mask, pad_token_id=pad_token_id, eos_token_id=eos_token_id, config=config
    )


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    pad_token_id: int,
    eos_token_id: int,
    config: SamplingConfig = SamplingConfig(),
    cache: Cache | None = None,
) -> list[list[int]]:
    """Hugging Face `generate` on left-padded prompts, cut after the first EOS (kept).

    `cache` may already hold the keys and values of a prefix of the
    prompts (all but at least the last column): `generate` then runs only the
    columns the cache lacks, so a caller can fill the prefix its own way (latent
    thoughts) and decode from there.
    """
    with eval_mode(model):
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **cache_argument(cache),
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            temperature=config.temperature if config.do_sample else None,
            top_p=config.top_p if config.do_sample else None,
            top_k=config.top_k if config.do_sample else None,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            use_cache=True,
        )
    completions = []
    for row in output[:, input_ids.shape[1]:].tolist():
        completions.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return completions
