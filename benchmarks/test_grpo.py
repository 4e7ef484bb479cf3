"""One GRPO step: thoughtlab's `GRPO` against TRL's `GRPOTrainer` (see `benchmarks.grpo` for what is measured).

Each provider runs in a fresh interpreter, so its peak memory is its own.
pytest-benchmark's time is that whole run (model building included); the
per-step rollout / update / step medians and the peak memory are in
`extra_info`. ``python -m benchmarks.grpo`` prints the comparison as a table.
"""

from __future__ import annotations

import pytest

from benchmarks.common import available
from benchmarks.grpo import PROVIDERS, Setting, measure


@pytest.mark.parametrize("provider", PROVIDERS)
def test_grpo_step(benchmark, provider):
    if not available(provider):
        pytest.skip(f"{provider} is not installed (pip install -e '.[bench]')")
    setting = Setting()
    benchmark.group = "grpo step cpu"
    result = benchmark.pedantic(measure, args=(provider, setting), rounds=1, iterations=1)
    assert 0 < result["rollout_s"] < result["step_s"] and result["update_s"] > 0
    assert 0 < result["completion_tokens"] <= setting.max_new_tokens
    benchmark.extra_info.update(result)
