"""decode_attention registered with transformers: incremental decoding equals the stock implementations.

Each model decodes a left-padded batch with a ``DynamicCache`` (a prefill, then
one position per step, teacher-forced so every implementation sees the same
inputs) under "sdpa", "eager" and ours; the logits of every step must agree,
and the decode steps must really have gone through ``decode_attention``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from framework.data.collate import left_pad
from framework.models import FAMILIES, build_model
from framework.models.backbone import cache_argument
from framework.rollout.sampling import SamplingConfig, sample
from kernels import hf_attention
from kernels.hf_attention import DECODE_ATTENTION, use_decode_attention

PROMPTS = [[5, 9, 12, 7, 8, 10], [6, 11], [13, 8, 9, 14]]  # left padding of 0, 4 and 2 positions
STEPS = 3


def count_decode_calls(monkeypatch) -> list[int]:
    calls = []
    original = hf_attention.decode_attention

    def spy(query, *args, **kwargs):
        calls.append(query.shape[0])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(hf_attention, "decode_attention", spy)
    return calls


def decode(model, tokenizer, steps: int = STEPS, *, hole: bool = False, static: bool = False) -> torch.Tensor:
    """Logits [steps + 1, B, V] of the prefill's last position and of each decode step.

    ``hole`` masks row 1's new position at the second step, as a rollout leaves
    behind when a finished row keeps stepping with its result ignored. ``static``
    decodes into a preallocated ``StaticCache`` (whose unfilled tail is masked).
    """
    input_ids, attention_mask = left_pad(PROMPTS, tokenizer.pad_token_id, torch.device("cpu"))
    new_tokens = torch.randint(4, len(tokenizer), (len(PROMPTS), steps), generator=torch.Generator().manual_seed(1))
    if static:
        cache = StaticCache(config=model.config, max_cache_len=40)
    else:
        cache = DynamicCache(config=model.config)
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **cache_argument(cache))
    logits = [out.logits[:, -1]]
    next_position = positions[:, -1:] + 1
    for step in range(steps):
        column = torch.ones(len(PROMPTS), 1, dtype=attention_mask.dtype)
        if hole and step == 1:
            column[1] = 0
        attention_mask = torch.cat([attention_mask, column], dim=1)
        out = model(input_ids=new_tokens[:, step:step + 1], attention_mask=attention_mask, position_ids=next_position,
                    **cache_argument(cache))
        logits.append(out.logits[:, -1])
        next_position = next_position + column
    return torch.stack(logits)


@pytest.fixture(params=FAMILIES)
def model(request, word_tokenizer):
    return build_model(request.param, "1m", word_tokenizer, seed=0).eval()


@torch.no_grad()
@pytest.mark.parametrize("hole", [False, True], ids=["left-padded", "with-a-hole"])
def test_incremental_decode_matches_sdpa_and_eager(model, word_tokenizer, monkeypatch, hole):
    stock = {}
    for name in ("sdpa", "eager"):
        model.set_attn_implementation(name)
        stock[name] = decode(model, word_tokenizer, hole=hole)
    calls = count_decode_calls(monkeypatch)
    ours = decode(use_decode_attention(model), word_tokenizer, hole=hole)
    assert model.config._attn_implementation == DECODE_ATTENTION
    assert len(calls) == STEPS * model.config.num_hidden_layers  # every decode step, never the prefill
    torch.testing.assert_close(ours, stock["sdpa"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours, stock["eager"], atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_static_cache_decode_matches_sdpa(word_tokenizer, monkeypatch):
    model = build_model("llama", "1m", word_tokenizer, seed=0).eval()
    expected = decode(model, word_tokenizer, static=True)
    calls = count_decode_calls(monkeypatch)
    ours = decode(use_decode_attention(model), word_tokenizer, static=True)
    assert len(calls) == STEPS * model.config.num_hidden_layers
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["dynamic-cache", "static-cache"])
def test_triton_path_under_the_interpreter(word_tokenizer, monkeypatch, static):
    model = build_model("qwen3", "1m", word_tokenizer, seed=0).eval()
    expected = decode(model, word_tokenizer, steps=2, static=static)
    import kernels.decode_attention_triton as triton_decode

    launches = []
    original = triton_decode.decode_attention_forward
    monkeypatch.setattr(triton_decode, "decode_attention_forward", lambda *a: launches.append(1) or original(*a))
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "triton")
    ours = decode(use_decode_attention(model), word_tokenizer, steps=2, static=static)
    assert len(launches) == 2 * model.config.num_hidden_layers
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gradients_through_a_decode_step_match_sdpa(word_tokenizer, monkeypatch, impl):
    """A continuous thought is a decode step with gradients: they must equal SDPA's, on both paths."""
    monkeypatch.setenv("THOUGHTLAB_KERNELS", impl)
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    input_ids, attention_mask = left_pad(PROMPTS, word_tokenizer.pad_token_id, torch.device("cpu"))
    thought = torch.randn(len(PROMPTS), 1, model.config.hidden_size)
    upstream = torch.randn(len(PROMPTS), 1, model.config.vocab_size)
    grads = {}
    for name in ("sdpa", DECODE_ATTENTION):
        use_decode_attention(model) if name == DECODE_ATTENTION else model.set_attn_implementation(name)
        cache = DynamicCache(config=model.config)
        positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **cache_argument(cache))
        embeds = thought.clone().requires_grad_()
        out = model(inputs_embeds=embeds, attention_mask=torch.cat([attention_mask, torch.ones(3, 1)], dim=1).long(),
                    position_ids=positions[:, -1:] + 1, **cache_argument(cache))
        model.zero_grad()
        (out.logits * upstream).sum().backward()
        grads[name] = (embeds.grad, model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    for ours, stock in zip(grads[DECODE_ATTENTION], grads["sdpa"]):
        torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-4)


def test_the_name_works_at_load_time(word_tokenizer):
    config = build_model("gpt2", "1m", word_tokenizer).config
    model = AutoModelForCausalLM.from_config(config, attn_implementation=DECODE_ATTENTION)
    assert model.config._attn_implementation == DECODE_ATTENTION


def test_what_decode_attention_does_not_cover_goes_to_sdpa(monkeypatch):
    calls = count_decode_calls(monkeypatch)
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    query, key, value = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    additive = torch.randn(2, 1, 1, 5)  # a float bias is not a key mask
    per_head = torch.rand(2, 4, 1, 5) < 0.5
    for q, mask in [(torch.randn(2, 4, 3, 8), None), (query, additive), (query, per_head)]:
        out, _ = hf_attention.decode_attention_forward(module, q, key, value, mask)
        expected, _ = sdpa_attention_forward(module, q, key, value, mask)
        torch.testing.assert_close(out, expected)
    hf_attention.decode_attention_forward(module, query, key, value, None, dropout=0.5)
    assert calls == []
    out, weights = hf_attention.decode_attention_forward(module, query, key, value, None)
    assert calls == [2] and out.shape == (2, 1, 4, 8) and weights is None


def test_generate_gives_the_same_tokens(word_tokenizer, monkeypatch):
    model = build_model("qwen3", "1m", word_tokenizer, seed=0)
    config = SamplingConfig(max_new_tokens=6)
    ids = {"pad_token_id": word_tokenizer.pad_token_id, "eos_token_id": word_tokenizer.eos_token_id}
    expected = sample(model, PROMPTS, config=config, **ids)
    calls = count_decode_calls(monkeypatch)
    assert sample(use_decode_attention(model), PROMPTS, config=config, **ids) == expected
    assert len(calls) == 5 * model.config.num_hidden_layers  # the first new token comes from the prefill
