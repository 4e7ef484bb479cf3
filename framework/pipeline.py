"""Multi-stage post-training: stages run in order, each starting from the previous stage's weights.

A `Stage` builds its LightningModule and DataModule from the reasoner it is
handed, and says how to configure the Trainer. `run_pipeline` runs the stages
in order, saves each stage's model in Hugging Face format, evaluates it, and
appends the evaluation to the pipeline's results. It is resumable: a stage
whose checkpoint and completion marker both exist is skipped, and the next stage
starts from that checkpoint, so re-running after a crash finishes the work
without repeating it. Every stage after the first starts from its
predecessor's checkpoint on disk, whether that stage ran now or in an earlier
run, so a resumed pipeline computes what an uninterrupted one would.

    directory/
      00-<stage>/checkpoint/   the stage's final model and tokenizer (HF format)
      00-<stage>/logs/         Lightning's CSV logs
      00-<stage>/COMPLETE      the marker, written last: the stage's name, time and evaluation
      results.json, results.csv  one row per finished stage
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.io import atomic_write_text
from framework.models.reasoner import Reasoner
from framework.regimes.evaluation import GenerationEvaluation
from framework.report import write_csv
from framework.rollout.sampling import SamplingConfig

Builder = Callable[[Reasoner], tuple[L.LightningModule, L.LightningDataModule]]
Evaluator = Callable[[Reasoner], Mapping[str, float]]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MARKER = "COMPLETE"


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Args:
        name: names the stage's directory and results row (letters, digits, `_.-`).
        build: makes the stage's LightningModule and DataModule from the reasoner it starts from.
        trainer: keyword arguments of `lightning.Trainer` (e.g. `{"max_steps": 200}`); they override
            the pipeline's defaults (a CSV logger in the stage directory, no Lightning checkpoints).
    """

    name: str
    build: Builder
    trainer: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    reasoner: Reasoner  # the last stage's model
    results: list[dict[str, Any]]  # one row per stage: stage, index, the evaluation, train_time_s


def run_pipeline(
    stages: Sequence[Stage], reasoner: Reasoner, directory: str | Path, *, evaluate: Evaluator, seed: int = 0
) -> PipelineResult:
    """Run `stages` in order from `reasoner`, skipping those an earlier run of this pipeline completed.

    Stage i is seeded with `seed + i`, so a stage re-run after a crash starts as it did the first time.
    """
    directory = Path(directory)
    _check_stages(stages, directory)
    results = _read_results(directory)
    checkpoint: Path | None = None  # where the next stage starts from; None: the reasoner handed in
    for index, stage in enumerate(stages):
        stage_dir = directory / f"{index:02d}-{stage.name}"
        ran_last = not _completed(stage_dir)
        if not ran_last:
            checkpoint = stage_dir / "checkpoint"
            continue
        if checkpoint is not None:
            reasoner = Reasoner.from_pretrained(checkpoint)
        L.seed_everything(seed + index, verbose=False)
        module, data = stage.build(reasoner)
        trainer_options = {
            "default_root_dir": stage_dir,
            "logger": CSVLogger(stage_dir, name="logs", version=""),
            "enable_checkpointing": False,
            **stage.trainer,
        }
        start = time.perf_counter()
        L.Trainer(**trainer_options).fit(module, data)
        train_time = time.perf_counter() - start
        checkpoint = stage_dir / "checkpoint"
        reasoner.save_pretrained(checkpoint)
        row = {"stage": stage.name, "index": index, **evaluate(reasoner), "train_time_s": round(train_time, 2)}
        results = [r for r in results if r["index"] != index] + [row]  # a crash after writing may have left one
        _write_results(results, directory)
        marker = {"stage": stage.name, "index": index, "finished": datetime.now(timezone.utc).isoformat(), **row}
        atomic_write_text(stage_dir / MARKER, json.dumps(marker, indent=2) + "\n")
    if not ran_last:  # the last stage finished in an earlier run: its model is only on disk
        reasoner = Reasoner.from_pretrained(checkpoint)
    return PipelineResult(reasoner, sorted(results, key=lambda r: r["index"]))


def _completed(stage_dir: Path) -> bool:
    """A stage is done when its marker (written last) and its checkpoint are both there."""
    return (stage_dir / MARKER).is_file() and (stage_dir / "checkpoint" / "config.json").is_file()


def _check_stages(stages: Sequence[Stage], directory: Path) -> None:
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    names = [stage.name for stage in stages]
    for index, name in enumerate(names):
        if not _NAME.fullmatch(name):
            raise ValueError(f"stage {index} name {name!r} must be letters, digits, '_', '.' or '-' (it names a directory)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"stage names must be unique; repeated: {duplicates}")
    # A directory is one pipeline: a finished stage of another one at the same position would be skipped silently.
    for marker in directory.glob(f"*/{MARKER}"):
        done = json.loads(marker.read_text())
        if done["index"] < len(stages) and done["stage"] != names[done["index"]]:
            raise ValueError(
                f"{directory} holds a completed stage {done['index']} {done['stage']!r}, but this pipeline's stage "
                f"{done['index']} is {names[done['index']]!r}; use a new directory for a different pipeline"
            )


def _read_results(directory: Path) -> list[dict[str, Any]]:
    path = directory / "results.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _write_results(results: list[dict[str, Any]], directory: Path) -> None:
    results = sorted(results, key=lambda r: r["index"])
    atomic_write_text(directory / "results.json", json.dumps(results, indent=2) + "\n")
    write_csv(results, directory / "results.csv")


def answer_accuracy(
    task: Task | None,
    examples: Sequence[Example],
    *,
    sampling: SamplingConfig = SamplingConfig(),
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> Evaluator:
    """An evaluator: generate for `examples` and score with the task's checkers (exact answer match without one).

    Returns `accuracy` with its counts and 95% Wilson interval, `step_validity` (with a task and a
    trace) and `tokens_generated` per answer. `device` defaults to CUDA when there is one.
    """
    if not examples:
        raise ValueError("answer_accuracy needs at least one example to evaluate on")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def evaluate(reasoner: Reasoner) -> dict[str, float]:
        reasoner.model.to(device)
        evaluation = GenerationEvaluation(task).to(device)
        for start in range(0, len(examples), batch_size):
            evaluation.update(reasoner, examples[start : start + batch_size], sampling)
        values = {key.removeprefix("eval/"): float(value) for key, value in evaluation.compute("eval").items()}
        values["correct"], values["total"] = int(values.pop("accuracy_hits")), int(values.pop("accuracy_total"))
        return values

    return evaluate
