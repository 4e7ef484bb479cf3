"""A Lightning fit that a killed process can continue exactly where it stopped.

`fit` trains a module through a `lightning.Trainer` with a CSV logger in the
cell's directory and a Lightning checkpoint (`lightning/last.ckpt`) at every
epoch boundary. Given that checkpoint, a later `fit` of the same cell resumes
from it: Lightning restores the weights, the optimiser, the schedule and the
loop counters, and `RandomState` restores the random number generators, so
the resumed fit computes what the uninterrupted one would have.

Checkpoints fall on epoch boundaries because that is where the data order is
a pure function of the saved state: a shuffling `DataLoader` draws its
permutation from the global generator when the epoch's iterator is created,
right after the restored state is in place. Mid-epoch, the iterator's position
is not in any checkpoint. Once the fit finishes its checkpoint is deleted: a
finished cell keeps its results and (if it saves one) its model, not its
optimiser state. Its `logs/metrics.csv` holds every segment's rows: the steps
a resumed fit repeats after its checkpoint appear twice, the later row being
the one the finished fit computed (`framework.report.validation_curve` keeps it).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from framework.report import write_csv

CHECKPOINT = "last.ckpt"
METRICS = "metrics.csv"
# The rows of the interrupted segments of a fit while a resumed segment runs.
INTERRUPTED = "metrics.interrupted.csv"


@dataclass(frozen=True)
class FitSettings:
    """How long a fit runs, how often it validates, and where.

    Args:
        max_steps: optimiser steps.
        max_epochs: also stop after this many epochs (None: steps alone decide).
        val_every: validate every this many steps; None: never.
        accelerator, precision: Lightning's.
        log_every_n_steps: how often training metrics reach the CSV log.
    """

    max_steps: int
    max_epochs: int | None = None
    val_every: int | None = None
    accelerator: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 10

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive number of optimiser steps, got {self.max_steps}")
        if self.val_every is not None and self.val_every < 1:
            raise ValueError(f"val_every must be positive (or None for no validation), got {self.val_every}")


@dataclass(frozen=True)
class Fitted:
    """What a fit left: its trainer, the seconds this process spent in it, and its metrics log."""

    trainer: L.Trainer
    seconds: float
    metrics_csv: Path

    @property
    def steps(self) -> int:
        return self.trainer.global_step


class RandomState(L.Callback):
    """Saves the Python, NumPy and torch generators with each checkpoint and puts them back on resume.

    Restored when the checkpoint loads, before Lightning creates the next
    epoch's data iterator, so that iterator draws the permutation the
    uninterrupted run drew.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        checkpoint["random_state"] = {  # tensors and plain numbers: Lightning loads checkpoints with weights_only
            "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["random_state"]
        random.setstate(state["python"])
        name, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpoint(L.Callback):
    """Writes `last.ckpt` after the last batch of every training epoch, atomically (a kill mid-write keeps the last).

    After the epoch's last batch, not in `on_train_epoch_end`: Lightning
    resumes a checkpoint written there by starting the next epoch (one written
    at the epoch's end resumes as if a batch were left), and creates that
    epoch's data iterator after the restored generators are in place, as the
    uninterrupted run did.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            return
        # Rows logged so far (a probe's, between Lightning's own writes) must be on disk before the checkpoint that
        # a resume starts after: the resumed fit does not log those steps again.
        for logger in trainer.loggers:
            logger.save()
        scratch = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(scratch, weights_only=False)  # optimiser, schedule and loops too: a resume needs them
        if trainer.is_global_zero:
            os.replace(scratch, self.path)
        trainer.strategy.barrier()


def fit(
    directory: Path,
    module: L.LightningModule,
    data: L.LightningDataModule,
    settings: FitSettings,
    *,
    callbacks: Sequence[L.Callback] = (),
    progress_bar: bool = True,
) -> Fitted:
    """Train `module` on `data` under `settings`, logging to `directory/logs`, resuming from its last checkpoint."""
    checkpoints = directory / "lightning"
    resume_from = checkpoints / CHECKPOINT
    logs = directory / "logs"
    if resume_from.is_file():
        _set_aside(logs)
    trainer = L.Trainer(
        max_steps=settings.max_steps,
        max_epochs=settings.max_epochs if settings.max_epochs is not None else -1,
        val_check_interval=settings.val_every,
        check_val_every_n_epoch=None if settings.val_every else 1,
        limit_val_batches=None if settings.val_every else 0,
        num_sanity_val_steps=0,
        accelerator=settings.accelerator,
        precision=settings.precision,
        logger=CSVLogger(directory, name="logs", version=""),
        callbacks=[
            *callbacks,
            RandomState(),
            EpochCheckpoint(resume_from),
        ],
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=settings.log_every_n_steps,
    )
    start = time.perf_counter()
    trainer.fit(module, data, ckpt_path=resume_from if resume_from.is_file() else None)
    seconds = time.perf_counter() - start
    shutil.rmtree(checkpoints, ignore_errors=True)
    _rejoin(logs)
    return Fitted(trainer, seconds, logs / METRICS)


def score_as_is(module: L.LightningModule, data: L.LightningDataModule, *, accelerator: str = "auto",
                precision: str = "32-true", progress_bar: bool = True) -> dict[str, float]:
    """`module`'s test metrics on `data` with no training: a checkpoint's scores before a recipe trains it."""
    trainer = L.Trainer(accelerator=accelerator, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress_bar, enable_model_summary=False)
    return trainer.test(module, data, verbose=False)[0]


@rank_zero_only
def _set_aside(logs: Path) -> None:
    """Keep an interrupted segment's log: Lightning's CSV logger deletes an existing metrics.csv when it starts."""
    rows = _rows(logs / INTERRUPTED) + _rows(logs / METRICS)
    if rows:
        write_csv(rows, logs / INTERRUPTED)
    (logs / METRICS).unlink(missing_ok=True)


@rank_zero_only
def _rejoin(logs: Path) -> None:
    """metrics.csv: the interrupted segments' rows, then the last segment's."""
    if (logs / INTERRUPTED).is_file():
        write_csv(_rows(logs / INTERRUPTED) + _rows(logs / METRICS), logs / METRICS)
        (logs / INTERRUPTED).unlink()


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
