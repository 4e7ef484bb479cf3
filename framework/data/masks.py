"""Mask strategies: which tokens are trained on, as a function of their role.

A regime never decides this itself; it applies a strategy to the batch's
`roles`. Labels follow the ecosystem's -100 convention (aligned with
`input_ids`; the loss shifts them), weights are a float tensor beside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from framework.data.sample import Role

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MaskStrategy:
    """Per-role loss weights. LATENT and PAD positions are never trained on."""

    name: str
    prompt: float
    trace: float
    answer: float

    def __post_init__(self) -> None:
        for field in ("prompt", "trace", "answer"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"mask strategy {self.name!r}: {field} weight must be >= 0, got {getattr(self, field)}")

    def role_weights(self) -> torch.Tensor:
        """Weights indexed by `Role` value."""
        weights = torch.zeros(len(Role))
        weights[Role.PROMPT] = self.prompt
        weights[Role.TRACE] = self.trace
        weights[Role.ANSWER] = self.answer
        return weights

    def apply(self, input_ids: torch.Tensor, roles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`labels` (-100 where the weight is 0) and float `loss_weights` for a batch."""
        loss_weights = self.role_weights().to(roles.device)[roles]
        labels = torch.where(loss_weights > 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return labels, loss_weights


# Regimes keep it among their hyperparameters: let `torch.load(weights_only=True)` (Lightning's resume) read it.
torch.serialization.add_safe_globals([MaskStrategy])


TRAIN_ON_ALL = MaskStrategy("train_on_all", prompt=1.0, trace=1.0, answer=1.0)
TRAIN_ON_COMPLETION = MaskStrategy("train_on_completion", prompt=0.0, trace=1.0, answer=1.0)
MASK_TRACE = MaskStrategy("mask_trace", prompt=0.0, trace=0.0, answer=1.0)


def weighted_trace(weight: float) -> MaskStrategy:
    return MaskStrategy(f"weighted_trace({weight:g})", prompt=0.0, trace=weight, answer=1.0)


_NAMED = {s.name: s for s in (TRAIN_ON_ALL, TRAIN_ON_COMPLETION, MASK_TRACE)}
_WEIGHTED = re.compile(r"weighted_trace\(\s*([0-9.eE+-]+)\s*\)")


def mask_strategy(spec: str | MaskStrategy) -> MaskStrategy:
    """Parse `train_on_all`, `train_on_completion`, `mask_trace` or `weighted_trace(w)`."""
    if isinstance(spec, MaskStrategy):
        return spec
    if spec in _NAMED:
        return _NAMED[spec]
    match = _WEIGHTED.fullmatch(spec.strip())
    if match:
        try:
            return weighted_trace(float(match.group(1)))
        except ValueError:
            pass
    known = ", ".join([*_NAMED, "weighted_trace(w)"])
    raise ValueError(f"unknown mask strategy {spec!r}; expected one of: {known}")
