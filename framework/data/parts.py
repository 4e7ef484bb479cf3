"""Named, disjoint sets of problems from one stream, and the trace-less rows of a hybrid reasoner's curriculum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from framework.data.datamodule import generate_splits
from framework.data.sample import Example
from framework.data.tasks.base import Task


def generate_parts(task: Task, seed: int, sizes: Mapping[str, int], *, n_test: int) -> dict[str, list[Example]]:
    """Disjoint problems for each stage of a run: `sizes` (name → count) cut in order from the training split of
    `generate_splits`, and its `test` split, all a deterministic function of `seed`."""
    splits = generate_splits(task, seed, n_train=sum(sizes.values()), n_val=0, n_test=n_test)
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name], start = splits["train"][start : start + size], start + size
    return parts | {"test": splits["test"]}


def without_trace(example: Example) -> Example:
    """A non-thinking row: no trace and no steps (the `hybrid` format gives it an empty think block)."""
    return replace(example, trace="", steps=())


def hybrid_rows(examples: Sequence[Example], non_thinking: float) -> list[Example]:
    """A hybrid reasoner's curriculum: the first `round(non_thinking · len(examples))` rows without a trace, the rest
    with theirs."""
    n = round(non_thinking * len(examples))
    return [without_trace(e) for e in examples[:n]] + list(examples[n:])
