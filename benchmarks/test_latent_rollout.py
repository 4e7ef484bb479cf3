"""Latent rollouts and latent training steps, providers side by side on one model and one batch of prompts.

Rollouts: Coconut-style batch-1 loops (a, a'), a plain Hugging Face
``DynamicCache`` loop (b) and ``latent_rollout`` (c), in thoughts·rows per
second (``extra_info``). Training: ``latent_forward`` against k + 1
full-sequence passes. The providers are first checked, once, to write the same
greedy completions and the same loss (see ``benchmarks.latent``); that check
is also every provider's warm-up, so each is then timed 3 times without
another (the median drops a slow first call). After the
run, the terminal summary prints both tables with our speedup over each
provider; ``python -m benchmarks.report --suite latent`` prints the same
tables from one interleaved run.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.latent import (
    CPU_WORKLOAD,
    GPU_WORKLOAD,
    ROLLOUTS,
    TRAINING,
    Setup,
    build_setup,
    check_rollouts_agree,
    check_rows,
    check_training_agrees,
    rollout_fn,
    thought_rows_per_second,
    training_step_fn,
)


@pytest.fixture(scope="module", params=[CPU_WORKLOAD, GPU_WORKLOAD], ids=["cpu-llama20m-b32-fp32", "gpu-llama20m-b64-bf16"])
def latent_setup(request) -> Setup:
    if request.param.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU workload needs CUDA")
    setup = build_setup(request.param)
    check_rollouts_agree(setup, check_rows(setup.workload))
    check_training_agrees(setup)
    return setup


@pytest.mark.parametrize("name", list(ROLLOUTS))
def test_latent_rollout(benchmark, latent_setup, latent_medians, name):
    workload = latent_setup.workload
    benchmark.group = f"latent rollout: {workload.describe()}"
    completions = benchmark.pedantic(rollout_fn(latent_setup, name), rounds=3, warmup_rounds=0)
    assert len(completions) == workload.batch
    assert all(0 < len(c) <= workload.answer_tokens for c in completions)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        latent_medians.setdefault(workload, {}).setdefault("rollout", {})[name] = median
        benchmark.extra_info["thought_rows_per_s"] = thought_rows_per_second(workload, median)


@pytest.mark.parametrize("name", list(TRAINING))
def test_latent_training_step(benchmark, latent_setup, latent_medians, name):
    workload, model = latent_setup.workload, latent_setup.model
    benchmark.group = f"latent training step: {workload.describe()}"
    model.train()
    try:
        benchmark.pedantic(training_step_fn(latent_setup, name), rounds=3, warmup_rounds=0)
        assert all(p.grad is not None for p in model.parameters())
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    if benchmark.stats is not None:
        latent_medians.setdefault(workload, {}).setdefault("training", {})[name] = benchmark.stats.stats.median
