"""Float tolerances that hold on any processor: derived from a float64 run of the same computation.

Two float32 computations of one quantity that differ only in summation order
(batched vs alone, whole batch vs micro-batches) may each sit as far from the
exact value as float32 rounding takes them, and that distance depends on the
processor's kernels. So a test measures it: one of the two float32 results
against the float64 result of the same inputs. A bug (a shifted position, a
misaligned row) moves values by orders of magnitude more.
"""

from __future__ import annotations

import torch

# Two computations each within the measured rounding of the truth differ by up to twice it; the rest is room for
# one path summing in a less lucky order than the one measured.
FACTOR = 4.0


def rounding_tolerance(value: torch.Tensor, gold: torch.Tensor) -> float:
    """How far another float32 computation of `gold` may fall from `value`.

    `FACTOR` times `value`'s largest distance from the float64 `gold`, and never
    less than a few float32 ulps of `gold`'s largest magnitude (a computation that
    happens to round exactly must not make the bound zero).
    """
    value, gold = value.detach().double(), gold.detach().double()
    ulps = 4 * torch.finfo(torch.float32).eps * float(gold.abs().max())
    return FACTOR * max(float((value - gold).abs().max()), ulps)
