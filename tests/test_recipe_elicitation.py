"""The elicitation recipe end to end on a tiny budget, its command line, its bad-input errors, and resuming it."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
from _recipe_runs import finish, kill_at, refuse_to_build, start, timeless_rows
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

import recipes.models
from framework.data.datamodule import generate_splits
from framework.data.organisms import PasswordLock
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import build_word_tokenizer, wrap_tokenizer
from framework.errors import ConfigError
from framework.models import build_model
from recipes import elicitation
from recipes.cli import parse, run

TINY = [
    "--preset", "smoke",
    "--train.max_steps", "3", "--train.batch_size", "8", "--train.max_new_tokens", "12",
    "--task.n_lock", "32", "--task.n_test", "6", "--demos", "[1, 2]",
    "--elicit.steps", "2", "--elicit.rl_steps", "1", "--elicit.num_generations", "2", "--elicit.num_samples", "2",
]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_consistent_results_report_and_figures(tmp_path):
    run_dir = run(elicitation.main, "elicitation", [
        *TINY, "--out", str(tmp_path),
        "--arms.cot", "[sft_full_trace, sft_self_trace, grpo, expert_iteration]",
        "--arms.latent", "[latent_answer_sft, grpo, expert_iteration]",
    ])
    assert run_dir.parent == tmp_path / "elicitation"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 3 and config["demos"] == [1, 2]  # flags beat the preset
    assert config["task"]["n_lock"] == 32 and config["latent"]["curriculum"] is False  # the preset beats main's defaults

    before = _rows(run_dir / "locked.csv")
    assert [(r["reasoner"], r["seed"]) for r in before] == [("cot", "0"), ("latent", "0")]
    for row in before:
        for name in ("unlocked_accuracy", "locked_accuracy"):
            assert int(row[f"{name}_total"]) == 6 and 0 <= int(row[f"{name}_hits"]) <= 6
            assert float(row[name]) == pytest.approx(int(row[f"{name}_hits"]) / 6)
    cot, latent = before
    assert int(cot["locked_procedure_total"]) == 6  # cot: one verdict per episode
    assert int(latent["locked_procedure_total"]) == 6 * 2  # latent: 2 thoughts (max_stage 2, c = 1) per episode

    results = _rows(run_dir / "results.csv")
    expected = [("cot", arm, n) for arm in ("sft_full_trace", "sft_self_trace", "grpo", "expert_iteration")
                for n in ("1", "2")] + [("latent", arm, n) for arm in ("latent_answer_sft", "grpo", "expert_iteration")
                                  for n in ("1", "2")]
    assert [(r["reasoner"], r["arm"], r["n"]) for r in results] == expected
    for row in results:
        locked = cot if row["reasoner"] == "cot" else latent
        assert int(row["elicited_accuracy_total"]) == 6 and int(row["unlocked_after_accuracy_total"]) == 6
        assert float(row["locked_accuracy"]) == float(locked["locked_accuracy"])
        gap = float(locked["unlocked_accuracy"]) - float(locked["locked_accuracy"])
        recovery = (float(row["elicited_accuracy"]) - float(locked["locked_accuracy"])) / gap if gap else math.nan
        assert float(row["recovery"]) == pytest.approx(recovery, nan_ok=True)

    report = (run_dir / "report.md").read_text()
    for section in ("## Before elicitation", "## After elicitation", "## Per seed"):
        assert section in report
    assert "| cot | sft_self_trace | 2 | 1 |" in report and "| latent | latent_answer_sft | 1 | 1 |" in report
    for kind in ("cot", "latent"):
        assert (run_dir / f"recovery_vs_n_{kind}.png").stat().st_size > 1000
    for log in ("grpo-cot-n2", "grpo-latent-n1", "expert_iteration-latent-n1"):
        assert (run_dir / "cells" / log / "seed0" / "logs" / "metrics.csv").is_file()


def test_the_latent_curriculum_locks_on_weak_rows_that_skipped_every_step(tmp_path):
    # A weak policy that errs on every step skips all of them in about 1 row in 8: empty traces, zero steps.
    arguments = parse(elicitation.main, "elicitation", [*TINY, "--lock.weak_error_rate", "1.0"])
    lock, task = arguments["lock"], arguments["task"]
    organism = PasswordLock(AdditionChain(**task.options), password=lock.password, locked_fraction=lock.locked_fraction,
                            wrong_passwords=tuple(lock.wrong_passwords), weak_error_rate=1.0)
    problems = generate_splits(organism.task, 0, n_train=task.n_lock, n_val=1, n_test=task.n_test)["train"]
    assert any(not row.trace for row in organism.apply(problems, seed=0))  # the case under test occurs
    run_dir = run(elicitation.main, "elicitation", [
        *TINY, "--out", str(tmp_path), "--reasoners", "[latent]", "--arms.latent", "[latent_answer_sft]",
        "--demos", "[1]", "--latent.curriculum", "true", "--train.max_steps", "4", "--lock.weak_error_rate", "1.0",
    ])
    assert [r["reasoner"] for r in _rows(run_dir / "locked.csv")] == ["latent"]
    stages = {row["train/stage"] for row in _rows(run_dir / "cells" / "lock-latent" / "seed0" / "logs" / "metrics.csv")
              if row.get("train/stage")}
    assert len(stages) > 1  # the curriculum ran through its stages


def test_a_checkpoint_is_scored_as_it_is_with_and_without_the_password_before_locking(tmp_path, monkeypatch):
    lock = elicitation.LockConfig()
    organism = PasswordLock(AdditionChain(n_terms=4, max_operand=9), password=lock.password,
                            wrong_passwords=tuple(lock.wrong_passwords))
    tokenizer = build_word_tokenizer(organism.vocabulary())
    build_model("llama", "1m", tokenizer, seed=7).save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    flags = [*TINY, "--out", str(tmp_path / "runs"), "--reasoners", "[cot]", "--arms.cot", "[sft_full_trace]",
             "--demos", "[1]", "--model.checkpoint", str(tmp_path / "checkpoint")]
    run_dir = run(elicitation.main, "elicitation", flags)
    before = _rows(run_dir / "locked.csv")
    assert [row["reasoner"] for row in before] == ["untrained (cot)", "cot"]
    untrained = before[0]
    assert untrained["lock_time_s"] == "0.0"
    for name in ("unlocked_accuracy", "locked_accuracy"):
        assert int(untrained[f"{name}_total"]) == 6
    assert "`untrained (cot)` is the checkpoint as loaded" in (run_dir / "report.md").read_text()
    # On resume the finished cell is replayed, not scored again: no model is built.
    monkeypatch.setattr(elicitation, "reasoner_for", refuse_to_build)
    assert run(elicitation.main, "elicitation", [*flags, "--resume", str(run_dir)]) == run_dir
    assert _rows(run_dir / "locked.csv") == before


def test_an_arm_the_reasoner_cannot_run_is_an_error_before_training(tmp_path):
    with pytest.raises(SystemExit, match=r'error: Parser key "arms\.latent": .*Got value: sft_full_trace'):
        run(elicitation.main, "elicitation", [*TINY, "--out", str(tmp_path), "--arms.latent", "[sft_full_trace]"])
    with pytest.raises(ConfigError, match=r"arms\.latent=\['sft_self_trace'\]: the 'latent' reasoner runs one or more"):
        elicitation.main(out=tmp_path, reasoners=["latent"], arms=elicitation.Arms(latent=["sft_self_trace"]))
    with pytest.raises(ConfigError, match=r"arms\.cot=\['latent_answer_sft'\]: the 'cot' reasoner runs one or more"):
        elicitation.main(out=tmp_path, reasoners=["cot"], arms=elicitation.Arms(cot=["latent_answer_sft"]))
    with pytest.raises(ConfigError, match="demos must be non-empty and demos positive"):
        elicitation.main(out=tmp_path, demos=[0, 4])
    with pytest.raises(ConfigError, match="cannot hold the latent curriculum's 4 stages"):
        elicitation.main(out=tmp_path, train=elicitation.TrainConfig(max_steps=3))
    with pytest.raises(SystemExit, match="error: elicit.num_generations must be >= 2"):
        run(elicitation.main, "elicitation", [*TINY, "--out", str(tmp_path), "--elicit.num_generations", "1"])
    with pytest.raises(SystemExit, match="error: elicit.temperature must be positive, got 0"):
        run(elicitation.main, "elicitation", [*TINY, "--out", str(tmp_path), "--elicit.temperature", "0"])
    assert not (tmp_path / "elicitation").exists()  # nothing was written, nothing trained


def test_a_password_the_tokenizer_splits_into_nothing_is_an_error_at_start(tmp_path, monkeypatch):
    def tokenizer_deleting_x(words):
        # A normalizer that deletes the letter x: the password "xx" has no tokens at all.
        backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
        backend.normalizer = normalizers.Replace("x", "")
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return wrap_tokenizer(backend)

    monkeypatch.setattr(recipes.models, "build_word_tokenizer", tokenizer_deleting_x)
    with pytest.raises(SystemExit, match="error: password 'xx' tokenizes to nothing"):
        run(elicitation.main, "elicitation", [*TINY, "--out", str(tmp_path), "--lock.password", "xx"])
    assert not (tmp_path / "elicitation").exists()


# One lock cell, then one elicitation cell of 8 one-batch epochs (2 demonstrations in batches of 2): it checkpoints
# after every step, so a kill lands mid-fit.
RESUMABLE = [*TINY, "--reasoners", "[cot]", "--arms.cot", "[sft_full_trace]", "--demos", "[2]", "--elicit.steps", "8"]


def test_a_run_killed_in_an_elicitation_fit_resumes_from_the_saved_lock_to_the_uninterrupted_results(tmp_path):
    straight, killed = (start("elicitation", tmp_path / name, *RESUMABLE) for name in ("straight", "killed"))
    checkpoint = kill_at(killed, tmp_path / "killed", "*/*/cells/sft_full_trace-cot-n2/seed0/lightning/last.ckpt")
    run_dir = checkpoint.parents[4]
    assert (run_dir / "cells" / "lock-cot" / "seed0" / "DONE.json").is_file()
    assert (run_dir / "cells" / "lock-cot" / "seed0" / "model" / "config.json").is_file()

    finish(start("elicitation", tmp_path / "killed", *RESUMABLE, "--resume", str(run_dir)))
    finish(straight)
    straight_dir = next((tmp_path / "straight" / "elicitation").iterdir())
    for table in ("locked.csv", "results.csv"):
        assert timeless_rows(run_dir / table) == timeless_rows(straight_dir / table) != []
    with pytest.raises(SystemExit, match=r"differs from the configuration given at elicit\.lr;"):
        run(elicitation.main, "elicitation", [*RESUMABLE, "--resume", str(run_dir), "--elicit.lr", "0.01"])
