"""What a cell of a tree-shaped run takes from the cells before it: its parent's model, and the row of its own fit.

A recipe whose cells form a tree (base → planted copy → persistence run)
saves each parent's model in its cell (`Cell.model_dir`); a child loads it
with `load_parent`, and records its fit with `fit_row` in a `fits` table that
the results rows read their times from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.experiment.fit import Fitted
from framework.experiment.run import Cell
from framework.models import Reasoner


def load_parent(directory: Path, attention: str) -> Reasoner:
    """A parent cell's reasoner, with the attention implementation asked for (a run-time choice, not saved with the
    model). It loads in eval mode, as `from_pretrained` leaves it; a regime trains it in train mode."""
    reasoner = Reasoner.from_pretrained(directory)
    reasoner.model.set_attn_implementation(attention)
    return reasoner


def fit_row(cell: Cell, fitted: Fitted) -> dict[str, Any]:
    """A fit's row of the `fits` table: the cell, its steps and its time in seconds."""
    return {"cell": cell.name, "steps": fitted.steps, "time_s": round(fitted.seconds, 1)}
