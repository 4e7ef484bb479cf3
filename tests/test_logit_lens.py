"""The logit lens on continuous thoughts, against a hand computation."""

from __future__ import annotations

import random

import pytest
import torch

from framework.models import LatentConfig, Reasoner, build_model
from framework.probes import logit_lens


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_logit_lens_matches_a_hand_computation(softcap, word_tokenizer):
    model = build_model("gpt2", "1m", word_tokenizer, seed=0)
    model.config.final_logit_softcapping = softcap
    weight = model.get_output_embeddings().weight.detach()
    torch.manual_seed(0)
    thoughts = torch.randn(2, 3, weight.shape[1])
    reading = logit_lens(model, word_tokenizer, thoughts, top_k=4)
    for row in range(2):
        for k in range(3):
            logits = [float(thoughts[row, k] @ weight[v]) for v in range(weight.shape[0])]
            if softcap:
                logits = [softcap * float(torch.tanh(torch.tensor(z / softcap))) for z in logits]
            total = sum(torch.tensor(logits).double().exp().tolist())
            probs = [float(torch.tensor(z).double().exp()) / total for z in logits]
            best = sorted(range(len(probs)), key=lambda v: -probs[v])[:4]
            assert reading.token_ids[row, k].tolist() == best
            assert reading.probs[row, k].tolist() == pytest.approx([probs[v] for v in best], rel=1e-4)
            assert reading.tokens[row][k] == [word_tokenizer.decode([v]) for v in best]
    assert reading.token_ids.shape == reading.probs.shape == (2, 3, 4)


def test_a_thought_aligned_with_a_token_reads_as_that_token(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    weight = model.get_output_embeddings().weight.detach()
    seven = word_tokenizer.convert_tokens_to_ids("7")
    thought = 50 * weight[seven] / weight[seven].norm() ** 2  # logit 50 for "7", small for the others
    reading = logit_lens(model, word_tokenizer, thought[None, None], top_k=1)
    assert reading.tokens == [[["7"]]] and reading.probs.item() > 0.99


def test_logit_lens_reads_a_rollouts_thoughts(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer, seed=0), word_tokenizer, "latent",
                        latent=LatentConfig(thoughts_per_step=1, max_stage=2))
    examples = [addition_task.generate(random.Random(seed)) for seed in range(3)]
    thoughts = reasoner.rollout_latent(examples, return_thoughts=True).thoughts
    reading = logit_lens(reasoner.model, word_tokenizer, thoughts, top_k=2)
    assert reading.probs.shape == (3, 2, 2) and (reading.probs[..., 0] >= reading.probs[..., 1]).all()


def test_logit_lens_rejects_bad_shapes(word_tokenizer):
    model = build_model("gpt2", "1m", word_tokenizer)
    with pytest.raises(ValueError, match=r"\[batch, thoughts, hidden\]"):
        logit_lens(model, word_tokenizer, torch.zeros(3, 128))
    with pytest.raises(ValueError, match="hidden size 64"):
        logit_lens(model, word_tokenizer, torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match="top_k must be in"):
        logit_lens(model, word_tokenizer, torch.zeros(1, 1, 128), top_k=0)
