"""decode_attention serving the latent reasoner's thought loop: training forward and rollouts equal SDPA's.

Each continuous thought is one cached position per row (``forward_one_position``
inside ``run_with_thoughts``), the step ``DECODE_ATTENTION`` exists for. Under
it, ``latent_forward``'s loss and parameter gradients and ``latent_rollout``'s
completions and thoughts must equal those under "sdpa", on a left-padded batch
whose rows hold different numbers of thoughts (so the thought steps carry a
real key mask), on the torch path for every family and once on the Triton
path under the interpreter. Spies check that every thought step of every layer
really went through ``decode_attention``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

import framework.models.latent as latent_module
from framework.data.collate import collate_latent
from framework.data.masks import TRAIN_ON_COMPLETION
from framework.data.sample import Example
from framework.models import FAMILIES, LatentConfig, Reasoner, build_model, latent_forward
from framework.regimes.loss import hidden_states_loss
from framework.rollout import LatentRollout, SamplingConfig, latent_rollout
from kernels import hf_attention
from kernels.hf_attention import DECODE_ATTENTION, use_decode_attention

CONFIG = LatentConfig(thoughts_per_step=2, max_stage=2, step_separator=" ; ")
THOUGHT_COLUMNS = 4  # the most thoughts in a row of every batch below (max_stage * thoughts_per_step)


@dataclass
class Batch:
    """Examples, the curriculum stage of each row in training and in the rollout, and the rollout's length."""

    examples: list[Example]
    training_stages: list[int]
    rollout_stages: list[int]
    max_new_tokens: int


def mixed_batch(task) -> Batch:
    """Rows with 0, 2, 4 and 4 thoughts (training) or 4, 2, 0 and 4 (rollout), and a long prompt for left padding."""
    rng = random.Random(0)
    examples = [task.generate(rng) for _ in range(3)] + [Example("1 + 1 + 1 + 1 + 1 + 1 + 1", "", "7")]
    return Batch(examples, [0, 1, 2, CONFIG.final_stage], [3, 1, 0, 3], max_new_tokens=6)


def latent_reasoner(family: str, tokenizer, dtype: torch.dtype) -> Reasoner:
    """A reasoner whose outputs depend on its input (the default init repeats one token), in ``dtype``."""
    model = build_model(family, "1m", tokenizer, seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    return Reasoner(model.to(dtype), tokenizer, "latent", latent=CONFIG)


def loss_and_grads(reasoner: Reasoner, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Latent SFT's loss on the batch at its training stages, and its gradient for every parameter."""
    samples = [reasoner.tokenize(example, stage) for example, stage in zip(batch.examples, batch.training_stages)]
    tensors = collate_latent(samples, reasoner.tokenizer.pad_token_id, reasoner.latent_start_id)
    labels, weights = TRAIN_ON_COMPLETION.apply(tensors["input_ids"], tensors["roles"])
    model = reasoner.model.train()
    hidden = latent_forward(model, tensors["input_ids"], tensors["attention_mask"],
                            latent_token_id=reasoner.latent_token_id)
    loss = hidden_states_loss(model, hidden, labels, weights)
    return loss, list(torch.autograd.grad(loss, list(model.parameters())))


def rollout(reasoner: Reasoner, batch: Batch) -> LatentRollout:
    """Greedy latent rollouts of the batch at its rollout stages."""
    prompts = [reasoner.prompt_ids(example, stage) for example, stage in zip(batch.examples, batch.rollout_stages)]
    return latent_rollout(reasoner.model, prompts, latent_token_id=reasoner.latent_token_id,
                          pad_token_id=reasoner.tokenizer.pad_token_id, eos_token_id=reasoner.tokenizer.eos_token_id,
                          config=SamplingConfig(max_new_tokens=batch.max_new_tokens), return_thoughts=True)


class DecodeSpy:
    """Counts ``decode_attention`` calls in all, and within each thought step (``forward_one_position``)."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        self.per_thought_step: list[int] = []
        decode, step = hf_attention.decode_attention, latent_module.forward_one_position

        def counting_decode(*args, **kwargs):
            self.calls += 1
            return decode(*args, **kwargs)

        def counting_step(*args, **kwargs):
            before = self.calls
            out = step(*args, **kwargs)
            self.per_thought_step.append(self.calls - before)
            return out

        monkeypatch.setattr(hf_attention, "decode_attention", counting_decode)
        monkeypatch.setattr(latent_module, "forward_one_position", counting_step)


def compare_with_sdpa(reasoner: Reasoner, batch: Batch, monkeypatch, **tolerance: float) -> DecodeSpy:
    """Loss, gradients, completions and thoughts under SDPA and under DECODE_ATTENTION; returns the spy of ours."""
    reasoner.model.set_attn_implementation("sdpa")
    stock_loss, stock_grads = loss_and_grads(reasoner, batch)
    stock_rollout = rollout(reasoner, batch)
    spy = DecodeSpy(monkeypatch)
    use_decode_attention(reasoner.model)
    assert reasoner.model.config._attn_implementation == DECODE_ATTENTION
    loss, grads = loss_and_grads(reasoner, batch)
    layers = reasoner.model.config.num_hidden_layers
    assert spy.per_thought_step == [layers] * THOUGHT_COLUMNS and spy.calls == THOUGHT_COLUMNS * layers
    ours = rollout(reasoner, batch)

    torch.testing.assert_close(loss, stock_loss, **tolerance)
    for grad, stock in zip(grads, stock_grads, strict=True):
        torch.testing.assert_close(grad, stock, **tolerance)
    assert ours.completions == stock_rollout.completions
    assert ours.num_thoughts == stock_rollout.num_thoughts == [CONFIG.num_thoughts(stage) for stage in batch.rollout_stages]
    torch.testing.assert_close(ours.thoughts, stock_rollout.thoughts, **tolerance)
    assert len({tuple(c) for c in ours.completions}) > 1  # the rows really differ
    # The rollout's thought steps, then generate's: its first forward runs the prompt's last column, one position.
    assert spy.per_thought_step[THOUGHT_COLUMNS:] == [layers] * THOUGHT_COLUMNS
    assert spy.calls == (2 * THOUGHT_COLUMNS + max(ours.num_tokens)) * layers
    return spy


@pytest.mark.parametrize("family", FAMILIES)
def test_thought_loop_under_decode_attention_equals_sdpa(family, word_tokenizer, addition_task, monkeypatch):
    reasoner = latent_reasoner(family, word_tokenizer, torch.float64)
    compare_with_sdpa(reasoner, mixed_batch(addition_task), monkeypatch, rtol=1e-9, atol=1e-9)


def test_thought_loop_on_the_triton_path_equals_sdpa(word_tokenizer, addition_task, monkeypatch):
    import kernels.decode_attention_triton as triton_decode

    launches = []
    kernel = triton_decode.decode_attention_forward
    monkeypatch.setattr(triton_decode, "decode_attention_forward", lambda *a: launches.append(1) or kernel(*a))
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "triton")
    reasoner = latent_reasoner("qwen3", word_tokenizer, torch.float32)
    # Two rows and a short rollout: every interpreted launch costs a fraction of a second.
    full = mixed_batch(addition_task)
    batch = Batch([full.examples[0], full.examples[-1]], [1, CONFIG.final_stage], [1, 3], max_new_tokens=3)
    spy = compare_with_sdpa(reasoner, batch, monkeypatch, rtol=1e-4, atol=2e-5)
    assert len(launches) == spy.calls  # every decode step ran the Triton kernel, none fell back to torch
