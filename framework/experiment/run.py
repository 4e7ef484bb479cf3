"""A recipe's run: its directory, its configuration, its cells, its result tables, and resuming it.

    runs/<recipe>/<timestamp>/
      config.yaml          the resolved configuration (what `--resume` compares)
      environment.yaml     per start of the run: commit, package versions, machine, seeds, command
      <table>.csv          result tables (`results.csv` first), rewritten atomically after each cell
      cells/<cell>/        one unit of work: logs/metrics.csv, model/ (if it keeps one), DONE.json

A cell is one unit of work with an identity: an arm x seed, or a stage of a
tree (a base model, a planted copy of it, a persistence run of that copy).
`Experiment.cell` runs its work once per run directory. The work returns the
rows it adds to each table; they are kept in the cell's `DONE.json`, written
last, so a cell whose marker (and model, if it keeps one) is on disk is
finished. Re-running the recipe with `resume=` that directory replays a
finished cell's rows without running it, and re-runs an unfinished one, whose
fit continues from its last Lightning checkpoint (see `fit`). Each cell seeds
every generator from its own seed before it starts, so it computes the same
whether the cells before it ran in this process or in an earlier one; a
stage of a tree starts from its parent's model on disk, never from one in
memory, for the same reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from framework.errors import ConfigError
from framework.experiment.environment import describe
from framework.experiment.fit import FitSettings, Fitted, fit, score_as_is
from framework.io import atomic_write_text
from framework.report import write_csv

Rows = dict[str, list[dict[str, Any]]]  # table name -> rows
MARKER = "DONE.json"
RESULTS = "results"
# Where a run is written is not part of what it computes: these keys of a recipe's configuration are not compared.
LOCATION_KEYS = ("out", "resume")
_CELL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*(/[A-Za-z0-9][A-Za-z0-9_.=+-]*)*")


class Cell:
    """One unit of work in a run: its directory, its model's directory, and what it recorded when it finished."""

    def __init__(self, experiment: Experiment, name: str) -> None:
        if not _CELL.fullmatch(name):
            raise ValueError(f"cell name {name!r}: use letters, digits and '_.=+-', with '/' between levels")
        self.experiment = experiment
        self.name = name
        self.directory = experiment.directory / "cells" / name

    @property
    def model_dir(self) -> Path:
        """Where a cell that keeps its model saves it (Hugging Face format), and where its children load it from."""
        return self.directory / "model"

    @property
    def done(self) -> bool:
        marker = self.directory / MARKER
        if not marker.is_file():
            return False
        return not json.loads(marker.read_text())["keeps_model"] or (self.model_dir / "config.json").is_file()

    def rows(self) -> Rows:
        """The rows this cell added to each table (a finished cell only)."""
        return json.loads((self.directory / MARKER).read_text())["rows"]

    def fit(self, module: L.LightningModule, data: L.LightningDataModule, settings: FitSettings,
            callbacks: Sequence[L.Callback] = ()) -> Fitted:
        """Train `module` in this cell (see `framework.experiment.fit.fit`), resuming an interrupted fit."""
        return fit(self.directory, module, data, settings, callbacks=callbacks,
                   progress_bar=self.experiment.progress_bar)

    def score_as_is(self, module: L.LightningModule, data: L.LightningDataModule,
                    settings: FitSettings) -> dict[str, float]:
        """`module`'s test metrics on `data` without training it, on the hardware `settings` name."""
        return score_as_is(module, data, accelerator=settings.accelerator, precision=settings.precision,
                           progress_bar=self.experiment.progress_bar)


class Experiment:
    """A recipe's run directory, created fresh or resumed.

    Args:
        recipe: names the directory (`out/<recipe>/<timestamp>/`).
        out: where runs go.
        config: the resolved configuration (YAML data), written to `config.yaml`.
        seeds: recorded with the environment of each start.
        resume: an earlier run directory of this recipe to continue; its `config.yaml` must equal `config`.
        progress_bar: show Lightning's progress bar in fits.
    """

    def __init__(self, recipe: str, out: str | Path, config: Mapping[str, Any], *, seeds: Sequence[int] = (),
                 resume: str | Path | None = None, progress_bar: bool = True) -> None:
        self.recipe = recipe
        self.config = _plain({key: value for key, value in config.items() if key not in LOCATION_KEYS})
        self.progress_bar = progress_bar
        if resume is None:
            self.directory = _new_run_directory(Path(out) / recipe, datetime.now().strftime("%Y%m%d-%H%M%S"))
            atomic_write_text(self.directory / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
        else:
            self.directory = Path(resume)
            _check_resumable(self.directory, self.config)
        starts = _read_yaml(self.directory / "environment.yaml") or []
        starts.append(describe(list(seeds)))
        atomic_write_text(self.directory / "environment.yaml", yaml.safe_dump(starts, sort_keys=False))
        self.tables: Rows = {}

    def cell(self, name: str, seed: int, work: Callable[[Cell], Rows], *, keeps_model: bool = False) -> Rows:
        """Run `work` as the cell `name` unless it already finished; either way add its rows to the tables.

        `work` gets the `Cell` (its directory, `fit`, `score_as_is`, `model_dir`) and returns
        the rows it adds per table. Every generator is seeded with `seed`
        first. With `keeps_model`, `work` must save a model to `cell.model_dir`:
        the cell counts as finished only once it is there.
        """
        cell = Cell(self, name)
        if not cell.done:
            L.seed_everything(seed, verbose=False)
            rows = work(cell)
            if keeps_model and not (cell.model_dir / "config.json").is_file():
                raise RuntimeError(f"cell {name!r} keeps a model but saved none to {cell.model_dir}")
            marker = {"cell": name, "seed": seed, "keeps_model": keeps_model, "rows": _plain(rows)}
            atomic_write_text(cell.directory / MARKER, json.dumps(marker, indent=1) + "\n")
        rows = cell.rows()
        for table, new in rows.items():
            self.tables.setdefault(table, []).extend(new)
            write_csv(self.tables[table], self.directory / f"{table}.csv")
        return rows

    def path(self, *parts: str) -> Path:
        """A path in the run directory (for reports and figures)."""
        return self.directory.joinpath(*parts)

    @staticmethod
    def evaluation_device(accelerator: str) -> torch.device:
        """Where to generate outside a Trainer: the GPU when the accelerator allows one and one exists."""
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
            return torch.device("cuda")
        return torch.device("cpu")


def _check_resumable(directory: Path, config: dict[str, Any]) -> None:
    """A run continues only under the configuration it started with: anything else would mix two experiments."""
    saved = _read_yaml(directory / "config.yaml")
    if saved is None:
        raise FileNotFoundError(f"--resume {directory}: no config.yaml there; is it a run directory of this recipe?")
    if saved != config:
        differences = sorted(_differences(saved, config))
        raise ConfigError(
            f"--resume {directory}: its config.yaml differs from the configuration given at "
            f"{', '.join(differences[:5])}{' …' if len(differences) > 5 else ''}; resume with the same settings"
        )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two YAML values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in {*a, *b} for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") or "(top level)"]


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _plain(value: Any) -> Any:
    """YAML/JSON-safe data: tuples as lists, paths as strings, tensors and NumPy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return value


def _new_run_directory(parent: Path, stamp: str) -> Path:
    """`parent/stamp`, or `stamp-2`, `stamp-3`, … when runs started in the same second took it (mkdir is atomic,
    so two runs never share one)."""
    parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        directory = parent / (stamp if number == 1 else f"{stamp}-{number}")
        try:
            directory.mkdir()
            return directory
        except FileExistsError:
            number += 1
