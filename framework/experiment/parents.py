"""What a cell of a tree-shaped run takes from the cells before it, and how it trains on rows of examples.

A recipe whose cells form a tree (base → planted copy → persistence run)
saves each parent's model in its cell (`Cell.model_dir`); a child loads it
with `load_parent`, trains it with `fit_on_rows`, and records its fit with
`fit_row` in a `fits` table that the results rows read their times from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

from framework.data.datamodule import ReasoningDataModule
from framework.data.sample import Example
from framework.experiment.fit import FitSettings, Fitted
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


def fit_on_rows(cell: Cell, module: L.LightningModule, rows: Sequence[Example], batch_size: int,
                settings: FitSettings, callbacks: Sequence[L.Callback] = (), val_rows: Sequence[Example] = ()
                ) -> Fitted:
    """Fit a regime (anything with a `reasoner`) on `rows` in batches of at most `batch_size`: the data module a
    recipe's training cells share. The rows repeat for as many epochs as the steps need. `val_rows` are validated
    on every `settings.val_every` steps (none: no validation)."""
    reasoner: Reasoner = module.reasoner
    data = ReasoningDataModule(reasoner.tokenize, rows, list(val_rows), pad_token_id=reasoner.tokenizer.pad_token_id,
                               batch_size=min(batch_size, len(rows)))
    return cell.fit(module, data, settings, callbacks)
