"""Generation over a whole set of examples: in batches of a fixed size, on one device, in eval mode, no gradients.

A recipe scores a test set, or relabels demonstrations with a model's own
traces, outside a Trainer: with more examples than fit in one batch, and on
the device it evaluates on (`Experiment.evaluation_device`). These two
functions are that loop, once. Each prompt is rendered to ids once; the
batches group prompts of similar length (so little of a batch is padding)
and the results come back in the examples' order. The batch size bounds
memory; a row's greedy result does not depend on it up to float32 ties (a
batched row decodes as it would alone, see `sample`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from framework.data.sample import Example
from framework.eval_mode import eval_mode
from framework.models.formats import Generation
from framework.models.reasoner import Reasoner
from framework.rollout.generate import generate_from_ids, rollout_latent_from_ids
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
    prompts = [reasoner.prompt_ids(example) for example in examples]
    generations: dict[int, Generation] = {}
    with eval_mode(reasoner.model):
        for rows in _batches_by_length(prompts, batch_size):
            generations.update(zip(rows, generate_from_ids(reasoner, [prompts[r] for r in rows], sampling)))
    return [generations[row] for row in range(len(prompts))]


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
    prompts = [reasoner.prompt_ids(example) for example in examples]
    parts: dict[int, tuple[list[int], int, torch.Tensor | None]] = {}  # row: completion, thoughts' count, thoughts
    with eval_mode(reasoner.model):
        for rows in _batches_by_length(prompts, batch_size):
            part = rollout_latent_from_ids(reasoner, [prompts[r] for r in rows], sampling,
                                           return_thoughts=return_thoughts)
            thoughts = part.thoughts or [None] * len(rows)
            parts.update(zip(rows, zip(part.completions, part.num_thoughts, thoughts)))
    ordered = [parts[row] for row in range(len(prompts))]
    return LatentRollout(
        completions=[completion for completion, _, _ in ordered],
        num_thoughts=[k for _, k, _ in ordered],
        num_tokens=[len(completion) for completion, _, _ in ordered],
        thoughts=[thoughts for _, _, thoughts in ordered] if return_thoughts else None,
    )


def _batches_by_length(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Row indices in batches of `batch_size`, the prompts sorted by length (ties in their order)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda row: len(prompts[row]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _place(reasoner: Reasoner, device: torch.device | str | None) -> None:
    """Move the model, and a latent reasoner's thought projection, which is not part of it."""
    if device is None:
        return
    reasoner.model.to(device)
    if reasoner.projection is not None:
        reasoner.projection.to(device)
