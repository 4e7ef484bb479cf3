"""One SFT step, thoughtlab's `SFT` against TRL's `SFTTrainer`, on the same model and the same token ids.

Both sides train the same randomly initialised model (same family, size and
seed, fp32, no gradient checkpointing) on the same tokenized multiplication
problems (chain of thought, prompt tokens out of the loss: thoughtlab's
`train_on_completion`, TRL's `completion_only_loss=True` on a `completion_mask`
built from the same roles), in the same order and batch size, with the same
AdamW (learning rate, betas, weight decay, constant schedule) and gradient
clipping. The vocabulary is padded to a realistic size (32k words by default)
so the LM head weighs what it does in a real model.

Per step, after one warm-up step: the step's wall time (forward, backward,
optimizer) and the process's extra resident memory over the measured steps,
in a fresh interpreter per provider (`benchmarks.common.StepClock`). The
providers run in turn, `--repeats` times each; each cell is the median.

    python -m benchmarks.sft               # both providers, one table
    python -m benchmarks.sft --digits 4    # the 4x4 problems (longer sequences)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial

import torch

from benchmarks.common import (
    StepClock,
    compare,
    measure_in_subprocess,
    padded_word_tokenizer,
)
from framework.data.collate import collate
from framework.data.datamodule import generate_splits
from framework.data.masks import TRAIN_ON_COMPLETION
from framework.data.tasks.multiplication import Multiplication
from framework.data.tokenize import TokenizedSample
from framework.models import Reasoner, build_model

PROVIDERS = ("thoughtlab", "trl")


@dataclass(frozen=True)
class Setting:
    family: str = "llama"
    size: str = "20m"
    vocab: int = 32000  # word vocabulary padded to this size
    digits: int = 2  # a digits x digits multiplication per example
    batch: int = 16
    steps: int = 3  # measured, after one warm-up step
    lr: float = 1e-4
    seed: int = 0


def _setup(setting: Setting) -> tuple[Reasoner, list[TokenizedSample]]:
    """The model and the tokenized examples of every step, in order (the same ids for both providers)."""
    task = Multiplication(digits_a=setting.digits, digits_b=setting.digits)
    tokenizer = padded_word_tokenizer(task.vocabulary(), setting.vocab)
    reasoner = Reasoner(build_model(setting.family, setting.size, tokenizer, seed=setting.seed), tokenizer, "cot")
    problems = generate_splits(task, setting.seed, n_train=setting.batch * (setting.steps + 1), n_val=0, n_test=0)
    return reasoner, [reasoner.tokenize(example) for example in problems["train"]]


def run_thoughtlab(setting: Setting) -> dict[str, float]:
    import lightning as L

    from framework.regimes import SFT, OptimizerConfig

    reasoner, samples = _setup(setting)
    clock, losses = StepClock(), []

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.end()
            losses.append(float(outputs["loss"]))

    optimizer = OptimizerConfig(lr=setting.lr, warmup_steps=0, max_grad_norm=1.0, schedule="constant")
    module = SFT(reasoner, mask=TRAIN_ON_COMPLETION, optimizer=optimizer)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=setting.batch, shuffle=False,
        collate_fn=lambda items: collate(items, reasoner.tokenizer.pad_token_id),
    )
    trainer = L.Trainer(
        max_steps=setting.steps + 1, accelerator="cpu", precision="32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Timing()],
    )
    trainer.fit(module, train_dataloaders=loader)
    return _result(clock, losses)


def run_trl(setting: Setting) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    reasoner, samples = _setup(setting)
    trained = TRAIN_ON_COMPLETION.role_weights() > 0
    data = Dataset.from_list([
        {"input_ids": list(s.input_ids), "completion_mask": trained[torch.tensor(s.roles)].int().tolist()}
        for s in samples
    ])
    clock, losses = StepClock(), []

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, max_steps=setting.steps + 1, per_device_train_batch_size=setting.batch,
            completion_only_loss=True, gradient_checkpointing=False, bf16=False, fp16=False, packing=False,
            learning_rate=setting.lr, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.01, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0, use_cpu=True, report_to="none", logging_steps=1,
            save_strategy="no", seed=setting.seed, dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=reasoner.model, args=config, train_dataset=data,
                             processing_class=reasoner.tokenizer, callbacks=[Timing()])
        # The same order as thoughtlab's loader, so each step sees the same ids on both sides.
        trainer._get_train_sampler = lambda *args, **kwargs: torch.utils.data.SequentialSampler(data)
        trainer.train()
    return _result(clock, losses)


def _result(clock: StepClock, losses: list[float]) -> dict[str, float]:
    """Step time and peak memory, and the first step's loss: equal on both sides when they train on the same ids."""
    result = clock.result()
    return {"step_s": result["step_s"], "peak_mib": result["peak_mib"], "first_loss": losses[0]}


# One provider in a fresh interpreter (so its peak memory is its own): measure(provider, setting) -> its medians.
measure = partial(measure_in_subprocess, "benchmarks.sft")


def print_table(results: dict[str, dict[str, float]]) -> None:
    print("| provider | step s | x TRL time | peak MiB | x TRL peak | first loss |")
    print("|---|---|---|---|---|---|")
    trl = results.get("trl")
    for provider, r in results.items():
        time_ratio = f"{r['step_s'] / trl['step_s']:.2f}" if trl else "n/a"
        memory = f"{r['peak_mib'] / trl['peak_mib']:.2f}" if trl else "n/a"
        print(f"| {provider} | {r['step_s']:.3f} | {time_ratio} | {r['peak_mib']:.0f} | {memory} | "
              f"{r['first_loss']:.4f} |")


def main() -> None:
    compare(__doc__.splitlines()[0], Setting, {"thoughtlab": run_thoughtlab, "trl": run_trl}, measure, print_table)


if __name__ == "__main__":
    main()
