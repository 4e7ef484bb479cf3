"""Benchmark fixtures. Run with ``pytest benchmarks/ --benchmark-only``; ``tests/`` never collects these."""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import CPU_SHAPE, GPU_SHAPE, Shape


@pytest.fixture(params=[CPU_SHAPE, GPU_SHAPE], ids=["cpu-4096x512x32000-fp32", "gpu-8192x4096x128256-bf16"])
def shape(request) -> Shape:
    if request.param.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU shape needs CUDA")
    return request.param
