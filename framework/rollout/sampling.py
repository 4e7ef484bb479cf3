"""Batched, KV-cached sampling: one decode loop for every rollout (tokens after a prompt, or after latent thoughts).

The loop is thoughtlab's own rather than Hugging Face `generate`, for three
reasons measured on the CPU (`python -m benchmarks.rollout`):

- a row that has written EOS leaves the batch (its cache rows are dropped),
  so the rest of the rollout costs what the unfinished rows cost; `generate`
  keeps decoding finished rows as padding until the last row stops;
- sampling draws by inverse CDF (`draw`: binary searches over cumulative
  sums of token blocks, then of one block), which has `torch.multinomial`'s
  distribution at a fraction of its cost over a 32k-50k vocabulary on the CPU;
- the cache appends in place (`framework.models.kv_cache`), where
  `DynamicCache` copies itself every step.

Temperature, top-k and top-p are Hugging Face's own logits warpers, and the
forward pass is the model's own (a causal LM whose forward takes
`position_ids`, a cache and `logits_to_keep`, as transformers' do), so greedy
tokens are `generate`'s up to float rounding between batch shapes
(`tests/test_sampling.py` checks that a divergence only happens at a
float64-sized tie). `SamplingConfig` is the whole specification: the model's
`generation_config` (a repetition penalty, say) is not consulted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Cache, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from framework.data.collate import left_pad
from framework.eval_mode import eval_mode
from framework.models.backbone import cache_argument, position_ids_from_mask, prompt_pass
from framework.models.kv_cache import growing_cache


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

    Left padding plus position ids counted over each row's real tokens make a
    batched row decode as it would alone. A prompt that several rows repeat
    (GRPO's group) is run once before decoding (`prompt_pass`).
    """
    if not prompts:
        return []
    input_ids, attention_mask = left_pad(prompts, pad_token_id, next(model.parameters()).device)
    cache = None
    if input_ids.shape[1] > 1 and len(set(map(tuple, prompts))) < len(prompts):  # else nothing to share
        with eval_mode(model):  # all but the last column: the decode loop runs that one and samples after it
            _, cache = prompt_pass(model, input_ids[:, :-1], attention_mask[:, :-1])
    return generate_completions(model, input_ids, attention_mask, eos_token_id=eos_token_id, config=config, cache=cache)


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    eos_token_id: int,
    config: SamplingConfig = SamplingConfig(),
    cache: Cache | None = None,
) -> list[list[int]]:
    """Decode left-padded prompts `[B, T]` with a KV cache; each row's new tokens, cut after its first EOS (kept).

    `cache` may already hold the keys and values of a prefix of the prompts
    (all but at least the last column): only the columns it lacks are run, so a
    caller can fill the prefix its own way (latent thoughts) and decode from
    there. The cache is consumed: finished rows are dropped from it.
    """
    batch = input_ids.shape[0]
    completions: list[list[int]] = [[] for _ in range(batch)]
    if batch == 0 or config.max_new_tokens <= 0:
        return completions
    cache = growing_cache(model.config) if cache is None else cache
    cached = cache.get_seq_length()
    if not 0 <= cached < input_ids.shape[1]:
        raise ValueError(f"the cache holds {cached} columns of {input_ids.shape[1]}-column prompts: it must leave at "
                         "least the last column to run")
    warpers = logits_warpers(config)
    positions = position_ids_from_mask(attention_mask)
    rows = list(range(batch))  # the original row of each row still decoding
    step_ids, step_positions = input_ids[:, cached:], positions[:, cached:]
    with eval_mode(model):
        for step in range(config.max_new_tokens):
            logits = model(
                input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                **cache_argument(cache), use_cache=True, logits_to_keep=1,
            ).logits[:, -1].float()
            tokens = next_tokens(logits, config, warpers).to(input_ids.device)
            chosen = tokens.tolist()
            for row, token in zip(rows, chosen):
                completions[row].append(token)
            if step + 1 == config.max_new_tokens:
                break
            going = [i for i, token in enumerate(chosen) if token != eos_token_id]
            if not going:
                break
            if len(going) < len(rows):
                # The finished rows leave the batch: every later step costs only the unfinished ones.
                keep = torch.tensor(going, device=input_ids.device)
                cache.reorder_cache(keep)
                rows = [rows[i] for i in going]
                tokens, attention_mask, step_positions = tokens[keep], attention_mask[keep], step_positions[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
            step_ids, step_positions = tokens[:, None], step_positions[:, -1:] + 1
    return completions


def cut_after_eos(ids: Sequence[int], eos_token_id: int) -> list[int]:
    """`ids` up to and including the first `eos_token_id` (all of them when there is none)."""
    ids = list(ids)
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def logits_warpers(config: SamplingConfig) -> LogitsProcessorList:
    """Hugging Face's temperature, top-k and top-p warpers for a sampled `config` (none when greedy or neutral)."""
    warpers = LogitsProcessorList()
    if not config.do_sample:
        return warpers
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k > 0:
        warpers.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(config.top_p))
    return warpers


