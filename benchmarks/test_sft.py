"""One SFT step: thoughtlab's `SFT` against TRL's `SFTTrainer` (see `benchmarks.sft` for what is measured).

Each provider runs in a fresh interpreter, so its peak memory is its own.
pytest-benchmark's time is that whole run (model building included); the
per-step median and the peak memory are in `extra_info`. ``python -m
benchmarks.sft`` prints the comparison as a table.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.common import available
from benchmarks.sft import PROVIDERS, Setting, measure

TINY = Setting(size="1m", vocab=2000, batch=4, steps=1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sft_step(benchmark, provider):
    if not available(provider):
        pytest.skip(f"{provider} is not installed (pip install -e '.[bench]')")
    benchmark.group = "sft step cpu"
    result = benchmark.pedantic(measure, args=(provider, Setting()), rounds=1, iterations=1)
    assert result["step_s"] > 0
    benchmark.extra_info.update(result)


def test_both_sides_train_on_the_same_ids_at_a_tiny_shape(benchmark):
    """Same model, ids, labels and order: the first step's loss agrees to fp32 rounding (a shifted label or another
    batch would move it by far more). A smoke run of both providers, quick enough for any machine."""
    if not available("trl"):
        pytest.skip("trl is not installed (pip install -e '.[bench]')")
    benchmark.group = "sft step cpu (tiny smoke)"
    ours, trl = benchmark.pedantic(lambda: (measure("thoughtlab", TINY), measure("trl", TINY)), rounds=1, iterations=1)
    assert ours["step_s"] > 0 and trl["step_s"] > 0
    assert math.isclose(ours["first_loss"], trl["first_loss"], rel_tol=1e-4)
