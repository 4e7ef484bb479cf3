"""One decode step of attention against a left-padded KV cache, providers side by side.

Time comes from pytest-benchmark (group = device); ``python -m
benchmarks.decode_attention`` prints the same comparison as one table with
ratios to SDPA. Every provider's output is checked against SDPA's first, so a
fast wrong answer cannot win.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.decode_attention import CPU_SHAPE, GPU_SHAPE, DecodeShape, call, make_inputs, providers

NAMES = list(providers("cuda"))


@pytest.fixture(params=[CPU_SHAPE, GPU_SHAPE], ids=["cpu-B8-Hq32-Hkv8-T1024-D64-fp32",
                                                    "gpu-B64-Hq32-Hkv8-T4096-D128-bf16"])
def decode_shape(request) -> DecodeShape:
    if request.param.device == "cuda" and not torch.cuda.is_available():
        pytest.skip("the GPU shape needs CUDA")
    return request.param


@pytest.mark.parametrize("name", NAMES)
def test_decode_attention(benchmark, decode_shape, name):
    fn = providers(decode_shape.device).get(name)
    if fn is None:
        pytest.skip(f"{name} runs on CUDA only")
    inputs = make_inputs(decode_shape)
    expected = call(providers(decode_shape.device)["sdpa (transformers)"], inputs)
    tolerance = 1e-5 if decode_shape.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(call(fn, inputs), expected, atol=tolerance, rtol=tolerance)
    benchmark.group = f"decode attention {decode_shape.device}"
    benchmark.extra_info["cache_bytes"] = decode_shape.cache_bytes()
    benchmark.pedantic(call, args=(fn, inputs), rounds=20, warmup_rounds=2)
