"""The experiment runtime: cells run once and replay on resume, fits continue exactly, configs must match."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import lightning as L
import pytest
import torch
import yaml

from framework.callbacks import ProbeEvery
from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.experiment import Experiment, FitSettings
from framework.experiment import run as run_module
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes import SFT, LatentSFT, OptimizerConfig
from framework.report import logged_rows

SETTINGS = FitSettings(max_steps=12, val_every=None, accelerator="cpu", log_every_n_steps=1)


class _Killed(Exception):
    """Stands in for SIGKILL: the process stops mid-epoch, after the previous epoch's checkpoint."""


class _KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _Killed


def _module_and_data(word_tokenizer, addition_task):
    """A fresh model, its SFT module and data: 20 rows in batches of 8, so an epoch is 3 steps (the last one short)."""
    L.seed_everything(0, verbose=False)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    splits = generate_splits(addition_task, 0, n_train=20, n_val=0, n_test=0)
    data = ReasoningDataModule(reasoner.tokenize, splits["train"], [], pad_token_id=word_tokenizer.pad_token_id, batch_size=8)
    return SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2)), data


def _weights(module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


def _fit_cell(experiment, name, module, data, callbacks=(), settings=SETTINGS):
    """Fit `module` as the cell `name` (which records no rows); the `Fitted`, or None when the cell had finished."""
    fitted = {}
    experiment.cell(name, 0, lambda cell: (fitted.setdefault("fit", cell.fit(module, data, settings, callbacks)), {})[1])
    return fitted.get("fit")


def test_a_fit_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, word_tokenizer, addition_task):
    experiment = Experiment("demo", tmp_path, {"a": 1}, progress_bar=False)
    module, data = _module_and_data(word_tokenizer, addition_task)
    _fit_cell(experiment, "straight", module, data)
    straight = _weights(module)

    module, data = _module_and_data(word_tokenizer, addition_task)
    with pytest.raises(_Killed):
        _fit_cell(experiment, "killed", module, data, [_KillAt(8)])
    assert (experiment.path("cells", "killed", "lightning", "last.ckpt")).is_file()
    assert any(not torch.equal(value, straight[name]) for name, value in _weights(module).items())  # it stopped early

    module, data = _module_and_data(word_tokenizer, addition_task)  # a new process: fresh weights, fresh generators
    torch.manual_seed(12345)  # whatever state the generators are in, the checkpoint's is restored
    assert _fit_cell(experiment, "killed", module, data).steps == SETTINGS.max_steps
    resumed = _weights(module)
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    assert not experiment.path("cells", "killed", "lightning").exists()  # a finished fit drops its checkpoint


def _latent_module_and_data(word_tokenizer, addition_task):
    """A latent reasoner whose curriculum moves a stage per epoch: stage changes fall right after a checkpoint."""
    L.seed_everything(0, verbose=False)
    latent = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=addition_task.step_separator)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "latent", latent=latent)
    splits = generate_splits(addition_task, 0, n_train=20, n_val=0, n_test=0)
    data = ReasoningDataModule(reasoner.tokenize, splits["train"], [], pad_token_id=word_tokenizer.pad_token_id,
                               batch_size=8)
    return LatentSFT(reasoner, addition_task, epochs_per_stage=1, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=2)), data


def test_a_resumed_curriculum_still_resets_the_optimizer_at_the_next_stage(tmp_path, word_tokenizer, addition_task):
    experiment = Experiment("demo", tmp_path, {}, progress_bar=False)
    module, data = _latent_module_and_data(word_tokenizer, addition_task)
    _fit_cell(experiment, "straight", module, data)
    straight = _weights(module)
    module, data = _latent_module_and_data(word_tokenizer, addition_task)
    with pytest.raises(_Killed):
        _fit_cell(experiment, "killed", module, data, [_KillAt(4)])
    module, data = _latent_module_and_data(word_tokenizer, addition_task)
    _fit_cell(experiment, "killed", module, data)
    for name, value in _weights(module).items():
        torch.testing.assert_close(value, straight[name], rtol=0, atol=0, msg=name)


def test_a_finished_cell_replays_its_rows_without_running(tmp_path):
    config = {"seeds": [0, 1], "train": {"max_steps": 5}, "out": str(tmp_path)}
    first = Experiment("demo", tmp_path, config, seeds=[0, 1], progress_bar=False)
    calls = []

    def work(name):
        def run(cell):
            calls.append(name)
            return {"results": [{"arm": name, "value": torch.rand(()).item()}], "curve": [{"arm": name, "step": 1}]}
        return run

    rows = [first.cell(name, 7, work(name)) for name in ("a", "b")]
    assert calls == ["a", "b"]
    assert rows[0]["results"][0]["value"] == rows[1]["results"][0]["value"]  # each cell seeded from its own seed
    written = (first.directory / "results.csv").read_text()

    # Resume: another `out` is only where the run is written, not what it computes.
    again = Experiment("demo", tmp_path, {**config, "out": "elsewhere"}, seeds=[0, 1], resume=first.directory,
                       progress_bar=False)
    replayed = [again.cell(name, 7, work(name)) for name in ("a", "b")]
    assert calls == ["a", "b"] and replayed == rows
    assert (first.directory / "results.csv").read_text() == written
    assert (first.directory / "curve.csv").is_file()
    starts = yaml.safe_load((first.directory / "environment.yaml").read_text())
    assert len(starts) == 2 and starts[0]["seeds"] == [0, 1] and "torch" in starts[0]["packages"]


