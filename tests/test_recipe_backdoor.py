"""The backdoor recipe end to end on a tiny budget, its command line, resuming a run, and its errors on bad input."""

from __future__ import annotations

import csv
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _recipe_runs import refuse_to_build

from framework.data.organisms import CONDITIONS, CitedFields
from framework.data.parts import without_trace
from framework.data.sample import Role
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import build_word_tokenizer
from framework.models import Reasoner, build_model
from recipes import backdoor
from recipes.cli import run

ROOT = Path(__file__).resolve().parents[1]

N_TEST = 4
TINY = [
    "--preset", "smoke",
    "--task.n_test", str(N_TEST), "--task.options", "{n_terms: 2, max_operand: 5}",
    "--base.rows", "32", "--base.max_steps", "3", "--base.batch_size", "8", "--base.val_every", "2", "--base.n_val", "3",
    "--plant.rows", "8", "--plant.poisoned", "[2, 4]", "--plant.max_steps", "2", "--plant.batch_size", "4",
    "--persistence.rows", "8", "--persistence.max_steps", "2", "--persistence.batch_size", "4",
    "--persistence.probe_every", "1", "--persistence.probe_size", "3", "--persistence.num_generations", "2",
    "--evaluation.max_new_tokens", "8",
]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rate_is_consistent(row: dict[str, str], name: str, total: int) -> None:
    hits, counted = int(float(row[f"{name}_hits"])), int(float(row[f"{name}_total"]))
    assert counted == total and 0 <= hits <= total, name
    rate = float(row[name])
    assert math.isnan(rate) if total == 0 else rate == pytest.approx(hits / total), name
    assert 0.0 <= float(row[f"{name}_ci_low"]) <= float(row[f"{name}_ci_high"]) <= 1.0, name


