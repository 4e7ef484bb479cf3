"""One GRPO step, thoughtlab's `GRPO` against TRL's `GRPOTrainer`, on the same model, data and settings.

Both sides train the same randomly initialised model (same family, size and
seed) on the same prompts with the same reward function, group size,
completion length, sampling (temperature 1, no top-k/top-p), loss (`dapo`,
β = 0, one iteration), AdamW learning rate and gradient clipping, in fp32
without gradient checkpointing. The
vocabulary is padded to a realistic size (32k words by default) so the LM
head weighs what it does in a real model.

Per step, after one warm-up step:

- rollout: generating the completions and scoring them (TRL: the time inside
  `_generate_and_score_completions`; thoughtlab: the logged `train/rollout_s`);
- update: everything else in the step (forward, backward, optimizer);
- completion tokens: the mean length of the step's completions, as each side
  logs it (both should be near `max_new_tokens`: a random model rarely writes
  EOS, and a side that stopped earlier would be timed on less work);
- peak: the process's extra resident memory over the measured steps
  (`VmHWM` after `malloc_trim` and a `clear_refs` reset at the end of the
  warm-up step, minus `VmRSS` then), in a fresh interpreter per provider.

The machine's speed drifts when it is shared, so the providers run in turn,
`--repeats` times each, and each cell is the median over those runs.

    python -m benchmarks.grpo              # both providers, one table
    python -m benchmarks.grpo --terms 24   # longer prompts, nearer a chat template's (a group shares its prompt)
    python -m benchmarks.grpo --provider trl --json   # one provider, machine-readable
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial

import torch

from benchmarks.common import (
    StepClock,
    compare,
    measure_in_subprocess,
    padded_word_tokenizer,
)
from framework.data.datamodule import generate_splits
from framework.data.tasks import AdditionChain
from framework.models import Reasoner, build_model

PROVIDERS = ("thoughtlab", "trl")


@dataclass(frozen=True)
class Setting:
    family: str = "llama"
    size: str = "20m"
    vocab: int = 32000  # word vocabulary padded to this size
    prompts: int = 4  # per step
    group: int = 8  # completions per prompt
    max_new_tokens: int = 32
    terms: int = 3  # operands per prompt's sum: 3 gives ~7 prompt tokens; 24 a chat-length prompt of ~49
    steps: int = 3  # measured, after one warm-up step
    lr: float = 1e-6
    seed: int = 0


def exact_answer(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """The same TRL-signature reward on both sides: is the completion's last word the answer."""
    return [float(bool(c.split()) and c.split()[-1] == a) for c, a in zip(completions, answer)]


def _setup(setting: Setting):
    task = AdditionChain(n_terms=setting.terms, max_operand=9)
    tokenizer = padded_word_tokenizer(task.vocabulary(), setting.vocab)
    model = build_model(setting.family, setting.size, tokenizer, seed=setting.seed)
    reasoner = Reasoner(model, tokenizer, "cot")
    n_prompts = setting.prompts * (setting.steps + 1)
    examples = generate_splits(task, setting.seed, n_train=n_prompts, n_val=0, n_test=0)["train"]
    return reasoner, examples


def run_thoughtlab(setting: Setting) -> dict[str, float]:
    import lightning as L

    from framework.regimes.grpo import GRPO
    from framework.rollout import SamplingConfig

    reasoner, examples = _setup(setting)
    clock = StepClock()

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.completion_tokens.append(float(trainer.callback_metrics["train/completions/mean_length"]))
            clock.end(float(trainer.callback_metrics["train/rollout_s"]))

    module = GRPO(
        reasoner, exact_answer, num_generations=setting.group, loss_type="dapo", scale_rewards="group",
        sampling=SamplingConfig(max_new_tokens=setting.max_new_tokens, do_sample=True),
        optimizer=replace(GRPO.default_optimizer, lr=setting.lr),
    )
    loader = torch.utils.data.DataLoader(examples, batch_size=setting.prompts, shuffle=False, collate_fn=list)
    trainer = L.Trainer(
        max_steps=setting.steps + 1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timing()],
    )
    torch.manual_seed(setting.seed)
    trainer.fit(module, train_dataloaders=loader)
    return clock.result()


def run_trl(setting: Setting) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    reasoner, examples = _setup(setting)
    data = Dataset.from_list(
        [{"prompt": "".join(s.text for s in reasoner.prompt_segments(e)), "answer": e.answer} for e in examples]
    )
    clock = StepClock()
    rollout = {"s": 0.0}

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            rollout["s"] = 0.0
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end(rollout["s"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:  # logged once per step (logging_steps=1)
                clock.completion_tokens.append(float(logs["completions/mean_length"]))

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, max_steps=setting.steps + 1, per_device_train_batch_size=setting.prompts * setting.group,
            num_generations=setting.group, steps_per_generation=1, max_completion_length=setting.max_new_tokens,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group",
            # fp32 without gradient checkpointing, as thoughtlab trains here (TRL 1.16 defaults to bf16 and checkpointing,
            # which on a CPU without bf16 arithmetic made its update about 5x slower, not a like-for-like comparison)
            bf16=False, fp16=False, gradient_checkpointing=False,
            learning_rate=setting.lr, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
            use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", shuffle_dataset=False,
            seed=setting.seed, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=reasoner.model, reward_funcs=exact_answer, args=config, train_dataset=data,
            processing_class=reasoner.tokenizer, callbacks=[Timing()],
        )
        generate_and_score = trainer._generate_and_score_completions

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return generate_and_score(*args, **kwargs)
            finally:
                rollout["s"] += time.perf_counter() - start

        trainer._generate_and_score_completions = timed
        trainer.train()
    return clock.result()


# One provider in a fresh interpreter (so its peak memory is its own): measure(provider, setting) -> its medians.
measure = partial(measure_in_subprocess, "benchmarks.grpo")


def print_table(results: dict[str, dict[str, float]]) -> None:
    print("| provider | rollout s | update s | step s | steps/s | x TRL steps/s | peak MiB | x TRL peak "
          "| completion tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    trl = results.get("trl")
    for provider, r in results.items():
        speedup = f"{trl['step_s'] / r['step_s']:.2f}" if trl else "n/a"
        memory = f"{r['peak_mib'] / trl['peak_mib']:.2f}" if trl else "n/a"
        print(f"| {provider} | {r['rollout_s']:.3f} | {r['update_s']:.3f} | {r['step_s']:.3f} | "
              f"{1 / r['step_s']:.2f} | {speedup} | {r['peak_mib']:.0f} | {memory} | "
              f"{r.get('completion_tokens', float('nan')):.1f} |")


def main() -> None:
    compare(__doc__.splitlines()[0], Setting, {"thoughtlab": run_thoughtlab, "trl": run_trl}, measure, print_table)


if __name__ == "__main__":
    main()
