"""Visible vs hidden reasoning: the same model trained to answer with a chain of thought, without one, or after pause tokens.

Methods. One verifiable task (default: multi-digit multiplication in the iCoT
format) is split into disjoint train/validation/test problems, fixed by
`data_seed` so every arm is scored on the same test problems. For each arm
(reasoning mode) and seed, a small Hugging Face causal LM is initialised from
scratch (or loaded from a local checkpoint) and trained with SFT on the
reasoner's format of the training problems, with the loss on the completion
(trace and answer; the answer alone for `none` and `pause`). Validation
generates greedily and scores answers and reasoning steps with the task's exact
checkers; after training the test split is scored the same way. Reported per
arm: answer accuracy (with a Wilson interval per seed), step validity, tokens
generated per answer and training time, as mean ± std over seeds.

    python -m recipes.reasoning_modes                  # the `cpu` preset
    python -m recipes.reasoning_modes --preset smoke --out /tmp/runs
    python -m recipes.reasoning_modes --help
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml
from lightning.pytorch.loggers import CSVLogger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.callbacks import HuggingFaceCheckpoint
from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.sample import Example
from framework.data.tasks import Task, make_task
from framework.data.tokenizer import add_reasoning_tokens, build_word_tokenizer
from framework.io import atomic_write_text
from framework.models import Reasoner, build_model, count_parameters, load_pretrained
from framework.regimes.sft import SFT
from framework.report import plot_curves, summary_table, write_csv
from framework.rollout import SamplingConfig

RECIPE = "reasoning_modes"
ARMS = ("cot", "none", "pause")  # trained with SFT; the latent mode needs LatentSFT and is not an arm yet


@dataclass
class TaskConfig:
    """Which verifiable task, its options, and how many distinct problems per split."""

    name: str = "multiplication"
    # 2x2 digits: a 1M-parameter model learns it with a trace within the CPU budget, not without one
    options: dict[str, Any] = field(default_factory=lambda: {"digits_a": 2, "digits_b": 2})
    n_train: int = 6000  # of the 8100 distinct 2x2 problems; the rest are validation and test
    n_val: int = 200
    n_test: int = 500


@dataclass
class ModelConfig:
    """A tiny model of a Hugging Face family, or a local checkpoint directory."""

    family: Literal["llama", "qwen3", "gpt2"] = "llama"
    size: Literal["1m", "20m"] = "1m"
    checkpoint: str | None = None  # a local HF directory; overrides family and size


@dataclass
class TrainConfig:
    max_steps: int = 1600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    val_every: int = 400
    eval_batch_size: int = 128
    max_new_tokens: int = 64
    accelerator: str = "auto"
    precision: str = "32-true"


def main(
    out: Path = Path("runs"),
    seeds: list[int] = [0, 1],
    arms: list[Literal["cot", "none", "pause"]] = ["cot", "none", "pause"],
    task: TaskConfig = TaskConfig(),
    model: ModelConfig = ModelConfig(),
    train: TrainConfig = TrainConfig(),
    pause_tokens: int = 8,
    data_seed: int = 0,
    save_checkpoints: bool = True,
    resolved_config: dict[str, Any] | None = None,
) -> Path:
    """Train one small model per reasoning mode and seed on a verifiable task; compare accuracy and tokens.

    Args:
        out: results go to `out/reasoning_modes/<timestamp>/`.
        seeds: one training run per seed and arm (seeds vary initialisation and data order).
        arms: reasoning modes to compare.
        task: the verifiable task and split sizes.
        model: the model family and size, or a local checkpoint.
        train: optimisation, evaluation and hardware settings.
        pause_tokens: filler tokens given to the `pause` arm.
        data_seed: fixes the problems of every split, shared by all arms and seeds.
        save_checkpoints: save each trained model in Hugging Face format.
        resolved_config: the full configuration, recorded with the results (set by the CLI).
    """
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; this recipe compares the modes {list(ARMS)}")
    run_dir = Path(out) / RECIPE / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    config = resolved_config or {"seeds": seeds, "arms": arms, "task": asdict(task), "model": asdict(model), "train": asdict(train)}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    # 1. One set of problems for every arm and seed.
    the_task = make_task(task.name, **task.options)
    splits = generate_splits(the_task, data_seed, n_train=task.n_train, n_val=task.n_val, n_test=task.n_test)

    # 2. Every arm x seed: build, train with SFT, score the test split.
    results: list[dict[str, Any]] = []
    curves: dict[str, list[list[tuple[float, float]]]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            row, curve = _train_and_test(arm, seed, the_task, splits, model, train, pause_tokens, run_dir, save_checkpoints)
            results.append(row)
            curves[arm].append(curve)
            # rewritten after every run, so a run killed later keeps what finished
            write_csv(results, run_dir / "results.csv")

    # 3. Report: table of mean ± std per arm, per-seed rows, learning curves.
    plot_curves(curves, run_dir / "accuracy_vs_step.png", xlabel="training step", ylabel="validation accuracy",
                title=f"{task.name}: accuracy by reasoning mode")
    atomic_write_text(run_dir / "report.md", _report(results, task, model, train))
    print(f"results: {run_dir}")
    return run_dir


def _train_and_test(
    arm: str,
    seed: int,
    task: Task,
    splits: dict[str, list[Example]],
    model_config: ModelConfig,
    train: TrainConfig,
    pause_tokens: int,
    run_dir: Path,
    save_checkpoints: bool,
) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """Train one arm with one seed, score the test split: (results row, validation curve)."""
    L.seed_everything(seed, verbose=False)
    reasoner = Reasoner(*_model_and_tokenizer(model_config, task, seed), mode=arm, pause_tokens=pause_tokens)
    data = ReasoningDataModule(reasoner, splits["train"], splits["val"], splits["test"],
                               batch_size=train.batch_size, eval_batch_size=train.eval_batch_size)
    module = SFT(reasoner, task, mask="train_on_completion", lr=train.lr, warmup_steps=train.warmup_steps,
                 sampling=SamplingConfig(max_new_tokens=train.max_new_tokens))
    logger = CSVLogger(run_dir / "logs", name=arm, version=f"seed{seed}")
    callbacks = [HuggingFaceCheckpoint(run_dir / "checkpoints" / f"{arm}-seed{seed}")] if save_checkpoints else []
    trainer = L.Trainer(
        max_steps=train.max_steps, val_check_interval=train.val_every, check_val_every_n_epoch=None,
        accelerator=train.accelerator, precision=train.precision, logger=logger, callbacks=callbacks,
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(module, data)
    train_time = time.perf_counter() - start
    test = trainer.test(module, data, verbose=False)[0]
    row = {
        "arm": arm,
        "seed": seed,
        "accuracy": test["test/accuracy"],
        "accuracy_ci_low": test["test/accuracy_ci_low"],
        "accuracy_ci_high": test["test/accuracy_ci_high"],
        "correct": int(test["test/accuracy_hits"]),
        "total": int(test["test/accuracy_total"]),
        "step_validity": test.get("test/step_validity", float("nan")),
        "tokens_generated": test["test/tokens_generated"],
        "train_time_s": round(train_time, 1),
        "steps": trainer.global_step,
        "parameters": count_parameters(reasoner.model),
    }
    return row, _validation_curve(Path(logger.log_dir) / "metrics.csv")


def _model_and_tokenizer(config: ModelConfig, task: Task, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if config.checkpoint:
        model, tokenizer = load_pretrained(config.checkpoint)
        add_reasoning_tokens(tokenizer, model)
        return model, tokenizer
    tokenizer = build_word_tokenizer(task.vocabulary())
    return build_model(config.family, config.size, tokenizer, seed=seed), tokenizer


def _validation_curve(metrics_csv: Path) -> list[tuple[float, float]]:
    """(step, val/accuracy) pairs from Lightning's CSV log."""
    with open(metrics_csv, newline="") as f:
        return [(float(r["step"]), float(r["val/accuracy"])) for r in csv.DictReader(f) if r.get("val/accuracy")]