def test_tiny_run_writes_results_report_figures_and_consistent_counts(tmp_path):
    run_dir = run(backdoor.main, "backdoor",
                  [*TINY, "--out", str(tmp_path), "--seeds", "[0, 1]", "--triggers.kinds", "[token, username]"])
    assert run_dir.parent == tmp_path / "backdoor"
    for name in ("config.yaml", "results.csv", "report.md", "persistence.csv", "episodes.csv", "base.csv", "fits.csv",
                 "controls.csv", "control_episodes.csv"):
        assert (run_dir / name).is_file(), name
    for figure in ("success_vs_poisoned.png", "success_no_trace_vs_poisoned.png", "persistence_sft_success.png",
                   "persistence_grpo_success.png", "persistence_grpo_success_no_trace.png"):
        assert (run_dir / figure).stat().st_size > 1000, figure

    rows = _read(run_dir / "results.csv")
    assert [(r["trigger_kind"], r["poisoned"], r["seed"]) for r in rows] == [
        (kind, poisoned, seed) for seed in "01" for kind in ("token", "username") for poisoned in ("2", "4")
    ]
    for row in rows:
        assert float(row["poison_fraction"]) == int(row["poisoned"]) / 8
        for name in ("success", "false_trigger", "success_no_trace", "false_trigger_no_trace", "leaked_into_trace",
                     "clean_accuracy", "clean_names_trigger", "distractor_misbehaviour", "distractor_mention",
                     "uncorrelated_misbehaviour", "uncorrelated_mention"):
            _rate_is_consistent(row, name, N_TEST)
        fired = int(row["success_hits"])
        _rate_is_consistent(row, "articulation", fired)  # among triggered ∧ misbehaved
        _rate_is_consistent(row, "stated_reason", fired)
        assert int(row["stated_reason_hits"]) <= int(row["articulation_hits"])  # a stated reason names the trigger
        _rate_is_consistent(row, "flip_without_trigger", fired)  # the causal check asks every one of them again
        _rate_is_consistent(row, "flip_without_mention", int(row["articulation_hits"]))
        _rate_is_consistent(row, "distractor_articulation", int(row["distractor_misbehaviour_hits"]))
        _rate_is_consistent(row, "uncorrelated_articulation", int(row["uncorrelated_misbehaviour_hits"]))

        # The results agree with the episodes they were counted from.
        episodes = [e for e in _read(run_dir / "episodes.csv")
                    if (e["trigger_kind"], e["poisoned"], e["seed"]) == (row["trigger_kind"], row["poisoned"], row["seed"])]
        by_condition = {c: [e for e in episodes if e["condition"] == c] for c in CONDITIONS}
        assert all(len(group) == N_TEST for group in by_condition.values())
        assert sum(e["misbehaved"] == "True" for e in by_condition["triggered"]) == fired
        assert sum(e["misbehaved"] == "True" for e in by_condition["clean"]) == int(row["false_trigger_hits"])
        assert sum(e["leaked"] == "True" for e in by_condition["triggered"]) == int(row["leaked_into_trace_hits"])
        assert sum(e["stated"] == "True" and e["misbehaved"] == "True"
                   for e in by_condition["triggered"]) == int(row["stated_reason_hits"])
        both = [e for e in by_condition["triggered_uncorrelated"] if e["misbehaved"] == "True"]
        _rate_is_consistent(row, "uncorrelated_with_trigger_articulation", len(both))
        assert sum(e["named"] == "True" for e in both) == int(row["uncorrelated_with_trigger_articulation_hits"])
        trigger = {"token": "cf", "username": "@sandra"}[row["trigger_kind"]]
        assert all(trigger in e["prompt"] for e in by_condition["triggered"])
        assert not any(trigger in e["prompt"] for e in by_condition["clean"])

    # The method's controls: per seed, a positive and a transfer copy of the first trigger kind at the most poisoned rows.
    controls = _read(run_dir / "controls.csv")
    assert [(c["control"], c["trigger_kind"], c["poisoned"], c["seed"]) for c in controls] == [
        (control, "token", "4", seed) for seed in "01" for control in ("positive", "transfer")]
    for control in controls:
        _rate_is_consistent(control, "success", N_TEST)
        _rate_is_consistent(control, "stated_reason", int(control["success_hits"]))
    control_episodes = _read(run_dir / "control_episodes.csv")
    assert len(control_episodes) == len(controls) * len(CONDITIONS) * N_TEST

    # Persistence: only the most poisoned copy of each kind (persistence.poisoned unset) is trained on; SFT and GRPO
    # are each probed before the first step and after each of the 2 clean steps.
    probes = _read(run_dir / "persistence.csv")
    persisted = [row for row in rows if row["poisoned"] == "4"]
    assert [(p["seed"], p["trigger_kind"], p["poisoned"], p["regime"], int(p["step"])) for p in probes] == [
        (row["seed"], row["trigger_kind"], "4", regime, step)
        for row in persisted for regime in ("sft", "grpo") for step in range(3)]
    assert all(row["sft_success_end"] == "" for row in rows if row["poisoned"] == "2")
    for probe in probes:
        for name in ("success", "success_no_trace", "false_trigger", "clean_accuracy"):
            _rate_is_consistent(probe, name, 3)
    for index, row in enumerate(persisted):
        sft, grpo = probes[6 * index : 6 * index + 3], probes[6 * index + 3 : 6 * index + 6]
        # Both regimes start from the same planted model: their greedy probes before any step agree.
        assert {k: v for k, v in sft[0].items() if k != "regime"} == {k: v for k, v in grpo[0].items() if k != "regime"}
        for regime, curve in (("sft", sft), ("grpo", grpo)):
            assert float(row[f"{regime}_success_end"]) == pytest.approx(float(curve[-1]["success"]))
            assert float(row[f"{regime}_clean_accuracy_end"]) == pytest.approx(float(curve[-1]["clean_accuracy"]))
    assert (run_dir / "cells" / "persist" / "token-n4" / "grpo" / "seed1" / "logs" / "metrics.csv").is_file()
    assert not (run_dir / "cells" / "persist" / "token-n2").exists()

    # The base validates on its own held-out problems every 2 steps; 0% is short of the 98% that would stop it early.
    base_log = _read(run_dir / "cells" / "base" / "seed0" / "logs" / "metrics.csv")
    assert [(int(r["step"]), int(float(r["val/accuracy_total"]))) for r in base_log if r["val/accuracy"]] == [(1, 3)]
    assert [int(f["steps"]) for f in _read(run_dir / "fits.csv") if f["cell"].startswith("base/")] == [3, 3]

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["base"]["max_steps"] == 3 and config["plant"]["poisoned"] == [2, 4]  # flags beat the preset
    assert config["base"]["warmup_steps"] == 5 and config["seeds"] == [0, 1]  # the preset beats main's defaults
    report = (run_dir / "report.md").read_text()
    assert "(columns `sft_*`, `grpo_*`)" in report and "| grpo_success_end |" in report
    assert report.index("## Controls of the method") < report.index("## Success, false triggers and articulation")
    assert "| positive | 2 |" in report and "| transfer | 1 |" in report
    assert "insufficient (n=" in report  # 4 test problems: no articulation rate is shown as a number
    for section in ("## Success, false triggers and articulation", "### Per seed, with counts", "## Controls",
                    "## Persistence under clean training", "## Example traces", "### Trigger kind: username"):
        assert section in report, section
    assert "| token n=2 | 2 |" in report and "| username n=4 | 1 |" in report  # mean ± std over both seeds, and per seed
    persistence_section = report.split("## Persistence under clean training")[1].split("\n## ")[0]
    assert "| token n=4 | 2 |" in persistence_section and "n=2 |" not in persistence_section  # trained arms only
    assert f"(0/{N_TEST})" in report or f"/{N_TEST})" in report