def next_tokens(logits: torch.Tensor, config: SamplingConfig, warpers: LogitsProcessorList) -> torch.Tensor:
    """One token per row of `logits` `[B, V]`: the argmax when greedy, else a draw from the warped softmax.

    The warpers (temperature, top-k, top-p) read only the scores, so they get no input ids; a processor that
    reads the sequence (a repetition penalty) would need them.
    """
    if not config.do_sample:
        # `argmax`'s token (the first of tied maxima), at under half its cost over a 32k row on the CPU.
        return logits.max(-1).indices
    return draw(torch.softmax(warpers(None, logits), dim=-1))


DRAW_BLOCK = 128  # tokens per block of `draw`'s first-level search


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` `[B, V]`, row i drawing index j with probability `probs[i, j]` (inverse CDF).

    Token j is drawn when a uniform u, scaled by the row's total (`probs`
    need not sum to 1), falls in [c[j-1], c[j]) of the row's cumulative sums
    c: a zero-probability token has an empty interval and is never drawn.
    The search runs in two levels, over the masses of blocks of `DRAW_BLOCK`
    tokens and then inside the block it lands in, so only `V / DRAW_BLOCK`
    float64 sums are cumulated per row rather than `V` (a sequential pass on
    the CPU that cost more than the rest of the draw).
    """
    rows, vocab = probs.shape
    blocks = -(-vocab // DRAW_BLOCK)
    padded = probs if vocab % DRAW_BLOCK == 0 else torch.nn.functional.pad(probs, (0, blocks * DRAW_BLOCK - vocab))
    grouped = padded.reshape(rows, blocks, DRAW_BLOCK)
    block_mass = grouped.sum(-1, dtype=torch.float64)
    cumulative = block_mass.cumsum(-1)
    total = cumulative[:, -1:]
    if not bool(((total > 0) & total.isfinite()).all()):  # as torch.multinomial refuses them: an overflow upstream
        raise ValueError("probabilities with NaN, inf or no mass: cannot draw a token from them")
    target = torch.rand(rows, 1, device=probs.device, dtype=torch.float64, generator=generator) * total
    block = torch.searchsorted(cumulative, target, right=True)
    # u * total can round up to the total: then the last block with mass, never a massless one after it.
    block = torch.minimum(block, _last_positive(block_mass))
    residual = (target - (cumulative - block_mass).gather(1, block)).clamp(min=0)  # >= 0: a leading zero is skipped
    inside = grouped[torch.arange(rows, device=probs.device), block[:, 0]]
    offset = torch.searchsorted(inside.double().cumsum(-1), residual, right=True)
    # The block's sum and its cumulative sum round differently: a residual past its last token takes that token.
    offset = torch.minimum(offset, _last_positive(inside))
    return (block * DRAW_BLOCK + offset).flatten()


def _last_positive(values: torch.Tensor) -> torch.Tensor:
    """`[B, 1]`: the index of each row's last positive entry of `values` `[B, N]` (-1 where none is)."""
    index = torch.arange(values.shape[-1], device=values.device)
    return torch.where(values > 0, index, -1).amax(-1, keepdim=True)
