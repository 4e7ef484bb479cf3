"""Binomial statistics every report needs: the Wilson interval of a rate, and the sample size that separates two.

Plain Python on purpose: the report code imports it without loading torch.
"""

from __future__ import annotations

import math


def wilson_interval(hits: float, total: float, z: float = 1.96) -> tuple[float, float]:
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
    Wilson intervals: the sample size a comparison needs when its intervals overlap.

    None when no sample up to `limit` separates them: equal rates, a NaN rate (a rate over no episodes), or a
    difference too small.
    """
    if math.isnan(p) or math.isnan(q) or p == q:
        return None

    def disjoint(n: int) -> bool:
        (low_p, high_p), (low_q, high_q) = wilson_interval(p * n, n, z), wilson_interval(q * n, n, z)
        return high_p < low_q or high_q < low_p

    high = 1  # the intervals shrink as n grows, so the smallest such n is found by doubling, then bisection
    while not disjoint(high):
        if high >= limit:
            return None
        high = min(2 * high, limit)
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if disjoint(middle) else (middle, high)
    return high
