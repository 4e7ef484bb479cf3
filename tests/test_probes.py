"""Rates with counts and Wilson intervals."""

from __future__ import annotations

import math

import pytest
import torch

from framework.probes import AnswerAccuracy, StepValidity, wilson_interval


def test_wilson_interval_matches_the_closed_form():
    # 8 of 10 at 95%: the textbook Wilson interval is (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


@pytest.mark.parametrize("hits, total", [(0, 20), (20, 20), (3, 7), (500, 1000)])
def test_wilson_interval_brackets_the_rate_and_stays_in_unit_range(hits, total):
    low, high = wilson_interval(hits, total)
    assert 0.0 <= low <= hits / total <= high <= 1.0
    assert high - low > 0


def test_wilson_interval_narrows_with_more_data():
    narrow = wilson_interval(500, 1000)
    wide = wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 5


def test_answer_accuracy_accumulates_counts():
    metric = AnswerAccuracy()
    metric.update([True, False, True])
    metric.update(torch.tensor([True]))
    result = metric.compute()
    assert result["hits"].item() == 3 and result["total"].item() == 4
    assert result["rate"].item() == pytest.approx(0.75)
    assert (result["ci_low"].item(), result["ci_high"].item()) == pytest.approx(wilson_interval(3, 4))
    metric.reset()
    assert math.isnan(metric.compute()["rate"].item())


def test_step_validity_pools_steps_across_episodes():
    metric = StepValidity()
    metric.update([[True, True, False], [], [True]])
    result = metric.compute()
    assert (result["hits"].item(), result["total"].item()) == (3, 4)
