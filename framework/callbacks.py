"""Lightning callbacks that the regimes share."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import lightning as L
import torch

from framework.eval_mode import eval_mode


class HuggingFaceCheckpoint(L.Callback):
    """Save the trained reasoner in Hugging Face format when training ends.

    The directory loads back with `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` (or `Reasoner.from_pretrained`), so a run
    can be handed to any other tool. Written atomically: a crash mid-save
    leaves the previous checkpoint in place. Expects the LightningModule to
    have a `reasoner` attribute, as every regime here does.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.reasoner.save_pretrained(self.dirpath)


class ProbeEvery(L.Callback):
    """Measure the model before training, every `every` optimizer steps, and at the last step; log `probe/<name>`.

    `measure(module)` returns the values to log (e.g. `Proportion.columns`
    of rates measured on fixed problems, so a curve shows the model changing
    rather than sampling noise). It runs in eval mode, without gradients.
    The points go to the trainer's logger, not to memory: a fit resumed from
    its last checkpoint keeps the points logged before it, and
    `framework.report.logged_rows(metrics_csv, "probe/")` reads them all back.
    """

    def __init__(self, measure: Callable[[L.LightningModule], Mapping[str, float]], every: int,
                 prefix: str = "probe/") -> None:
        if every <= 0:
            raise ValueError(f"ProbeEvery: every must be a positive number of steps, got {every}")
        self.measure = measure
        self.every = every
        self.prefix = prefix
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed fit probed its start the first time
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        step = trainer.global_step
        # Under gradient accumulation several batches end at the same optimizer step: probe it once.
        if step != self._last_step and (step % self.every == 0 or step >= trainer.max_steps > 0):
            self._probe(trainer, pl_module)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        with eval_mode(pl_module), torch.no_grad():
            values = dict(self.measure(pl_module))
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"{self.prefix}{key}": value for key, value in values.items()},
                                       step=trainer.global_step)
