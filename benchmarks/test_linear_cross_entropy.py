"""Forward + backward of token cross-entropy over a linear head, providers side by side.

Time comes from pytest-benchmark; the peak memory of the same call, measured in
a fresh subprocess, goes into ``extra_info["peak_bytes"]`` (see
``benchmarks.common``). ``python -m benchmarks.report`` prints the same
comparison as one table with ratios to naive.
"""

from __future__ import annotations

import pytest

from benchmarks.common import CPU_SHAPE, MASKED, loss_fn, make_inputs, peak_bytes, providers, step

NAMES = list(providers(CPU_SHAPE.device))


@pytest.mark.parametrize("masked", MASKED, ids=[f"masked{m:.0%}" for m in MASKED])
@pytest.mark.parametrize("name", NAMES)
def test_linear_cross_entropy(benchmark, shape, name, masked):
    if providers(shape.device)[name] is None:
        pytest.skip(f"{name} is not available here")
    inputs = make_inputs(shape, masked)
    benchmark.group = f"{shape.device} masked {masked:.0%}"
    benchmark.extra_info["peak_bytes"] = peak_bytes(name, shape, masked)
    benchmark.pedantic(step, args=(loss_fn(name, shape.device), inputs), rounds=3, warmup_rounds=1)