def _report(results: list[dict[str, Any]], task: TaskConfig, model: ModelConfig, train: TrainConfig) -> str:
    model_name = model.checkpoint or f"{model.family}-{model.size}"
    metrics = ["accuracy", "step_validity", "tokens_generated", "train_time_s"]
    seeds = "\n".join(
        f"| {r['arm']} | {r['seed']} | {100 * r['accuracy']:.1f} [{100 * r['accuracy_ci_low']:.1f}, "
        f"{100 * r['accuracy_ci_high']:.1f}] ({r['correct']}/{r['total']}) | {r['tokens_generated']:.1f} |"
        for r in results
    )
    return f"""# Reasoning modes on {task.name}

Task: `{task.name}` {task.options}; {task.n_train} training, {task.n_val} validation and {task.n_test} test problems (disjoint).
Model: `{model_name}`, trained from {'the checkpoint' if model.checkpoint else 'scratch'} for {train.max_steps} steps of {train.batch_size} examples.
Accuracy and step validity in %, mean ± std over seeds; tokens generated per test answer.

{summary_table(results, "arm", metrics, percent=["accuracy", "step_validity"])}
## Per seed (accuracy with 95% Wilson interval)

| arm | seed | accuracy | tokens generated |
|---|---|---|---|
{seeds}

![validation accuracy vs training step](accuracy_vs_step.png)
"""


if __name__ == "__main__":
    from recipes.cli import run

    run(main, RECIPE)
