"""The logit lens on continuous thoughts, against a hand computation."""

from __future__ import annotations

import random

import pytest
import torch

from framework.models import LatentConfig, Reasoner, build_model
from framework.probes import logit_lens
from framework.rollout import SamplingConfig, latent_rollout


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
            assert reading.token_ids[row][k].tolist() == best
            assert reading.probs[row][k].tolist() == pytest.approx([probs[v] for v in best], rel=1e-4)
            assert reading.tokens[row][k] == [word_tokenizer.decode([v]) for v in best]
    assert [ids.shape for ids in reading.token_ids] == [probs.shape for probs in reading.probs] == [(3, 4)] * 2


def test_a_thought_aligned_with_a_token_reads_as_that_token(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    weight = model.get_output_embeddings().weight.detach()
    seven = word_tokenizer.convert_tokens_to_ids("7")
    thought = 50 * weight[seven] / weight[seven].norm() ** 2  # logit 50 for "7", small for the others
    reading = logit_lens(model, word_tokenizer, thought[None, None], top_k=1)
    assert reading.tokens == [[["7"]]] and reading.probs[0].item() > 0.99


@pytest.mark.parametrize("projection", [False, True])
def test_logit_lens_reads_each_thought_as_the_model_does_before_its_slot(projection, word_tokenizer, addition_task):
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ", projection=projection)
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer, seed=0), word_tokenizer, "latent", latent=config)
    if projection:  # the thoughts fed back differ from the ones read: the lens reads before the projection
        with torch.no_grad():
            reasoner.projection.weight.add_(0.3 * torch.randn_like(reasoner.projection.weight))
    examples = [addition_task.generate(random.Random(seed)) for seed in range(4)]
    prompts = [reasoner.prompt_ids(example, stage) for example, stage in zip(examples, [3, 1, 0, 2])]
    rollout = latent_rollout(
        reasoner.model, prompts, latent_token_id=reasoner.latent_token_id, pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=word_tokenizer.eos_token_id, config=SamplingConfig(max_new_tokens=2),
        projection=reasoner.projection, return_thoughts=True,
    )
    reading = logit_lens(reasoner.model, word_tokenizer, rollout.thoughts, top_k=3)
    assert [len(ids) for ids in reading.token_ids] == rollout.num_thoughts == [2, 1, 0, 2]  # no padding rows
    embed = reasoner.model.get_input_embeddings()
    for row, prompt in enumerate(prompts):
        # A plain forward over the rollout's embeddings: each slot holds the thought fed to it.
        ids = torch.tensor(prompt)
        slots = (ids == reasoner.latent_token_id).nonzero().flatten()
        with torch.no_grad():
            embeds = embed(ids).clone()
            fed = rollout.thoughts[row]
            embeds[slots] = reasoner.projection(fed) if projection else fed
            logits = reasoner.model(inputs_embeds=embeds[None]).logits[0]
        for j, slot in enumerate(slots.tolist()):
            probs, best = logits[slot - 1].float().softmax(-1).topk(3)
            assert reading.token_ids[row][j].tolist() == best.tolist()
            torch.testing.assert_close(reading.probs[row][j], probs, rtol=1e-4, atol=1e-6)


def test_logit_lens_rejects_bad_shapes(word_tokenizer):
    model = build_model("gpt2", "1m", word_tokenizer)
    with pytest.raises(ValueError, match=r"thoughts\[0\] must be \[thoughts, hidden\]"):
        logit_lens(model, word_tokenizer, torch.zeros(3, 128))
    with pytest.raises(ValueError, match=r"thoughts\[1\] have hidden size 64"):
        logit_lens(model, word_tokenizer, [torch.zeros(1, 128), torch.zeros(1, 64)])
    with pytest.raises(ValueError, match="top_k must be in"):
        logit_lens(model, word_tokenizer, [torch.zeros(1, 128)], top_k=0)
