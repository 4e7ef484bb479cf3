"""Visible vs latent reasoning (Coconut's Table 1): chain of thought, none, pause tokens, continuous thoughts.

Methods. One verifiable task (default: a 7-move state chain, whose steps a
1M-parameter model learns in a few hundred updates and whose answer it cannot
reach without them; `multiplication` in the iCoT format on the `gpu` preset,
`--preset prosqa` for Coconut's graph search) is split into disjoint
train/validation/test problems, fixed by `data_seed` so every arm is scored on
the same test problems. For each arm and seed, a small Hugging Face causal LM
is initialised from scratch (or loaded from a local checkpoint) and trained for
the same number of steps:

- `cot`, `none`, `pause`: SFT on the reasoner's format, the loss on the
  completion (trace and answer; the answer alone for `none` and `pause`).
- `latent`: `LatentSFT` on Coconut's curriculum. Stage 0 is the full chain of
  thought; each later stage replaces one more language step by `c` continuous
  thoughts; the final stage has no language step left. Stages share the
  step budget equally.
- `latent_no_curriculum`: the final stage from the first step.
- `pause_as_thought`: the curriculum, with learned `<pause>` embeddings in the
  thought slots instead of fed-back hidden states.

Validation generates greedily (latent arms at their current stage) and scores
answers and reasoning steps with the task's exact checkers; after training the
test split is scored the same way. Reported per arm: answer accuracy (with a
Wilson interval per seed), step validity, tokens generated per answer
(continuous thoughts count as tokens, as in Coconut) and training time, as
mean ± std over seeds, beside Coconut's published ProsQA numbers; and the
validation accuracy of the curriculum arms at each stage. A checkpoint is
first scored as it is, before any training, in each written format (`cot`,
`none`, `pause`): the point the arms start from.

    python -m recipes.reasoning_modes                  # the `cpu` preset
    python -m recipes.reasoning_modes --preset smoke --out /tmp/runs
    python -m recipes.reasoning_modes --preset smoke --resume runs/reasoning_modes/<timestamp>
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.sample import Example
from framework.data.tasks import Task, make_task
from framework.errors import ConfigError, require_positive
from framework.experiment import Cell, Experiment, FitSettings, Rows
from framework.io import atomic_write_text
from framework.models import Pause, Reasoner, count_parameters
from framework.models.pretrained import resolve_checkpoint
from framework.probes.organism_metrics import Proportion
from framework.regimes import SFT, LatentSFT, OptimizerConfig
from framework.report import interval_cell, paired_table, per_seed_table, plot_curves, summary_table, validation_curve
from framework.rollout import SamplingConfig
from recipes.cli import config_of
from recipes.latent import LatentCurriculum
from recipes.models import ModelConfig, learning_rate, model_and_tokenizer, rendering_of

RECIPE = "reasoning_modes"
Arm = Literal["cot", "none", "pause", "latent", "latent_no_curriculum", "pause_as_thought"]
ARMS: tuple[str, ...] = get_args(Arm)
LATENT_ARMS = ("latent", "latent_no_curriculum", "pause_as_thought")
# Coconut (Hao et al. 2024), Table 1, ProsQA accuracy with GPT-2 (quoted in RESEARCH.md).
PUBLISHED_PROSQA = {"cot": 77.5, "none": 76.7, "pause": 75.9, "latent": 97.0, "latent_no_curriculum": 76.1}


@dataclass
class TaskConfig:
    """Which verifiable task, its options, and how many distinct problems per split."""

    # Chosen on seeds 100-102 (README): with its trace a 1M-parameter model learns the chain within 400 steps in
    # every seed; without one it stays near the answer's base rate. 2x2 multiplication needed ~1,600 steps and was
    # learned in some seeds only.
    name: str = "state_chain"
    options: dict[str, Any] = field(default_factory=lambda: {"n_moves": 7, "rule": "distance"})
    n_train: int = 6000
    n_val: int = 100
    n_test: int = 300


@dataclass
class TrainConfig:
    max_steps: int = 400
    batch_size: int = 32
    lr: float | None = None  # None: 3e-3 from scratch, a pretrained rate for a checkpoint (recipes.models.learning_rate)
    warmup_steps: int = 100
    val_every: int = 200
    eval_batch_size: int = 128
    max_new_tokens: int = 32
    accelerator: str = "auto"
    precision: str = "32-true"

    def __post_init__(self) -> None:
        require_positive("train", self, "max_steps", "val_every", "batch_size", "eval_batch_size", "max_new_tokens")


def main(
    out: Path = Path("runs"),
    seeds: list[int] = [0, 1, 2],
    arms: list[Arm] = list(ARMS),
    task: TaskConfig = TaskConfig(),
    model: ModelConfig = ModelConfig(),
    train: TrainConfig = TrainConfig(),
    pause_tokens: int = 8,
    latent: LatentCurriculum = LatentCurriculum(),
    data_seed: int = 0,
    save_checkpoints: bool = True,
    resume: Path | None = None,
    resolved_config: dict[str, Any] | None = None,
) -> Path:
    """Train one small model per reasoning mode and seed on a verifiable task; compare accuracy and tokens.

    Args:
        out: results go to `out/reasoning_modes/<timestamp>/`.
        seeds: one training run per seed and arm (seeds vary initialisation and data order).
        arms: reasoning modes (and latent training variants) to compare.
        task: the verifiable task and split sizes.
        model: the model family and size, or a local checkpoint.
        train: optimisation, evaluation and hardware settings.
        pause_tokens: filler tokens given to the `pause` arm.
        latent: the curriculum of the latent arms; its stages split `train.max_steps` equally.
        data_seed: fixes the problems of every split, shared by all arms and seeds.
        save_checkpoints: save each trained model in Hugging Face format (in its cell's `model/`).
        resume: an earlier run directory of this recipe to continue: finished cells are skipped, an unfinished
            fit continues from its last checkpoint, and a different configuration is refused.
        resolved_config: the full configuration, recorded with the results (set by the CLI).
    """
    # 0. Every setting that cannot work is refused here, before a run directory or a fit.
    if unknown := [arm for arm in arms if arm not in ARMS]:
        raise ConfigError(f"unknown arm {unknown[0]!r}; this recipe compares the arms {list(ARMS)}")
    if any(arm in LATENT_ARMS for arm in arms):
        latent.check(train.max_steps)
    the_task = make_task(task.name, **task.options)
    if model.checkpoint:
        resolve_checkpoint(model.checkpoint)
    # 1. One set of problems for every arm and seed (split sizes the task cannot fill are refused here too).
    splits = generate_splits(the_task, data_seed, n_train=task.n_train, n_val=task.n_val, n_test=task.n_test)
    config = resolved_config or config_of(main, locals())
    experiment = Experiment(RECIPE, out, config, seeds=seeds, resume=resume)

    settings = FitSettings(train.max_steps, val_every=train.val_every, accelerator=train.accelerator,
                           precision=train.precision)
    # 2. A checkpoint is first scored as it is, in each written format: the point the training below starts from.
    untrained: list[dict[str, Any]] = []
    if model.checkpoint:
        for arm in [arm for arm in arms if arm not in LATENT_ARMS]:
            work = partial(_score_untrained, arm, seeds[0], the_task, splits, model, train, settings, pause_tokens,
                           latent)
            untrained += experiment.cell(f"{arm}/untrained", seeds[0], work)["untrained"]

    # 3. Every arm x seed, one cell: build, train (SFT or LatentSFT), score the test split.
    results: list[dict[str, Any]] = []
    for seed in seeds:
        for arm in arms:
            work = partial(_train_and_test, arm, seed, the_task, splits, model, train, settings, pause_tokens, latent,
                           save_checkpoints)
            results += experiment.cell(f"{arm}/seed{seed}", seed, work, keeps_model=save_checkpoints)["results"]

    # 4. Report: the checkpoint before training, Table 1 (mean ± std per arm beside the published numbers), per-seed
    # rows, learning curves, and the curriculum arms' accuracy at each stage, from each cell's validation log.
    logs = {arm: [experiment.path("cells", f"{arm}/seed{seed}", "logs/metrics.csv") for seed in seeds] for arm in arms}
    curves = {arm: [validation_curve(log) for log in logs[arm]] for arm in arms}
    stages = {arm: [validation_curve(log, x="val/stage") for log in logs[arm]] for arm in arms if arm in LATENT_ARMS}
    plot_curves(curves, experiment.path("accuracy_vs_step.png"), xlabel="training step",
                ylabel="validation accuracy", title=f"{task.name}: accuracy by reasoning mode")
    if stages:
        plot_curves(stages, experiment.path("accuracy_vs_stage.png"), xlabel="curriculum stage",
                    ylabel="validation accuracy", title=f"{task.name}: accuracy per curriculum stage")
    # The negative control of the headline: always giving the commonest training answer, scored on the test split.
    commonest = Counter(example.answer for example in splits["train"]).most_common(1)[0][0]
    base_rate = Proportion(sum(example.answer == commonest for example in splits["test"]), len(splits["test"]))
    atomic_write_text(experiment.path("report.md"),
                      _report(results, untrained, task, model, train, latent, bool(stages), (commonest, base_rate)))
    print(f"results: {experiment.directory}")
    return experiment.directory


def _arm_module(arm: str, seed: int, model_config: ModelConfig, task: Task, train: TrainConfig, pause_tokens: int,
                latent: LatentCurriculum) -> SFT | LatentSFT:
    """The reasoner of an arm, built from `seed`, inside the regime that trains it."""
    model, tokenizer = model_and_tokenizer(model_config, task.vocabulary(), seed)
    rendering = rendering_of(model_config, tokenizer)
    lr = learning_rate(model_config, train.lr, from_scratch=3e-3)
    options = {"optimizer": OptimizerConfig(lr=lr, warmup_steps=train.warmup_steps),
               "eval_sampling": SamplingConfig(max_new_tokens=train.max_new_tokens)}
    if arm not in LATENT_ARMS:
        reasoner = Reasoner(model, tokenizer, Pause(pause_tokens) if arm == "pause" else arm, rendering=rendering)
        return SFT(reasoner, task, mask="train_on_completion", **options)
    reasoner = latent.reasoner(model, tokenizer, task, thought="pause" if arm == "pause_as_thought" else "continuous",
                               rendering=rendering)
    if arm == "latent_no_curriculum":
        return LatentSFT(reasoner, task, curriculum=False, seed=seed, **options)
    return LatentSFT(reasoner, task, steps_per_stage=latent.steps_per_stage(train.max_steps), mix_prob=latent.mix_prob,
                     seed=seed, **options)


def _arm_and_data(
    arm: str, seed: int, task: Task, splits: dict[str, list[Example]], model_config: ModelConfig, train: TrainConfig,
    pause_tokens: int, latent: LatentCurriculum,
) -> tuple[SFT | LatentSFT, ReasoningDataModule]:
    """An arm's module (`_arm_module`) and the splits tokenized by its reasoner."""
    module = _arm_module(arm, seed, model_config, task, train, pause_tokens, latent)
    data = ReasoningDataModule(module.reasoner.tokenize, splits["train"], splits["val"], splits["test"],
                               pad_token_id=module.reasoner.tokenizer.pad_token_id, batch_size=train.batch_size,
                               eval_batch_size=train.eval_batch_size)
    return module, data


def _train_and_test(
    arm: str, seed: int, task: Task, splits: dict[str, list[Example]], model_config: ModelConfig, train: TrainConfig,
    settings: FitSettings, pause_tokens: int, latent: LatentCurriculum, save_checkpoints: bool, cell: Cell,
) -> Rows:
    """Train one arm with one seed in its cell, score the test split: the cell's row of `results`."""
    module, data = _arm_and_data(arm, seed, task, splits, model_config, train, pause_tokens, latent)
    fitted = cell.fit(module, data, settings)
    if save_checkpoints:
        module.reasoner.save_pretrained(cell.model_dir)
    test = fitted.trainer.test(module, data, verbose=False)[0]
    return {"results": [_test_row(arm, seed, test, module, fitted.seconds, fitted.steps)]}


def _score_untrained(arm: str, seed: int, task: Task, splits: dict[str, list[Example]], model_config: ModelConfig,
                     train: TrainConfig, settings: FitSettings, pause_tokens: int, latent: LatentCurriculum,
                     cell: Cell) -> Rows:
    """Score the checkpoint in `arm`'s format as it is, before any training: the cell's row of `untrained`."""
    module, data = _arm_and_data(arm, seed, task, splits, model_config, train, pause_tokens, latent)
    return {"untrained": [_test_row(arm, seed, cell.score_as_is(module, data, settings), module, 0.0, 0)]}


def _test_row(arm: str, seed: int, test: dict[str, float], module: SFT | LatentSFT, seconds: float,
              steps: int) -> dict[str, Any]:
    """One row of scores from an arm's test metrics."""
    return {
        "arm": arm, "seed": seed,
        **Proportion(int(test["test/accuracy_hits"]), int(test["test/accuracy_total"])).columns("accuracy"),
        "step_validity": test.get("test/step_validity", float("nan")),
        "trace_closed": test.get("test/trace_closed", float("nan")),
        "tokens_generated": test["test/tokens_generated"], "train_time_s": round(seconds, 1),
        "steps": steps, "parameters": count_parameters(module.reasoner.model),
    }


def _report(results: list[dict[str, Any]], untrained: list[dict[str, Any]], task: TaskConfig, model: ModelConfig,
            train: TrainConfig, latent: LatentCurriculum, has_stages: bool, base_rate: tuple[str, Proportion]) -> str:
    model_name = model.checkpoint or f"{model.family}-{model.size}"
    metrics = ["accuracy", "step_validity", "trace_closed", "tokens_generated", "train_time_s"]
    published = {"Coconut, ProsQA, GPT-2 (published accuracy)": PUBLISHED_PROSQA}
    curriculum = (f"Latent arms: {latent.thoughts_per_step} thought(s) per replaced step, stages 0 … "
                  f"{latent.max_stage} then the final stage ({latent.max_stage * latent.thoughts_per_step} thoughts, "
                  f"no language step), {latent.steps_per_stage(train.max_steps)} steps per stage.\n")
    stages = "\n![validation accuracy per curriculum stage](accuracy_vs_stage.png)\n" if has_stages else ""
    arms = {row["arm"] for row in results}
    headline = ("## With a visible trace vs without one\n\nTest accuracy in % [95% Wilson interval] (correct/total) "
                f"per seed, same test problems:\n\n{paired_table(results, 'arm', 'cot', 'none', 'accuracy')}\n"
                f"Always giving the commonest training answer (`{base_rate[0]}`) scores "
                f"{interval_cell(base_rate[1].columns('rate'), 'rate')} of the test problems.\n"
                if {"cot", "none"} <= arms else "")
    return f"""# Reasoning modes on {task.name}

{headline}{_untrained_section(untrained)}
## Every arm after training

Task: `{task.name}` {task.options}; {task.n_train} training, {task.n_val} validation and {task.n_test} test problems (disjoint).
Model: `{model_name}`, trained from {'the checkpoint' if model.checkpoint else 'scratch'} for {train.max_steps} steps of {train.batch_size} examples.
{curriculum if has_stages else ""}Accuracy, step validity and traces closed (written traces that reached `</think>`) in %, mean ± std over seeds;
tokens generated per test answer (thoughts included).
The published column is Coconut's Table 1 (Hao et al. 2024) on ProsQA with GPT-2: a reference point for the
ProsQA preset, not a target for tiny models or other tasks.

{summary_table(results, "arm", metrics, percent=["accuracy", "step_validity", "trace_closed"],
              extra_columns=published)}
## Per seed (accuracy with 95% Wilson interval)

{per_seed_table(results, ["arm", "seed"], [("accuracy", "accuracy")])}
![validation accuracy vs training step](accuracy_vs_step.png)
{stages}"""


def _untrained_section(untrained: list[dict[str, Any]]) -> str:
    """The checkpoint's scores in each written format before any training (empty for a model from scratch)."""
    if not untrained:
        return ""
    lines = "".join(f"| {row['arm']} | {interval_cell(row, 'accuracy')} | {_percent(row['trace_closed'])} | "
                    f"{float(row['tokens_generated']):.1f} |\n" for row in untrained)
    return ("\n## The checkpoint before training\n\nTest accuracy in % [95% Wilson interval] (correct/total), traces "
            "closed in %, and tokens generated per answer, with greedy decoding in each arm's format:\n\n"
            f"| arm | accuracy | traces closed | tokens |\n|---|---|---|---|\n{lines}")


def _percent(value: Any) -> str:
    """A rate in %, or a dash where there is none (a format without a trace closes none)."""
    return "—" if math.isnan(float(value)) else f"{100 * float(value):.1f}"


if __name__ == "__main__":
    from recipes.cli import run

    run(main, RECIPE)