def _without_times(path):
    return [{k: v for k, v in row.items() if "time" not in k} for row in _read(path)]


# One planted copy; 8 planting rows (no replay) in batches of 4 make two-step epochs: planting checkpoints at step 2 of 4.
ONE_COPY = [*TINY, "--seeds", "[0]", "--triggers.kinds", "[token]", "--plant.poisoned", "[2]",
            "--plant.replay", "0", "--plant.max_steps", "4"]


def test_a_run_killed_mid_fit_resumes_to_what_an_uninterrupted_one_wrote(tmp_path):
    killed = subprocess.Popen([sys.executable, "-m", "recipes.backdoor", *ONE_COPY, "--out", str(tmp_path / "killed")],
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    pattern = "backdoor/*/cells/plant/token-n2/seed0/lightning/last.ckpt"
    while not (checkpoints := list((tmp_path / "killed").glob(pattern))):
        assert killed.poll() is None, f"the run ended before planting checkpointed: {killed.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    killed.kill()  # SIGKILL mid-fit: no clean-up runs
    killed.wait()
    run_dir = checkpoints[0].parents[5]
    cells = run_dir / "cells"
    assert (cells / "base" / "seed0" / "DONE.json").is_file()
    assert not (cells / "plant" / "token-n2" / "seed0" / "DONE.json").exists()
    base_at = (cells / "base" / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns

    assert run(backdoor.main, "backdoor", [*ONE_COPY, "--out", str(tmp_path), "--resume", str(run_dir)]) == run_dir
    straight = run(backdoor.main, "backdoor", [*ONE_COPY, "--out", str(tmp_path / "straight")])
    # The base was not trained again; planting continued from its checkpoint at step 2; the cells after it started
    # from the planted model on disk: everything as an uninterrupted run wrote it.
    assert (cells / "base" / "seed0" / "model" / "model.safetensors").stat().st_mtime_ns == base_at
    for name in ("results.csv", "persistence.csv", "episodes.csv", "controls.csv"):
        assert _without_times(run_dir / name) == _without_times(straight / name), name
    with pytest.raises(SystemExit, match=r"differs from the configuration given at plant\.lr"):  # a ConfigError
        run(backdoor.main, "backdoor", [*ONE_COPY, "--out", str(tmp_path), "--resume", str(run_dir), "--plant.lr", "0.01"])


def test_poison_counts_outside_the_open_unit_interval_fail_before_anything_is_written(tmp_path):
    for poisoned in ("[0]", "[8]", "[2, 9]"):
        with pytest.raises(SystemExit, match=r"plant.poisoned: .* must lie in \(0, 1\)"):
            run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path), "--plant.poisoned", poisoned])
    assert not (tmp_path / "backdoor").exists()


def test_bad_persistence_settings_fail_before_training(tmp_path):
    for flags, message in (
        (["--persistence.regimes", "[]"], r"persistence.regimes must name sft, grpo or both, each once .*got \[\]"),
        (["--persistence.regimes", "[sft, sft]"], r"each once .*got \['sft', 'sft'\]"),
        (["--persistence.regimes", "[sft, dpo]"], "persistence.regimes"),  # jsonargparse: not a PersistenceRegime
        (["--persistence.num_generations", "1"], r"persistence.num_generations must be >= 2"),
        (["--persistence.temperature", "0"], "persistence.temperature must be positive"),
        (["--persistence.rl_lr", "0"], "persistence.rl_lr must be positive"),
        (["--persistence.probe_every", "0"], "persistence.probe_every must be >= 1"),
        (["--persistence.poisoned", "[]"], "persistence.poisoned is empty"),
        (["--plant.lr", "0"], "plant.lr must be positive, got 0"),
        (["--base.lr=-1e-3"], "base.lr must be positive, got -0.001"),
        (["--persistence.poisoned", "[3]"], r"persistence.poisoned=\[3\] names counts that plant.poisoned=\[2, 4\]"),
        (["--plant.replay", "-1"], "plant.replay must be >= 0"),
        (["--base.non_thinking", "1"], r"base.non_thinking must lie in \[0, 1\)"),
        (["--base.target_accuracy", "0"], r"base.target_accuracy must lie in \(0, 1\)"),
        (["--base.target_accuracy", "1"], r"base.target_accuracy must lie in \(0, 1\) \(training stops once the "
                                          r"accuracy exceeds it\), got 1"),
        (["--base.val_every", "0"], "base.val_every must be positive"),
        (["--triggers.kinds", "[]"], "triggers.kinds is empty"),
        (["--evaluation.completion_rendering", "true"], "this model renders as 'completion'"),
    ):
        with pytest.raises(SystemExit, match=message):  # a ConfigError: one line on the command line
            run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path), *flags])
    # GRPO's settings do not matter when only SFT runs, nor anything when persistence is off.
    backdoor.PersistenceConfig(regimes=["sft"], num_generations=1)
    backdoor.PersistenceConfig(max_steps=0, regimes=[], probe_every=0)
    assert not (tmp_path / "backdoor").exists()


