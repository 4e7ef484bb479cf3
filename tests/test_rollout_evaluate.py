"""Generation over many examples in batches: the same rows as one batch, on the device asked for, in eval mode."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from framework.models import LatentConfig, Reasoner, build_model
from framework.rollout import SamplingConfig, generate, generate_batched, rollout_latent, rollout_latent_batched

GREEDY = SamplingConfig(max_new_tokens=6)


def _examples(task, n=5):
    """One problem with more terms, `n` problems of `task`, then two with fewer terms: the batches, which group
    prompts by length, must still return every result in the examples' order."""
    shorter, longer = dataclasses.replace(task, n_terms=task.n_terms - 1), dataclasses.replace(task, n_terms=task.n_terms + 1)
    return ([longer.generate(random.Random(n))] + [task.generate(random.Random(seed)) for seed in range(n)]
            + [shorter.generate(random.Random(n + 1)), shorter.generate(random.Random(n + 2))])


def test_generate_batched_equals_one_batch_and_restores_train_mode(word_tokenizer, addition_task):
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    with torch.no_grad():  # larger weights than the default init, so that each prompt gets its own completion
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    reasoner = Reasoner(model, word_tokenizer, "cot")
    examples = _examples(addition_task)
    reasoner.model.train()
    batched = generate_batched(reasoner, examples, GREEDY, batch_size=2, device="cpu")
    assert reasoner.model.training  # eval mode only while generating
    assert len({(g.trace, g.answer) for g in batched}) > 2  # rows differ: results out of order would show
    with torch.no_grad():
        reasoner.model.eval()
        assert batched == generate(reasoner, examples, GREEDY)
    assert generate_batched(reasoner, [], GREEDY, batch_size=2) == []
    with pytest.raises(ValueError, match="batch_size must be positive"):
        generate_batched(reasoner, examples, GREEDY, batch_size=0)


def test_rollout_latent_batched_joins_the_batches_with_their_thoughts(word_tokenizer, addition_task):
    config = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=addition_task.step_separator)
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer, seed=0), word_tokenizer, "latent", latent=config)
    examples = _examples(addition_task)
    batched = rollout_latent_batched(reasoner, examples, GREEDY, batch_size=2, return_thoughts=True)
    whole = rollout_latent(reasoner, examples, GREEDY, return_thoughts=True)
    assert batched.completions == whole.completions and batched.num_thoughts == whole.num_thoughts == [2] * 8
    for row, thoughts in zip(batched.thoughts, whole.thoughts):
        torch.testing.assert_close(row, thoughts)
    assert rollout_latent_batched(reasoner, examples, GREEDY, batch_size=3).thoughts is None
