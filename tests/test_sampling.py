"""The decode loop (`framework.rollout.sampling`): greedy tokens are Hugging Face `generate`'s up to float64-sized
ties, finished rows leave the batch without changing anyone's tokens, sampling draws from the warped softmax, and a
latent reasoner's answer decodes from the cache its thoughts filled."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch
from _rounding import rounding_tolerance
from transformers import DynamicCache, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from framework.data.collate import left_pad
from framework.models import build_model
from framework.models.backbone import cache_argument
from framework.rollout.sampling import (
    SamplingConfig,
    cut_after_eos,
    draw,
    generate_completions,
    logits_warpers,
    next_tokens,
    sample,
)


def _prompts(seed: int, count: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (count,), generator=generator).tolist()
    return [torch.randint(10, vocab, (n,), generator=generator).tolist() for n in lengths]


def _common_token(completions: list[list[int]]) -> int:
    """A token the model writes after its first step in some rows but not all: standing in for EOS, it makes rows
    finish at different steps without touching the model."""
    counts = Counter(token for row in completions for token in row[1:])
    for token, _ in counts.most_common():
        if sum(token in row for row in completions) < len(completions):
            return token
    raise AssertionError("every row writes the same tokens")


def _hf_generate(model, prompts, pad: int, eos: int, max_new_tokens: int) -> list[list[int]]:
    input_ids, attention_mask = left_pad(prompts, pad, "cpu")
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=pad, eos_token_id=eos)
    return [cut_after_eos(row, eos) for row in output[:, input_ids.shape[1]:].tolist()]


def _agree_up_to_ties(model, prompts: list[list[int]], ours: list[list[int]], theirs: list[list[int]]) -> None:
    """Each row's two greedy decodings are equal, or first differ where the two tokens' float64 logits are closer
    than float32 resolves on that very prefix (`rounding_tolerance`): a near-tie that batch shapes may flip."""
    exact_model = copy.deepcopy(model).double()
    for prompt, mine, other in zip(prompts, ours, theirs):
        t = next((i for i, (a, b) in enumerate(zip(mine, other)) if a != b), None)
        if t is None:
            assert mine == other
            continue
        ids = torch.tensor([prompt + mine[:t]])
        with torch.no_grad():
            exact = exact_model(input_ids=ids).logits[0, -1]
            rounded = model(input_ids=ids).logits[0, -1]
        gap = abs(exact[mine[t]] - exact[other[t]]).item()
        assert gap <= rounding_tolerance(rounded, exact), (prompt, mine, other)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_greedy_tokens_are_hf_generates_up_to_float64_ties(family, word_tokenizer):
    model = build_model(family, "1m", word_tokenizer, seed=1).eval()
    pad, vocab = word_tokenizer.pad_token_id, len(word_tokenizer)
    prompts = _prompts(seed=2, count=9, vocab=vocab)
    eos = _common_token(_hf_generate(model, prompts, pad, eos=-1, max_new_tokens=12))
    reference = _hf_generate(model, prompts, pad, eos, max_new_tokens=12)
    ours = sample(model, prompts, pad_token_id=pad, eos_token_id=eos, config=SamplingConfig(max_new_tokens=12))
    assert len({len(row) for row in reference}) > 1  # rows finish at different steps: the batch shrinks
    _agree_up_to_ties(model, prompts, ours, reference)


def test_finished_rows_leave_the_batch_and_the_rest_decode_as_alone(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, seed=1).eval()
    pad = word_tokenizer.pad_token_id
    prompts = _prompts(seed=3, count=6, vocab=len(word_tokenizer))
    config = SamplingConfig(max_new_tokens=10)
    eos = _common_token(sample(model, prompts, pad_token_id=pad, eos_token_id=-1, config=config))
    batch_sizes: list[int] = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: batch_sizes.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    try:
        together = sample(model, prompts, pad_token_id=pad, eos_token_id=eos, config=config)
    finally:
        hook.remove()
    alone = [sample(model, [prompt], pad_token_id=pad, eos_token_id=eos, config=config)[0] for prompt in prompts]
    _agree_up_to_ties(model, prompts, together, alone)
    unfinished = [sum(len(row) > step for row in together) for step in range(len(batch_sizes))]
    assert batch_sizes == unfinished and batch_sizes[-1] < len(prompts)  # one forward per step, unfinished rows only
    assert all(row[-1] == eos or len(row) == 10 for row in together)
    assert all(eos not in row[:-1] for row in together)


def test_draw_follows_the_probabilities_and_never_draws_a_zero(word_tokenizer):
    # Unnormalised (the row's total scales the draw), with zeros first, inside and last.
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.25, 0.0, 0.05, 0.0]) * 3
    n = 40_000
    drawn = draw(probs.expand(n, -1), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=8).double()
    expected = probs.double() / probs.sum() * n
    assert counts[probs == 0].sum() == 0
    sigma = (expected * (1 - expected / n)).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1e-9).all(), counts  # binomial counts within 5 sigma
    for broken in (torch.tensor([[0.5, float("nan")]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, float("inf")]])):
        with pytest.raises(ValueError, match="NaN, inf or no mass"):
            draw(broken)


def test_draw_searches_blocks_without_drawing_a_zero_at_their_edges_or_in_an_empty_block():
    # 300 tokens: two full 128-token blocks and a padded one; the second block is empty, and zeros sit on each
    # remaining block edge, where a residual rounded past a block's total or below zero would land.
    probs = torch.rand(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.2
    probs[128:256] = 0
    probs[[0, 127, 256, 299]] = 0
    n = 60_000
    drawn = draw(probs.float().expand(n, -1), generator=torch.Generator().manual_seed(4))
    counts = torch.bincount(drawn, minlength=300).double()
    assert counts[probs == 0].sum() == 0
    expected = probs / probs.sum() * n
    sigma = (expected * (1 - expected / n)).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1e-9).all()  # about 250 expected per token: normal enough


def test_draw_at_the_ends_of_the_unit_interval_takes_the_first_and_last_tokens_with_mass(monkeypatch):
    """u = 0, and u = 1 standing for a u * total that rounded up to the total: never the massless tokens before the
    first with mass, after the last in its block, or in an empty block after it."""
    probs = torch.rand(2, 300, generator=torch.Generator().manual_seed(5)) + 0.2
    probs[:, :5] = 0  # massless at the start of the first block
    probs[:, 250:] = 0  # the last token with mass is inside the second block; the third block is empty
    ends = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: ends.clone())
    assert draw(probs).tolist() == [5, 249]


@pytest.mark.parametrize("top_k, top_p, temperature", [(3, 1.0, 1.0), (0, 0.6, 1.0), (5, 0.8, 0.5), (0, 1.0, 2.0)])
def test_sampled_tokens_stay_in_the_support_of_hfs_warpers(top_k, top_p, temperature):
    config = SamplingConfig(do_sample=True, top_k=top_k, top_p=top_p, temperature=temperature)
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float32) * 3
    reference = LogitsProcessorList([*([TopKLogitsWarper(top_k)] if top_k else []),
                                     *([TopPLogitsWarper(top_p)] if top_p < 1 else [])])
    support = torch.isfinite(reference(None, logits.clone() / temperature))
    torch.manual_seed(0)
    drawn = torch.stack([next_tokens(logits.clone(), config, logits_warpers(config)) for _ in range(2000)], 1)
    assert support.gather(1, drawn).all()
    hit = torch.zeros_like(support).scatter_(1, drawn, True)
    if top_k or top_p < 1:
        assert torch.equal(hit, support)  # a narrow support is drawn in full within 2,000 draws
    probs = torch.softmax(logits.double() / temperature, -1)
    top = probs.argmax(-1)
    frequency = (drawn == top[:, None]).double().mean(1)
    if not (top_k or top_p < 1):  # the unwarped softmax, tempered: the top token's frequency is its probability
        assert ((frequency - probs.gather(1, top[:, None]).squeeze(1)).abs() < 5 * math.sqrt(0.25 / 2000)).all()


def test_greedy_ignores_warpers_and_nothing_to_decode_is_empty(word_tokenizer):
    logits = torch.randn(3, 20)
    greedy = SamplingConfig(top_k=2, top_p=0.1, temperature=0.1)
    assert not logits_warpers(greedy)
    assert torch.equal(next_tokens(logits, greedy, logits_warpers(greedy)), logits.argmax(-1))
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    assert sample(model, [], pad_token_id=0, eos_token_id=1) == []
    ids, mask = left_pad([[5, 6], [7]], word_tokenizer.pad_token_id, "cpu")
    assert generate_completions(model, ids, mask, eos_token_id=1, config=SamplingConfig(max_new_tokens=0)) == [[], []]
    full = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_argument(full), use_cache=True)
    with pytest.raises(ValueError, match="must leave at least the last column"):
        generate_completions(model, ids, mask, eos_token_id=1, cache=full)


def test_a_repeated_prompt_runs_once_and_draws_what_unshared_rows_draw(word_tokenizer):
    """GRPO's groups: rows that repeat a prompt share one run of it before decoding, and with the same seed every row
    draws the tokens it draws when each row runs its own prompt (float64, in GPT-2, whose norms stay in float64)."""
    model = build_model("gpt2", "1m", word_tokenizer, seed=1).double().eval()
    pad, eos = word_tokenizer.pad_token_id, word_tokenizer.eos_token_id
    distinct = [*_prompts(seed=4, count=3, vocab=len(word_tokenizer)), [12]]  # [12]: padding before its last column
    prompts = [distinct[i] for i in (0, 1, 0, 2, 3, 1, 0, 3)]
    config = SamplingConfig(max_new_tokens=8, do_sample=True)
    calls: list[tuple[int, int]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    try:
        torch.manual_seed(0)
        shared = sample(model, prompts, pad_token_id=pad, eos_token_id=eos, config=config)
    finally:
        hook.remove()
    width = max(map(len, prompts))
    assert calls[:2] == [(len(distinct), width - 1), (len(prompts), 1)]  # distinct prompts once, then every row
    torch.manual_seed(0)
    input_ids, attention_mask = left_pad(prompts, pad, "cpu")
    assert shared == generate_completions(model, input_ids, attention_mask, eos_token_id=eos, config=config)
    assert len({tuple(row) for row in shared}) > len(distinct)  # the draws differ within a group