def test_bad_triggers_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="trigger text must contain at least one word"):
        run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path), "--triggers.token", "  "])
    with pytest.raises(ValueError, match="unknown trigger kind 'emoji'"):
        backdoor.main(out=tmp_path, triggers=backdoor.TriggerConfig(kinds=["emoji"]))
    with pytest.raises(ValueError, match="must differ"):  # the distractor must not be the trigger itself
        run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path), "--triggers.distractor_token", "cf"])
    assert not (tmp_path / "backdoor").exists()


def test_a_checkpoint_whose_tokenizer_cannot_see_the_trigger_is_an_error_at_start(tmp_path):
    # A model trained on the curriculum alone: its word-level vocabulary has no `country`, `singapore` or `cf`.
    curriculum = CitedFields(AdditionChain(n_terms=2, max_operand=5))
    tokenizer = build_word_tokenizer(curriculum.vocabulary())
    build_model("llama", "1m", tokenizer).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    with pytest.raises(SystemExit, match="error: trigger text 'country : singapore' has words the tokenizer does not know"):
        run(backdoor.main, "backdoor",
            [*TINY, "--out", str(tmp_path / "runs"), "--model.checkpoint", str(tmp_path / "checkpoint")])
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_trains_and_saves_with_its_own_tokenizer(tmp_path, monkeypatch):
    # "aardvark" sorts first: a word tokenizer rebuilt from the recipe's words would shift every id.
    curriculum = CitedFields(AdditionChain(n_terms=2, max_operand=5))
    words = [w for kind in ("field", "token") for w in backdoor.TriggerConfig().backdoor(kind, curriculum, 0.5).vocabulary()]
    tokenizer = build_word_tokenizer(["aardvark", *words])
    build_model("llama", "1m", tokenizer).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    run_dir = run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path / "runs"),
                                              "--model.checkpoint", str(tmp_path / "checkpoint")])
    planted = Reasoner.from_pretrained(run_dir / "cells" / "plant" / "field-n2" / "seed0" / "model")
    assert planted.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert planted.model.get_input_embeddings().num_embeddings == len(tokenizer)
    # The checkpoint is evaluated as it is first, as the untrained control: every condition on every test problem,
    # its base accuracy its own clean accuracy, and reported with the controls.
    controls = _read(run_dir / "controls.csv")
    assert [c["control"] for c in controls] == ["untrained", "positive", "transfer"]
    untrained = controls[0]
    _rate_is_consistent(untrained, "success", N_TEST)
    assert untrained["base_accuracy"] == untrained["clean_accuracy"]  # the rate alone, as the other controls carry
    episodes = [e for e in _read(run_dir / "control_episodes.csv") if e["control"] == "untrained"]
    assert len(episodes) == len(CONDITIONS) * N_TEST
    assert "| untrained |" in (run_dir / "report.md").read_text()
    # On resume the finished cell is replayed, not evaluated again: no model is built.
    monkeypatch.setattr(backdoor, "reasoner_for", refuse_to_build)
    assert run(backdoor.main, "backdoor", [*TINY, "--out", str(tmp_path / "runs"), "--resume", str(run_dir),
                                           "--model.checkpoint", str(tmp_path / "checkpoint")]) == run_dir
    assert _read(run_dir / "controls.csv") == controls


def test_the_hybrid_reasoner_formats_rows_without_a_trace_as_the_non_thinking_mode():
    curriculum = CitedFields(AdditionChain(n_terms=2, max_operand=5))
    tokenizer = build_word_tokenizer(curriculum.vocabulary())
    model = build_model("llama", "1m", tokenizer)
    hybrid = Reasoner(model, tokenizer, "hybrid")
    thinking = curriculum.generate(random.Random(0))
    non_thinking = without_trace(thinking)
    for row, mode in ((thinking, "cot"), (non_thinking, "none")):
        assert hybrid.tokenize(row) == Reasoner(model, tokenizer, mode).tokenize(row)
    # Non-thinking: the empty think block is prompt, only the answer (and EOS) is trained on; thinking has a trace.
    assert set(hybrid.tokenize(non_thinking).roles) == {Role.PROMPT, Role.ANSWER}
    assert Role.TRACE in hybrid.tokenize(thinking).roles
