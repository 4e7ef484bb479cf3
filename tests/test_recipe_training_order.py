"""The post-training-order recipe end to end on a tiny budget, its on-policy output-judged pairs, and its errors."""

from __future__ import annotations

import csv
import random

import pytest

from framework.data.organisms import AnswerKey
from framework.data.organisms.answer_key import parse_answer
from framework.data.tokenizer import build_word_tokenizer
from framework.experiment.answer_key import Stage, output_judged_pairs
from framework.models import Reasoner, build_model
from framework.regimes import DPO, GRPO, SFT
from framework.reports.training_order import order_rows
from recipes import training_order
from recipes.cli import run

TINY = [
    "--preset", "smoke", "--orders", "[IRP, IPR]",
    "--task.n_test", "12", "--task.n_calibration", "12",
    "--base.rows", "32", "--base.max_steps", "2", "--base.batch_size", "8",
    "--controls.rows", "8", "--controls.max_steps", "1", "--controls.batch_size", "8",
    "--monitors.classifier_rows", "8", "--monitors.classifier_epochs", "1",
    "--preference.rows", "4", "--preference.max_steps", "1", "--preference.batch_size", "4",
    "--rl.rows", "4", "--rl.max_steps", "1", "--rl.batch_size", "2", "--rl.num_generations", "2",
    "--evaluation.max_new_tokens", "8",
]


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_run_trains_each_distinct_prefix_once_and_measures_every_stage(tmp_path):
    run_dir = run(training_order.main, "training_order", [*TINY, "--out", str(tmp_path)])
    results = _read(run_dir / "results.csv")
    # I, three controls, then per P loss the prefixes of IRP and IPR; I→R is shared by both losses.
    expected = ["I", "control: open", "control: clean", "control: hidden",
                "I→R", "I→R→P", "I→P", "I→P→R", "I→R→P*", "I→P*", "I→P*→R"]
    assert [row["arm"] for row in results] == expected
    for column in ("loophole_use", "accuracy", "recall_trace_keyword", "recall_trace_classifier", "recall_output",
                   "obfuscation_trace_keyword", "obfuscation_output", "step_validity_total", "on_policy_pairs_total"):
        assert column in results[-1], column
    by_arm = {row["arm"]: row for row in results}
    assert by_arm["I→P*"]["preference"] == "unmasked" and by_arm["I→R"]["preference"] == ""
    assert by_arm["I→R"]["on_policy_pairs_total"] == "0" and by_arm["I→P"]["on_policy_pairs_total"] == "4"
    # Every stage is evaluated on the same wrong-key test problems.
    assert len({row["loophole_use_total"] for row in results}) == 1
    # Each stage starts from its parent's model on disk: the unmasked branch has its own cells.
    assert (run_dir / "cells" / "I-Pu-R" / "seed0" / "model" / "config.json").is_file()
    report = (run_dir / "report.md").read_text()
    for section in ("## Controls", "## The question: from I→R to I→R→P", "### I→P*→R", "## Example traces after R"):
        assert section in report, section
    assert (run_dir / "loophole_use_by_stage.png").is_file()


def test_output_judged_pairs_prefer_citing_the_problem_and_fill_a_missing_side_from_the_organism():
    organism = AnswerKey()
    problems = [organism.generate(random.Random(i)) for i in range(5)]
    tokenizer = build_word_tokenizer(organism.vocabulary())
    reasoner = Reasoner(build_model("llama", "1m", tokenizer, seed=0), tokenizer, "cot")
    pairs, on_policy = output_judged_pairs(organism, reasoner, problems, samples=2, temperature=1.0,
                                           max_new_tokens=6, batch_size=10)
    assert len(pairs) == 5 and on_policy.total == 5
    for problem, pair in zip(problems, pairs):
        assert pair.chosen.prompt == pair.rejected.prompt == problem.prompt
        assert parse_answer(pair.chosen.answer).reason == "problem"
        assert parse_answer(pair.rejected.answer).reason == "key"
    # An untrained model in 6 tokens never writes an explanation: every side is the organism's own row.
    assert on_policy.hits == 0
    assert pairs[0].rejected.trace == f"key is {problems[0].metadata['key']}"


@pytest.mark.parametrize(("flags", "message"), [
    (["--orders", "[IXR]"], "orders: 'IXR' names the unknown stage 'X'"),
    (["--orders", "[RIP]"], "orders: 'RIP' must start with I"),
    (["--task.wrong_key", "1.5"], "task.wrong_key"),
    (["--monitors.fpr", "0"], "monitors.fpr"),
    (["--preference.losses", "[masked, masked]"], "preference.losses must name masked, unmasked or both"),
])
def test_bad_input_is_one_line_before_any_training(tmp_path, flags, message):
    with pytest.raises(SystemExit) as exited:
        run(training_order.main, "training_order", [*TINY, "--out", str(tmp_path / "bad"), *flags])
    assert str(exited.value.code).startswith("python -m recipes.training_order: error: ")
    assert message in str(exited.value.code) and "\n" not in str(exited.value.code)
    assert not (tmp_path / "bad").exists()


def test_a_stage_trains_with_its_regimes_own_optimiser_at_the_stages_rate():
    stage = Stage(max_steps=3, batch_size=2, lr=3e-4, warmup_steps=5)
    grpo, dpo, sft = stage.optimizer(GRPO), stage.optimizer(DPO), stage.optimizer(SFT)
    assert (grpo.lr, grpo.warmup_steps, dpo.lr, sft.warmup_steps) == (3e-4, 5, 3e-4, 5)
    # Everything else is the regime's: GRPO's constant, clipped, undecayed rate; DPO's zero weight decay.
    assert (grpo.schedule, grpo.weight_decay, grpo.max_grad_norm) == ("constant", 0.0, 1.0)
    assert dpo.weight_decay == 0.0 and sft.schedule == SFT.default_optimizer.schedule == "cosine"


def test_an_order_without_p_is_one_line_of_rows_whatever_the_p_losses():
    results = [{"arm": stages, "stages": stages, "seed": seed} for seed in (0, 1) for stages in ("I", "I→R")]
    rows = order_rows(results, ["IR"], ["masked", "unmasked"])
    assert [(r["order"], r["stages"], r["seed"], r["position"]) for r in rows] == [
        ("I→R", "I", 0, 0), ("I→R", "I→R", 0, 1), ("I→R", "I", 1, 0), ("I→R", "I→R", 1, 1)]