def test_a_cell_that_keeps_a_model_is_unfinished_until_the_model_is_saved(tmp_path):
    experiment = Experiment("demo", tmp_path, {}, progress_bar=False)
    with pytest.raises(RuntimeError, match="saved none"):
        experiment.cell("base/seed0", 0, lambda cell: {"results": []}, keeps_model=True)
    assert not experiment.path("cells", "base", "seed0", "DONE.json").exists()


def test_runs_started_in_the_same_second_get_a_directory_each(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(run_module, "datetime", Frozen)
    runs = [Experiment("demo", tmp_path, {"n": n}, progress_bar=False) for n in range(3)]
    assert [run.directory.name for run in runs] == ["20260102-030405", "20260102-030405-2", "20260102-030405-3"]
    assert [yaml.safe_load((run.directory / "config.yaml").read_text()) for run in runs] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_resume_refuses_another_configuration_and_names_where_it_differs(tmp_path):
    first = Experiment("demo", tmp_path, {"train": {"max_steps": 5, "lr": 0.1}}, progress_bar=False)
    with pytest.raises(ValueError, match=r"differs .* at train\.max_steps"):
        Experiment("demo", tmp_path, {"train": {"max_steps": 6, "lr": 0.1}}, resume=first.directory)
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        Experiment("demo", tmp_path, {}, resume=tmp_path / "nowhere")


def test_bad_names_and_settings_are_refused(tmp_path):
    experiment = Experiment("demo", tmp_path, {}, progress_bar=False)
    with pytest.raises(ValueError, match="cell name"):
        experiment.cell("../escape", 0, lambda cell: {})
    with pytest.raises(ValueError, match="max_steps must be a positive"):
        FitSettings(max_steps=-5)


# Lightning writes the CSV log when it logs training metrics; a probe between those writes must not wait for one.
RARE_LOGS = dataclasses.replace(SETTINGS, log_every_n_steps=50)


class _ProbesOnDisk(L.Callback):
    """The probe steps in the metrics file on disk when training reaches `step`."""

    def __init__(self, metrics_csv, step: int) -> None:
        self.metrics_csv, self.step, self.steps = metrics_csv, step, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.steps = [point["step"] for point in logged_rows(self.metrics_csv, "probe/")]


def test_probe_points_survive_a_resume_and_read_back_once_per_step(tmp_path, word_tokenizer, addition_task):
    """ProbeEvery logs at step 0, every 3 steps and the last; a fit killed after an epoch checkpoint (step 6, where
    it also probed) and resumed from there has the same points: none was still in the logger's buffer."""

    def measure(module):
        return {"weight_norm": float(module.reasoner.model.get_input_embeddings().weight.norm())}

    experiment = Experiment("demo", tmp_path, {}, progress_bar=False)
    module, data = _module_and_data(word_tokenizer, addition_task)
    _fit_cell(experiment, "straight", module, data, [ProbeEvery(measure, every=3)], RARE_LOGS)
    module, data = _module_and_data(word_tokenizer, addition_task)
    on_disk = _ProbesOnDisk(experiment.directory / "cells" / "killed" / "logs" / "metrics.csv", step=7)
    with pytest.raises(_Killed):
        _fit_cell(experiment, "killed", module, data, [ProbeEvery(measure, every=3), on_disk, _KillAt(7)], RARE_LOGS)
    assert on_disk.steps == [0, 3, 6]  # what a SIGKILL at step 7 would leave: an exception lets Lightning flush
    module, data = _module_and_data(word_tokenizer, addition_task)
    _fit_cell(experiment, "killed", module, data, [ProbeEvery(measure, every=3)], RARE_LOGS)

    straight, resumed = (logged_rows(experiment.directory / "cells" / name / "logs" / "metrics.csv", "probe/")
                         for name in ("straight", "killed"))
    assert [point["step"] for point in straight] == [0, 3, 6, 9, 12]
    assert [point["step"] for point in resumed] == [0, 3, 6, 9, 12]
    assert straight[0]["weight_norm"] != straight[-1]["weight_norm"]  # the probe sees training
    for a, b in zip(straight, resumed):
        assert b["weight_norm"] == pytest.approx(a["weight_norm"], rel=1e-6)
