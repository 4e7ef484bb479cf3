"""Pipelines: stages hand their weights over, every stage is evaluated, and a crashed run resumes."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import replace

import lightning as L
import pytest
import torch

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.preferences import PreferenceDataModule
from framework.experiment import Experiment, FitSettings
from framework.models import Reasoner, build_model
from framework.pipeline import Stage, answer_accuracy, run_pipeline
from framework.regimes.base import OptimizerConfig
from framework.regimes.dpo import DPO
from framework.regimes.sft import SFT
from framework.rollout import SamplingConfig

SETTINGS = FitSettings(max_steps=3, accelerator="cpu")


class Crash(L.Callback):
    """Raises at a given training step, once: a simulated crash in the middle of a stage."""

    def __init__(self, at_step: int) -> None:
        self.at_step, self.armed = at_step, True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.armed and trainer.global_step == self.at_step:
            self.armed = False
            raise RuntimeError("simulated crash")


def _stages(directory) -> list[str]:
    """The stages recorded in a pipeline's results.csv."""
    with open(directory / "results.csv", newline="") as f:
        return [row["stage"] for row in csv.DictReader(f)]


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.fixture()
def setup(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    splits = generate_splits(addition_task, seed=0, n_train=64, n_val=0, n_test=8)
    evaluate = answer_accuracy(addition_task, splits["test"], sampling=SamplingConfig(max_new_tokens=12))
    return reasoner, splits, evaluate


def test_stages_hand_weights_over_and_are_each_evaluated(setup, addition_task, tmp_path):
    reasoner, splits, evaluate = setup
    initial = _parameters(reasoner.model)
    trained: dict[str, dict[str, torch.Tensor]] = {}
    started: dict[str, dict[str, torch.Tensor]] = {}

    def sft(reasoner: Reasoner):
        started["sft"] = _parameters(reasoner.model)
        module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=1))
        trained["sft"] = module  # its model's parameters are read after the stage has trained
        return module, ReasoningDataModule(reasoner.tokenize, splits["train"], [],
                                           pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=16)

    def dpo(reasoner: Reasoner):
        started["dpo"] = _parameters(reasoner.model)
        data = PreferenceDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=32, n_val=0, batch_size=16)
        return DPO(reasoner, addition_task, optimizer=replace(DPO.default_optimizer, lr=3e-3, warmup_steps=1)), data

    run = run_pipeline([Stage("sft", sft, SETTINGS), Stage("dpo", dpo, SETTINGS)], reasoner, tmp_path, evaluate=evaluate)

    sft_final = _parameters(trained["sft"].model)
    assert any(not torch.equal(sft_final[k], initial[k]) for k in initial)  # stage 1 trained
    for key, value in sft_final.items():  # stage 2 starts exactly where stage 1 ended
        torch.testing.assert_close(started["dpo"][key], value, rtol=0, atol=0)
    assert [row["stage"] for row in run.results] == ["sft", "dpo"]
    for row in run.results:
        assert 0.0 <= row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"] <= 1.0
        assert row["total"] == 8 and row["tokens_generated"] > 0
    assert run.directory.parent == tmp_path / "pipeline"
    assert _stages(run.directory) == ["sft", "dpo"]
    for stage in ("00-sft", "01-dpo"):
        assert (run.directory / "cells" / stage / "model" / "config.json").is_file()
        assert json.loads((run.directory / "cells" / stage / "DONE.json").read_text())["rows"]["results"][0]["stage"] == stage[3:]
    final = Reasoner.from_pretrained(run.directory / "cells" / "01-dpo" / "model")
    for key, value in _parameters(final.model).items():
        torch.testing.assert_close(_parameters(run.reasoner.model)[key], value, rtol=0, atol=0)


def test_a_crashed_pipeline_resumes_without_repeating_finished_stages(setup, addition_task, tmp_path):
    reasoner, splits, evaluate = setup
    builds: Counter[str] = Counter()
    crash = Crash(at_step=2)

    def stage(name: str, callbacks=()):
        def build(reasoner: Reasoner):
            builds[name] += 1
            module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=1))
            return module, ReasoningDataModule(reasoner.tokenize, splits["train"], [], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=16)

        return Stage(name, build, SETTINGS, callbacks)

    stages = [stage("first"), stage("second", [crash])]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(stages, reasoner, tmp_path, evaluate=evaluate)
    assert builds == {"first": 1, "second": 1}
    (directory,) = (tmp_path / "pipeline").iterdir()
    cells = directory / "cells"
    assert (cells / "00-first" / "DONE.json").is_file() and not (cells / "01-second" / "DONE.json").exists()
    first_checkpoint = (cells / "00-first" / "model" / "model.safetensors").stat().st_mtime_ns
    assert _stages(directory) == ["first"]

    run = run_pipeline(stages, reasoner, tmp_path, evaluate=evaluate, resume=directory)
    assert builds == {"first": 1, "second": 2}  # the finished stage was skipped, the crashed one re-run
    assert (cells / "00-first" / "model" / "model.safetensors").stat().st_mtime_ns == first_checkpoint
    assert [row["stage"] for row in run.results] == ["first", "second"] and _stages(directory) == ["first", "second"]

    again = run_pipeline(stages, reasoner, tmp_path, evaluate=evaluate, resume=directory)  # all done: nothing runs
    assert builds == {"first": 1, "second": 2}
    assert again.results == run.results
    for key, value in _parameters(run.reasoner.model).items():
        torch.testing.assert_close(_parameters(again.reasoner.model)[key], value, rtol=0, atol=0)


def test_bad_pipelines_are_named(setup, tmp_path):
    reasoner, _, evaluate = setup

    def build(reasoner):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="at least one stage"):
        run_pipeline([], reasoner, tmp_path, evaluate=evaluate)
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        run_pipeline([Stage("a", build, SETTINGS), Stage("a", build, SETTINGS)], reasoner, tmp_path, evaluate=evaluate)
    with pytest.raises(ValueError, match="stage 0 name 'a/b'"):
        run_pipeline([Stage("a/b", build, SETTINGS)], reasoner, tmp_path, evaluate=evaluate)
    # A run directory is one pipeline: resuming it with other stages would mix two.
    earlier = Experiment("pipeline", tmp_path, {"stages": ["sft"], "seed": 0}).directory
    with pytest.raises(ValueError, match="differs from the configuration given at stages"):
        run_pipeline([Stage("dpo", build, SETTINGS)], reasoner, tmp_path, evaluate=evaluate, resume=earlier)
