"""Multi-stage post-training: stages run in order, each starting from the previous stage's weights.

A `Stage` builds its LightningModule and DataModule from the reasoner it is
handed, and says how long it trains (`FitSettings`). `run_pipeline` runs the
stages as cells of an `Experiment` (`framework.experiment`): each one fits,
saves its model in Hugging Face format, evaluates it and records the
evaluation as its row of `results.csv`. A stage after the first starts from
its predecessor's model on disk, whether that stage ran now or in an earlier
run, so a pipeline resumed after a crash (`resume=` its directory) skips the
finished stages, continues an interrupted fit from its last checkpoint, and
computes what an uninterrupted one would.

    out/<name>/<timestamp>/
      config.yaml                    the stage names and the seed (a resumed pipeline must have the same)
      results.csv                    one row per finished stage
      cells/00-<stage>/model/        the stage's final model and tokenizer (HF format)
      cells/00-<stage>/logs/         Lightning's CSV log
      cells/00-<stage>/DONE.json     written last: the stage's row
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.experiment import Cell, Experiment, FitSettings, Rows
from framework.models.reasoner import Reasoner
from framework.regimes.evaluation import GenerationEvaluation
from framework.rollout.sampling import SamplingConfig

Builder = Callable[[Reasoner], tuple[L.LightningModule, L.LightningDataModule]]
Evaluator = Callable[[Reasoner], Mapping[str, float]]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Args:
        name: names the stage's cell and results row (letters, digits, `_.-`).
        build: makes the stage's LightningModule and DataModule from the reasoner it starts from.
        settings: how long it trains, and where.
        callbacks: extra Lightning callbacks of its fit.
    """

    name: str
    build: Builder
    settings: FitSettings
    callbacks: Sequence[L.Callback] = field(default_factory=tuple)


@dataclass(frozen=True)
class PipelineResult:
    reasoner: Reasoner  # the last stage's model, as saved
    results: list[dict[str, Any]]  # one row per stage: stage, index, the evaluation, train_time_s
    directory: Path  # the run directory (pass it as `resume=` to continue)


def run_pipeline(
    stages: Sequence[Stage],
    reasoner: Reasoner,
    out: str | Path,
    *,
    evaluate: Evaluator,
    seed: int = 0,
    name: str = "pipeline",
    resume: str | Path | None = None,
) -> PipelineResult:
    """Run `stages` in order from `reasoner` in a new run directory under `out/name/`, or continue `resume`.

    Stage i is seeded with `seed + i`, so a stage re-run after a crash starts as it did the first time.
    """
    _check_stages(stages)
    config = {"stages": [stage.name for stage in stages], "seed": seed}
    experiment = Experiment(name, out, config, seeds=[seed + i for i in range(len(stages))], resume=resume,
                            progress_bar=False)
    parent: Path | None = None  # where the next stage starts from; None: the reasoner handed in
    for index, stage in enumerate(stages):
        cell = f"{index:02d}-{stage.name}"

        def work(cell: Cell, stage: Stage = stage, index: int = index, parent: Path | None = parent) -> Rows:
            start = reasoner if parent is None else Reasoner.from_pretrained(parent)
            module, data = stage.build(start)
            fitted = cell.fit(module, data, stage.settings, stage.callbacks)
            start.save_pretrained(cell.model_dir)
            return {"results": [{"stage": stage.name, "index": index, **evaluate(start),
                                 "train_time_s": round(fitted.seconds, 2)}]}

        experiment.cell(cell, seed + index, work, keeps_model=True)
        parent = experiment.path("cells", cell, "model")
    return PipelineResult(Reasoner.from_pretrained(parent), experiment.tables["results"], experiment.directory)


def _check_stages(stages: Sequence[Stage]) -> None:
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    names = [stage.name for stage in stages]
    for index, name in enumerate(names):
        if not _NAME.fullmatch(name):
            raise ValueError(f"stage {index} name {name!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"stage names must be unique; repeated: {duplicates}")


def answer_accuracy(
    task: Task | None,
    examples: Sequence[Example],
    *,
    sampling: SamplingConfig | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> Evaluator:
    """An evaluator: generate for `examples` and score with the task's checkers (exact answer match without one).

    Returns `accuracy` with its counts and 95% Wilson interval, `step_validity` (with a task and a
    trace) and `tokens_generated` per answer. `device` defaults to the GPU when there is one.
    """
    if not examples:
        raise ValueError("answer_accuracy needs at least one example to evaluate on")
    device = torch.device(device or Experiment.evaluation_device("auto"))
    sampling = sampling or SamplingConfig()

    def evaluate(reasoner: Reasoner) -> dict[str, float]:
        reasoner.model.to(device)
        evaluation = GenerationEvaluation(task).to(device)
        for start in range(0, len(examples), batch_size):
            evaluation.update(reasoner, examples[start : start + batch_size], sampling)
        values = {key.removeprefix("eval/"): float(value) for key, value in evaluation.compute("eval").items()}
        values["correct"], values["total"] = int(values.pop("accuracy_hits")), int(values.pop("accuracy_total"))
        return values

    return evaluate
