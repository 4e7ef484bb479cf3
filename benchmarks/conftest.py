"""Benchmark fixtures. Run with ``pytest benchmarks/ --benchmark-only``; ``tests/`` never collects these."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import CPU_SHAPE, GPU_SHAPE, Shape
from benchmarks.latent import rollout_table, training_table


@pytest.fixture(params=[CPU_SHAPE, GPU_SHAPE], ids=["cpu-4096x512x32000-fp32", "gpu-8192x4096x128256-bf16"])
def shape(request) -> Shape:
    if request.param.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU shape needs CUDA")
    return request.param


LATENT_MEDIANS = pytest.StashKey[dict]()


@pytest.fixture
def latent_medians(request) -> dict:
    """Median seconds as {workload: {"rollout" | "training": {provider: s}}}, printed as tables after the run."""
    return request.config.stash.setdefault(LATENT_MEDIANS, {})


def pytest_terminal_summary(terminalreporter, config) -> None:
    for workload, kinds in config.stash.get(LATENT_MEDIANS, {}).items():
        terminalreporter.section(f"latent: {workload.describe()}")
        if "rollout" in kinds:
            terminalreporter.write_line("\n".join(rollout_table(workload, kinds["rollout"])) + "\n")
        if "training" in kinds:
            terminalreporter.write_line("\n".join(training_table(kinds["training"])))
