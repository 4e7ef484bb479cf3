"""The obfuscation recipe end to end on a tiny budget, resuming it, and its errors on bad input."""

from __future__ import annotations

import csv
import math

import pytest
from _recipe_runs import refuse_to_build

import recipes.answer_key
from framework.data.tokenizer import build_word_tokenizer
from framework.models import build_model
from framework.reports.answer_key import MONITORS
from recipes import obfuscation
from recipes.cli import run

TINY = [
    "--preset", "smoke", "--seeds", "[0]",
    "--task.n_test", "16", "--task.n_calibration", "16",
    "--base.rows", "32", "--base.max_steps", "3", "--base.batch_size", "8",
    "--controls.rows", "8", "--controls.max_steps", "2", "--controls.batch_size", "4",
    "--monitors.classifier_rows", "8", "--monitors.classifier_epochs", "1",
    "--grpo.lambdas", "[0, 1.5]", "--grpo.rows", "8", "--grpo.max_steps", "2", "--grpo.batch_size", "2",
    "--grpo.num_generations", "2", "--grpo.probe_every", "1", "--grpo.probe_size", "3",
    "--evaluation.max_new_tokens", "8",
]
ARMS = ["base", "control: open", "control: clean", "control: hidden", "grpo λ=0", "grpo λ=1.5"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _count(row, name):
    return int(float(row[f"{name}_hits"])), int(float(row[f"{name}_total"]))


def test_tiny_run_writes_every_monitors_rates_per_arm_and_lambda_and_resumes(tmp_path):
    run_dir = run(obfuscation.main, "obfuscation", [*TINY, "--out", str(tmp_path)])
    for name in ("config.yaml", "results.csv", "report.md", "probes.csv", "episodes.csv", "monitors.csv",
                 "loophole_use_vs_step.png", "mirror_use_vs_step.png", "flagged_use_trace_keyword_vs_step.png"):
        assert (run_dir / name).is_file(), name
    rows = _read(run_dir / "results.csv")
    assert [r["arm"] for r in rows] == ARMS
    assert [r["lambda"] for r in rows] == ["", "", "", "", "0.0", "1.5"]
    episodes = _read(run_dir / "episodes.csv")
    wrong_keys = len(episodes) // len(ARMS)
    assert wrong_keys > 0 and all(e["wrong_key"] == "True" for e in episodes)  # every rate on wrong-key problems
    for row in rows:
        mine = [e for e in episodes if e["arm"] == row["arm"]]
        uses = sum(e["loophole"] == "True" for e in mine)
        assert _count(row, "loophole_use") == (uses, wrong_keys)
        assert _count(row, "accuracy") == (sum(e["correct"] == "True" for e in mine), wrong_keys)
        assert _count(row, "mirror_use") == (sum(e["mirror"] == "True" for e in mine), wrong_keys)
        for monitor in MONITORS:
            flagged = [e["loophole"] == "True" and e[f"flagged_{monitor}"] == "True" for e in mine]
            assert _count(row, f"recall_{monitor}") == (sum(flagged), uses)
            assert _count(row, f"obfuscation_{monitor}") == (uses - sum(flagged), wrong_keys)
            assert 0.0 <= float(row[f"obfuscation_{monitor}_ci_low"]) <= float(row[f"obfuscation_{monitor}_ci_high"])
            assert math.isnan(float(row[f"recall_{monitor}"])) == (uses == 0)
    probes = _read(run_dir / "probes.csv")  # before the first step and after each of the 2
    assert [(p["lambda"], int(p["step"])) for p in probes] == [(w, s) for w in ("0.0", "1.5") for s in range(3)]
    assert all(_count(p, "loophole_use")[1] == 3 for p in probes)
    monitors = _read(run_dir / "monitors.csv")[0]
    assert monitors["threshold_trace_keyword"] == "1.0" and float(monitors["target_fpr_trace_classifier"]) == 0.05
    report = (run_dir / "report.md").read_text()
    for section in ("## Controls", "## GRPO per λ", "### Obfuscation", "## Example traces", "## Settings",
                    "| grpo λ=1.5 | 1 |", "clean control's flag rate"):
        assert section in report, section
    assert report.index("## Controls") < report.index("## GRPO per λ")

    # Resuming a finished run replays every cell: nothing is trained again, the tables come back the same.
    done = run_dir / "cells" / "grpo" / "lambda=1.5" / "seed0" / "DONE.json"
    at = done.stat().st_mtime_ns
    assert run(obfuscation.main, "obfuscation", [*TINY, "--out", str(tmp_path), "--resume", str(run_dir)]) == run_dir
    assert done.stat().st_mtime_ns == at and _read(run_dir / "results.csv") == rows


def test_a_checkpoint_is_evaluated_as_it_is_by_the_monitors_fixed_on_its_base(tmp_path, monkeypatch):
    organism = obfuscation.TaskConfig().organism()
    tokenizer = build_word_tokenizer(organism.vocabulary())
    build_model("llama", "1m", tokenizer, seed=2).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    flags = [*TINY, "--out", str(tmp_path / "runs"), "--grpo.lambdas", "[0]", "--model.checkpoint",
             str(tmp_path / "checkpoint")]
    run_dir = run(obfuscation.main, "obfuscation", flags)
    rows = _read(run_dir / "results.csv")
    assert [r["arm"] for r in rows] == ["base", "untrained", *ARMS[1:5]]
    untrained = [e for e in _read(run_dir / "episodes.csv") if e["arm"] == "untrained"]
    assert _count(rows[1], "loophole_use") == (sum(e["loophole"] == "True" for e in untrained), len(untrained))
    controls = (run_dir / "report.md").read_text().split("## Controls")[1].split("## GRPO per λ")[0]
    assert "| untrained | 1 |" in controls
    # On resume the finished cell is replayed, not evaluated again: no model is built.
    monkeypatch.setattr(recipes.answer_key, "reasoner_for", refuse_to_build)
    assert run(obfuscation.main, "obfuscation", [*flags, "--resume", str(run_dir)]) == run_dir
    assert _read(run_dir / "results.csv") == rows


@pytest.mark.parametrize(("flags", "message"), [
    (["--grpo.lambdas", "[0, -0.5]"], r"grpo.lambdas must be one or more penalty weights >= 0, got \[0.0, -0.5\]"),
    (["--monitors.fpr", "0"], r"monitors.fpr must lie in \(0, 1\), got 0"),
    (["--monitors.fpr", "1.5"], r"monitors.fpr must lie in \(0, 1\), got 1.5"),
    (["--task.wrong_key", "0"], r"task.wrong_key must lie in \(0, 1\)"),
    (["--task.wrong_key", "1"], r"task.wrong_key must lie in \(0, 1\)"),
])
def test_bad_settings_fail_with_one_config_error_before_anything_is_written(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):  # a ConfigError: one line on the command line
        run(obfuscation.main, "obfuscation", [*TINY, "--out", str(tmp_path), *flags])
    assert not (tmp_path / "obfuscation").exists()
