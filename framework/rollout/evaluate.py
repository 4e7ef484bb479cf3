"""Generation over a whole set of examples: in batches of a fixed size, on one device, in eval mode, no gradients.

A recipe scores a test set, or relabels demonstrations with a model's own
traces, outside a Trainer: with more examples than fit in one batch, and on
the device it evaluates on (`Experiment.evaluation_device`). These two
functions are that loop, once; the batch size bounds memory and leaves every
row's result unchanged (a batched row decodes as it would alone, see `sample`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from framework.data.sample import Example
from framework.eval_mode import eval_mode
from framework.models.formats import Generation
from framework.models.reasoner import Reasoner
from framework.rollout.generate import generate, rollout_latent
from framework.rollout.latent import LatentRollout
from framework.rollout.sampling import SamplingConfig


@torch.no_grad()
def generate_batched(
    reasoner: Reasoner,
    examples: Sequence[Example],
    sampling: SamplingConfig,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
) -> list[Generation]:
    """`generate` for every example, `batch_size` at a time; on `device` if given (the reasoner stays there)."""
    _place(reasoner, device)
    with eval_mode(reasoner.model):
        return [generation for batch in _batches(examples, batch_size) for generation in
                generate(reasoner, batch, sampling)]


@torch.no_grad()
def rollout_latent_batched(
    reasoner: Reasoner,
    examples: Sequence[Example],
    sampling: SamplingConfig,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    return_thoughts: bool = False,
) -> LatentRollout:
    """`rollout_latent` for every example, `batch_size` at a time, joined into one rollout (thoughts if asked)."""
    _place(reasoner, device)
    with eval_mode(reasoner.model):
        parts = [rollout_latent(reasoner, batch, sampling, return_thoughts=return_thoughts)
                 for batch in _batches(examples, batch_size)]
    return LatentRollout(
        completions=[row for part in parts for row in part.completions],
        num_thoughts=[k for part in parts for k in part.num_thoughts],
        num_tokens=[k for part in parts for k in part.num_tokens],
        thoughts=[row for part in parts for row in part.thoughts or ()] if return_thoughts else None,
    )


def _batches(examples: Sequence[Example], batch_size: int) -> list[Sequence[Example]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [examples[start:start + batch_size] for start in range(0, len(examples), batch_size)]


def _place(reasoner: Reasoner, device: torch.device | str | None) -> None:
    """Move the model, and a latent reasoner's thought projection, which is not part of it."""
    if device is None:
        return
    reasoner.model.to(device)
    if reasoner.projection is not None:
        reasoner.projection.to(device)
