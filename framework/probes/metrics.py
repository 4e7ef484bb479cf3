"""Rates that come with their counts and a Wilson interval, as torchmetrics `Metric`s.

A rate alone hides how much evidence is behind it; every rate here reports
`hits`, `total` and a 95% Wilson score interval (sound at 0% and 100%, where
the normal approximation collapses).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torchmetrics import Metric


def wilson_interval(hits: int | float, total: int | float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data."""
    if total <= 0:
        return 0.0, 1.0
    p = hits / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)



def separating_size(p: float, q: float, z: float = 1.96, limit: int = 10**7) -> int | None:
    """The smallest number of episodes per arm at which rates `p` and `q`, observed as they are, have disjoint
    Wilson intervals: the sample size a comparison needs when its intervals overlap. None when `p == q` (no
    sample separates them) or past `limit`."""
    if p == q:
        return None

    def disjoint(n: int) -> bool:
        (low_p, high_p), (low_q, high_q) = wilson_interval(p * n, n, z), wilson_interval(q * n, n, z)
        return high_p < low_q or high_q < low_p

    high = 1  # the intervals shrink as n grows, so the smallest such n is found by doubling, then bisection
    while not disjoint(high):
        if high > limit:
            return None
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if disjoint(middle) else (middle, high)
    return high

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
