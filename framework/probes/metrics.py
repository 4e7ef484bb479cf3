"""Rates that come with their counts and a Wilson interval, as torchmetrics `Metric`s.

A rate alone hides how much evidence is behind it; every rate here reports
`hits`, `total` and a 95% Wilson score interval (sound at 0% and 100%, where
the normal approximation collapses).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

from framework.stats import wilson_interval


class Rate(Metric):
    """hits / total with counts and interval. `compute()` returns a dict of tensors."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def _add(self, hits: float, total: float) -> None:
        self.hits += hits
        self.total += total

    def compute(self) -> dict[str, torch.Tensor]:
        hits, total = float(self.hits), float(self.total)
        low, high = wilson_interval(hits, total)
        rate = hits / total if total > 0 else float("nan")
        return {
            "rate": torch.tensor(rate),
            "hits": torch.tensor(hits),
            "total": torch.tensor(total),
            "ci_low": torch.tensor(low),
            "ci_high": torch.tensor(high),
        }


class AnswerAccuracy(Rate):
    """Share of episodes whose answer the task's checker accepts."""

    def update(self, correct: Sequence[bool] | torch.Tensor) -> None:
        correct = torch.as_tensor(correct, dtype=torch.float)
        self._add(float(correct.sum()), float(correct.numel()))


class StepValidity(Rate):
    """Share of generated reasoning steps that the task's step checker accepts.

    Pooled over steps, not episodes: a long valid trace counts for more than a
    one-step one. Episodes without steps (no-CoT modes) add nothing.
    """

    def update(self, step_results: Sequence[Sequence[bool]]) -> None:
        hits = sum(sum(bool(v) for v in steps) for steps in step_results)
        total = sum(len(steps) for steps in step_results)
        self._add(float(hits), float(total))
