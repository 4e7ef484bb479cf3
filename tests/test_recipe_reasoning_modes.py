"""The first recipe end to end on a tiny budget, its command line, and resuming a killed run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from _recipe_runs import finish, kill_at, start, timeless_rows

from framework.data.datamodule import generate_splits
from framework.data.tasks import make_task
from framework.data.tokenizer import build_word_tokenizer
from framework.models import Reasoner, build_model
from framework.report import validation_curve
from framework.rollout import SamplingConfig, generate_batched
from recipes import reasoning_modes
from recipes.cli import run

TINY = [
    "--preset", "smoke",
    "--train.max_steps", "4", "--train.val_every", "2", "--train.max_new_tokens", "12",
    "--task.n_train", "64", "--task.n_val", "4", "--task.n_test", "6",
]


def test_smoke_run_writes_config_results_report_and_figure(tmp_path):
    run_dir = run(reasoning_modes.main, "reasoning_modes", [*TINY, "--out", str(tmp_path), "--seeds", "[0, 1]", "--arms", "[cot, none]"])
    assert run_dir.parent == tmp_path / "reasoning_modes"
    with open(run_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"]) for r in rows] == [("cot", "0"), ("none", "0"), ("cot", "1"), ("none", "1")]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and int(row["accuracy_total"]) == 6 and int(row["steps"]) == 4
        closed = float(row["trace_closed"])  # only a written trace can close
        assert 0.0 <= closed <= 1.0 if row["arm"] == "cot" else math.isnan(closed)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 4 and config["task"]["n_train"] == 64  # flags beat the preset
    assert config["task"]["options"] == {"n_moves": 7, "rule": "distance"}  # the preset sets the task
    report = (run_dir / "report.md").read_text()
    assert "| cot | 2 |" in report and "| none | 2 |" in report
    # The report opens with cot vs none per seed, then the control they are read against.
    assert report.index("## With a visible trace vs without one") < report.index("| arm | seeds |")
    assert report.count(" | +") + report.count(" | -") >= 2  # one signed difference per seed
    assert "Always giving the commonest training answer (`" in report
    assert (run_dir / "accuracy_vs_step.png").stat().st_size > 1000


def test_latent_arms_report_their_curriculum_stages(tmp_path):
    run_dir = run(reasoning_modes.main, "reasoning_modes",
                  [*TINY, "--out", str(tmp_path), "--arms", "[latent, latent_no_curriculum, pause_as_thought]",
                   "--model.attention", "thoughtlab_decode"])
    with open(run_dir / "results.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"latent", "latent_no_curriculum", "pause_as_thought"}
    # Continuous thoughts count as generated tokens (Coconut's convention): 2 thoughts + at least the token that ends
    # the generation.
    assert float(rows["latent"]["tokens_generated"]) >= 3
    stages = [stage for stage, _ in validation_curve(run_dir / "cells" / "latent" / "seed0" / "logs" / "metrics.csv",
                                                      x="val/stage")]
    assert stages == [1, 3]  # 4 steps = 4 stages (0, 1, 2, final) of one step; validated after steps 2 and 4
    assert (run_dir / "accuracy_vs_stage.png").stat().st_size > 1000
    report = (run_dir / "report.md").read_text()
    assert "| latent | 1 |" in report and "97.0" in report  # beside Coconut's published number


def test_a_checkpoint_is_scored_as_it_is_before_training_in_each_written_format(tmp_path):
    task = make_task("state_chain", n_moves=7, rule="distance")
    tokenizer = build_word_tokenizer(task.vocabulary())
    build_model("llama", "1m", tokenizer, seed=3).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    run_dir = run(reasoning_modes.main, "reasoning_modes",
                  [*TINY, "--out", str(tmp_path / "runs"), "--arms", "[cot, none, latent]",
                   "--model.checkpoint", str(tmp_path / "checkpoint")])
    with open(run_dir / "untrained.csv") as f:
        untrained = {row["arm"]: row for row in csv.DictReader(f)}
    assert set(untrained) == {"cot", "none"}  # the written formats; a latent arm has no thought to read untrained
    assert all(int(row["steps"]) == 0 and int(row["accuracy_total"]) == 6 for row in untrained.values())
    # The same checkpoint decoded greedily outside the recipe writes as many tokens and gets as many answers right,
    # so the row is the checkpoint's, untrained.
    test = generate_splits(task, 0, n_train=64, n_val=4, n_test=6)["test"]
    for arm in ("cot", "none"):
        reasoner = Reasoner.from_pretrained(tmp_path / "checkpoint", arm)
        generations = generate_batched(reasoner, test, SamplingConfig(max_new_tokens=12), batch_size=6)
        hits = sum(task.check_answer(example, generation.answer) for example, generation in zip(test, generations))
        assert int(untrained[arm]["accuracy_hits"]) == hits
        tokens = sum(generation.num_tokens for generation in generations) / len(test)
        assert float(untrained[arm]["tokens_generated"]) == pytest.approx(tokens)
    report = (run_dir / "report.md").read_text()
    assert report.index("## The checkpoint before training") < report.index("| arm | seeds |")
    assert "| cot | " in report.split("## The checkpoint before training")[1].split("\n\n")[2]


@pytest.mark.parametrize(("flags", "message"), [
    (["--preset", "huge"], "--preset huge: unknown for recipe 'reasoning_modes'"),
    (["--task.name", "sudoku"], "unknown task 'sudoku'; known tasks"),
    (["--train.max_steps", "-5"], "train.max_steps must be positive, got -5"),
    (["--model.rendering", "chat"], "model.rendering=chat needs model.checkpoint"),
    (["--train.batch_size", "0"], "train.batch_size must be positive, got 0"),
    (["--arms", "[cot, coconut]"], 'Parser key "arms"'),
    (["--nonsense", "1"], "unrecognized arguments: --nonsense 1"),
    (["--model.checkpoint", "/nowhere/model"], "checkpoint directory not found: /nowhere/model"),
    (["--resume", "/nowhere/run"], "--resume /nowhere/run: no config.yaml there"),
    (["--task.name", "addition_chain", "--task.options", "{n_terms: 2, max_operand: 3}"],
     "task 'addition_chain' yielded only 16 distinct problems"),
])
def test_a_user_mistake_exits_with_one_line_that_names_it(tmp_path, flags, message):
    with pytest.raises(SystemExit) as exited:
        run(reasoning_modes.main, "reasoning_modes", [*TINY, "--out", str(tmp_path / "bad"), *flags])
    assert str(exited.value.code).startswith("python -m recipes.reasoning_modes: error: ")
    assert message in str(exited.value.code) and "\n" not in str(exited.value.code)
    assert not (tmp_path / "bad").exists()  # refused before a run directory or a fit


def test_impossible_settings_are_config_errors_when_main_is_called_directly(tmp_path):
    with pytest.raises(ValueError, match="unknown arm 'coconut'"):
        reasoning_modes.main(out=tmp_path, arms=["coconut"])
    with pytest.raises(ValueError, match="cannot hold the latent curriculum's 5 stages"):
        reasoning_modes.main(out=tmp_path, arms=["latent"], train=reasoning_modes.TrainConfig(max_steps=4),
                             latent=reasoning_modes.LatentCurriculum(max_stage=3))


# Two cells; 32 problems in batches of 16 make two-step epochs, so the second cell checkpoints at steps 2, 4, …, 10.
RESUMABLE = [
    "--preset", "smoke", "--arms", "[cot, latent]",
    "--train.max_steps", "12", "--train.val_every", "6", "--train.batch_size", "16", "--train.max_new_tokens", "12",
    "--task.n_train", "32", "--task.n_val", "4", "--task.n_test", "6",
]


def test_a_run_killed_mid_fit_resumes_to_the_uninterrupted_results_and_only_under_its_configuration(tmp_path):
    straight, killed = (start("reasoning_modes", tmp_path / name, *RESUMABLE) for name in ("straight", "killed"))
    checkpoint = kill_at(killed, tmp_path / "killed", "*/*/cells/latent/seed0/lightning/last.ckpt")
    run_dir = checkpoint.parents[4]
    assert (run_dir / "cells" / "cot" / "seed0" / "DONE.json").is_file()
    assert not (run_dir / "cells" / "latent" / "seed0" / "DONE.json").exists()

    finish(start("reasoning_modes", tmp_path / "killed", *RESUMABLE, "--resume", str(run_dir)))
    finish(straight)
    straight_dir = next((tmp_path / "straight" / "reasoning_modes").iterdir())
    assert timeless_rows(run_dir / "results.csv") == timeless_rows(straight_dir / "results.csv")
    assert len(timeless_rows(run_dir / "results.csv")) == 2
    log = Path("cells", "latent", "seed0", "logs", "metrics.csv")
    assert validation_curve(run_dir / log) == validation_curve(straight_dir / log) != []

    with pytest.raises(SystemExit, match=r"differs from the configuration given at train\.lr;") as refused:
        run(reasoning_modes.main, "reasoning_modes",
            [*RESUMABLE, "--out", str(tmp_path), "--resume", str(run_dir), "--train.lr", "0.01"])
    assert "\n" not in str(refused.value.code)
