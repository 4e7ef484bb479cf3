"""The first recipe end to end on a tiny budget, and its command line."""

from __future__ import annotations

import csv

import pytest
import yaml

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
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and int(row["total"]) == 6 and int(row["steps"]) == 4
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 4 and config["task"]["n_train"] == 64  # flags beat the preset
    assert config["task"]["options"] == {"digits_a": 2, "digits_b": 2}  # the preset beats main's defaults
    report = (run_dir / "report.md").read_text()
    assert "| cot | 2 |" in report and "| none | 2 |" in report
    assert (run_dir / "accuracy_vs_step.png").stat().st_size > 1000


def test_latent_arms_report_their_curriculum_stages(tmp_path):
    run_dir = run(reasoning_modes.main, "reasoning_modes",
                  [*TINY, "--out", str(tmp_path), "--arms", "[latent, latent_no_curriculum, pause_as_thought]",
                   "--model.attention", "thoughtlab_decode"])
    with open(run_dir / "results.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"latent", "latent_no_curriculum", "pause_as_thought"}
    # Continuous thoughts count as generated tokens (Coconut's convention): 2 thoughts + at least `</think>` and EOS.
    assert float(rows["latent"]["tokens_generated"]) >= 4
    with open(next((run_dir / "logs" / "latent").glob("seed0/metrics.csv"))) as f:
        stages = [float(r["val/stage"]) for r in csv.DictReader(f) if r.get("val/stage")]
    assert stages == [1, 3]  # 4 steps = 4 stages (0, 1, 2, final) of one step; validated after steps 2 and 4
    assert (run_dir / "accuracy_vs_stage.png").stat().st_size > 1000
    report = (run_dir / "report.md").read_text()
    assert "| latent | 1 |" in report and "97.0" in report  # beside Coconut's published number


def test_unknown_preset_task_and_arm_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown preset 'huge'"):
        run(reasoning_modes.main, "reasoning_modes", ["--preset", "huge"])
    with pytest.raises(ValueError, match="unknown task 'sudoku'"):
        run(reasoning_modes.main, "reasoning_modes", [*TINY, "--out", str(tmp_path), "--task.name", "sudoku"])
    with pytest.raises(ValueError, match="unknown arm 'coconut'"):
        reasoning_modes.main(out=tmp_path, arms=["coconut"])
    with pytest.raises(ValueError, match="cannot hold the latent curriculum's 5 stages"):
        reasoning_modes.main(out=tmp_path, arms=["latent"], train=reasoning_modes.TrainConfig(max_steps=4),
                             latent=reasoning_modes.LatentArmConfig(max_stage=3))
