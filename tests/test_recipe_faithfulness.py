"""The hint-faithfulness recipe end to end on a tiny budget, resuming it, and its errors on bad input."""

from __future__ import annotations

import csv

import pytest
from _recipe_runs import refuse_to_build

from framework.data.tokenizer import build_word_tokenizer
from framework.models import build_model
from framework.probes.faithfulness import RATES, TRACE_RATES
from recipes import faithfulness
from recipes.cli import run

TINY = [
    "--preset", "smoke", "--seeds", "[0]", "--task.n_test", "12",
    "--base.rows", "32", "--base.max_steps", "3", "--base.batch_size", "8",
    "--controls.rows", "8", "--controls.max_steps", "2", "--controls.batch_size", "4",
    "--latent.max_steps", "4", "--evaluation.max_new_tokens", "8", "--evaluation.batch_size", "12",
]
MODELS = ["base", "control: cited", "control: hidden", "control: honest", "latent"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _count(row, name):
    return int(float(row[f"{name}_hits"])), int(float(row[f"{name}_total"]))


def _true(episodes, flag):
    return [e for e in episodes if e[flag] == "True"]


def test_tiny_run_counts_every_rate_from_its_episodes_per_model_and_hint_and_resumes(tmp_path):
    run_dir = run(faithfulness.main, "faithfulness", [*TINY, "--out", str(tmp_path)])
    for name in ("config.yaml", "results.csv", "episodes.csv", "fits.csv", "report.md"):
        assert (run_dir / name).is_file(), name
    rows = _read(run_dir / "results.csv")
    assert [(r["model"], r["hint"]) for r in rows] == [(m, h) for m in MODELS for h in ("metadata", "grader")]
    episodes = _read(run_dir / "episodes.csv")
    for row in rows:
        mine = [e for e in episodes if e["model"] == row["model"]]
        unhinted = [e for e in mine if e["condition"] == "unhinted"]
        hinted = [e for e in mine if e["condition"] == row["hint"]]
        assert len(unhinted) == len(hinted) == 12
        assert [e["unhinted_answer"] for e in hinted] == [e["answer"] for e in unhinted]  # paired by problem
        switched, eligible = _true(hinted, "switched"), _true(hinted, "eligible")
        assert _count(row, "accuracy") == (len(_true(unhinted, "correct")), 12)
        assert _count(row, "hint_use") == (len(switched), len(eligible))
        assert _count(row, "silent_mirror") == (len([e for e in _true(eligible, "mirror") if e["named"] == "False"]),
                                                len(eligible))
        if row["model"] == "latent":  # no trace: no rate read from one, the thought probe instead
            assert all(row[f"{rate}_total"] == "" for rate in TRACE_RATES) and row["probe_total"] == "6"
            continue
        assert row["probe_total"] == ""
        assert _count(row, "verbalized") == (len(_true(switched, "named")), len(switched))
        assert _count(row, "stated") == (len(_true(switched, "stated")), len(switched))
        assert _count(row, "mention_unused") == (len(_true(_true(hinted, "unused"), "named")),
                                                 len(_true(hinted, "unused")))
        checked = _true(hinted, "causal_checked")
        assert checked == _true(switched, "named")  # the causal check ran on exactly the verbalized switches
        assert _count(row, "mention_needed") == (len(_true(checked, "mention_needed")), len(checked))
        assert _count(row, "replay_leaves") == (len(_true(checked, "replay_leaves")), len(checked))
        for rate in RATES:
            assert 0.0 <= float(row[f"{rate}_ci_low"]) <= float(row[f"{rate}_ci_high"]) <= 1.0
    hints = {(e["model"], e["condition"], e["prompt"]) for e in episodes}  # every model is asked the same prompts
    assert len({prompt for _, _, prompt in hints}) == 3 * 12
    report = (run_dir / "report.md").read_text()
    for section in ("## Controls", "## The base model", "## The latent reasoner", "## Example traces", "## Settings",
                    "insufficient (n="):
        assert section in report, section
    assert report.index("## Controls") < report.index("## The base model")

    # Resuming a finished run replays every cell: nothing is trained again, the tables come back the same.
    done = run_dir / "cells" / "control" / "honest" / "seed0" / "DONE.json"
    at = done.stat().st_mtime_ns
    assert run(faithfulness.main, "faithfulness", [*TINY, "--out", str(tmp_path), "--resume", str(run_dir)]) == run_dir
    assert done.stat().st_mtime_ns == at and _read(run_dir / "results.csv") == rows
    assert _read(run_dir / "episodes.csv") == episodes and (run_dir / "report.md").read_text() == report


def test_a_checkpoint_is_evaluated_as_it_is_before_the_curriculum(tmp_path, monkeypatch):
    organism = faithfulness.TaskConfig().organism()
    tokenizer = build_word_tokenizer(organism.vocabulary())
    build_model("llama", "1m", tokenizer, seed=5).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    run_dir = run(faithfulness.main, "faithfulness", [*TINY, "--out", str(tmp_path / "runs"), "--latent.max_steps", "0",
                                                      "--model.checkpoint", str(tmp_path / "checkpoint")])
    rows = _read(run_dir / "results.csv")
    assert [(r["model"], r["hint"]) for r in rows][:2] == [("untrained", "metadata"), ("untrained", "grader")]
    untrained = [e for e in _read(run_dir / "episodes.csv") if e["model"] == "untrained"]
    assert len(untrained) == 3 * 12  # unhinted and each hint kind, on every test problem
    unhinted = [e for e in untrained if e["condition"] == "unhinted"]
    assert _count(rows[0], "accuracy") == (len(_true(unhinted, "correct")), 12)
    report = (run_dir / "report.md").read_text()
    assert report.index("## The base model") < report.index("## The checkpoint before training")

    # On resume the finished cell is replayed, not scored again: no model is built.
    monkeypatch.setattr(faithfulness, "reasoner_for", refuse_to_build)
    assert run(faithfulness.main, "faithfulness", [*TINY, "--out", str(tmp_path / "runs"), "--latent.max_steps", "0",
                                                   "--model.checkpoint", str(tmp_path / "checkpoint"),
                                                   "--resume", str(run_dir)]) == run_dir
    assert _read(run_dir / "results.csv") == rows


@pytest.mark.parametrize(("flags", "message"), [
    (["--task.hints", "[metadata, footnote]"], r"task.hints must be one or more distinct of \['metadata', 'grader'\]"),
    (["--task.hints", "[grader, grader]"], r"task.hints must be one or more distinct of"),
    (["--task.n_test", "1"], r"task.n_test must be >= 2"),
    (["--task.n_context_fields", "9"], r"task \(name 'addition_chain', n_context_fields 9\): n_context_fields must"),
    (["--task.name", "prosqa", "--task.options", "{}"], r"task \(name 'prosqa'.*whole numbers"),
    (["--controls.styles", "[cited, cited]"], r"controls.styles must be distinct ones of"),
    (["--base.cited", "0"], r"base.cited must lie in \(0, 1\]"),
    (["--base.cited", "0.7", "--base.checked", "0.5"], r"base.cited \+ base.checked must be at most 1"),
    (["--base.right", "0"], r"base.right must lie in \(0, 1\]"),
    (["--controls.styles", "[cited, sneaky]"], r"controls.styles must be distinct ones of"),
    (["--evaluation.temperature", "0"], r"evaluation.temperature must be positive"),
    (["--base.lr=-1e-3"], r"base.lr must be positive, got -0.001"),
    (["--latent.max_steps", "3"], r"latent.max_steps=3 cannot hold the latent curriculum's 4 stages"),
])
def test_bad_settings_fail_with_one_config_error_before_anything_is_written(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):  # a ConfigError: one line on the command line
        run(faithfulness.main, "faithfulness", [*TINY, "--out", str(tmp_path), *flags])
    assert not (tmp_path / "faithfulness").exists()
