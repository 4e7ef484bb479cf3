"""Token rollouts: thoughtlab's decode loop against Hugging Face `generate` and a plain cache loop (see
`benchmarks.rollout` for the workloads). Each provider is timed on the same model and prompts after a check that
the greedy providers write the same tokens; ``python -m benchmarks.rollout`` prints the comparison as tables."""

from __future__ import annotations

import pytest

from benchmarks.rollout import (
    PROVIDERS,
    RUNNERS,
    WORKLOADS,
    build_setup,
    check_greedy_agreement,
    for_workload,
    never_ending,
)
from framework.rollout import SamplingConfig


@pytest.fixture(scope="module")
def setup():
    return build_setup()


def test_greedy_providers_agree(setup):
    assert check_greedy_agreement(never_ending(setup), SamplingConfig(max_new_tokens=32)) == len(setup.prompts)


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_rollout(benchmark, setup, workload, provider):
    benchmark.group = f"rollout cpu: {workload.name}"
    built = for_workload(setup, workload)
    config = SamplingConfig(max_new_tokens=32, do_sample=workload.do_sample)
    completions = benchmark.pedantic(RUNNERS[provider], args=(built, config), rounds=3, iterations=1, warmup_rounds=1)
    assert len(completions) == len(setup.prompts) and all(0 < len(row) <= 32 for row in completions)
    benchmark.extra_info["tokens"] = sum(map(len, completions))
