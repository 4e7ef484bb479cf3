"""One optimizer step of each regime on a fixed global batch, under DDP or in one process: its losses and gradients.

Not a test module (pytest collects `test_*.py` only). `tests/test_ddp.py`
starts this script once per rank, as torchrun or SLURM would, with
`MASTER_ADDR`, `MASTER_PORT`, `NODE_RANK` and `LOCAL_RANK` set: Lightning
then joins the ranks it finds instead of re-running `sys.argv` (which cannot
work from inside pytest), and every case below runs in the same two processes,
so the imports are paid once per rank. The single-process reference calls
`one_step(case, devices=1)` from the test itself.

    python tests/ddp_run.py OUT_DIR CASE [CASE ...]      # once per rank, LOCAL_RANK=0 and 1

Rank r writes `{case: {"loss": its loss, "grads": {name: all-reduced grad}}}`
to OUT_DIR/rank{r}.pt. Everything runs in float64 (the model is `.double()`d
before the regime copies anything from it), so the only differences between
DDP and one process are summation order, far below the test's tolerance.

The builders at the top are the only place that knows each regime's constructor.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when run as a script

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

import framework.regimes.policy as policy_module
from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.preferences import PreferenceDataModule
from framework.data.sample import Example
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import build_word_tokenizer
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes import DPO, GRPO, SFT, LatentSFT, TokenPolicy
from framework.regimes.policy import Rollout
from framework.rollout import SamplingConfig

WORLD_SIZE = 2
GLOBAL_BATCH = 4  # the whole training set (prompts for GRPO, pairs for DPO): one optimizer step, over all ranks
NUM_GENERATIONS = 4
TASK = AdditionChain(n_terms=3, max_operand=9)  # every problem tokenizes to the same length (checked below)
TOKENIZER = build_word_tokenizer(TASK.vocabulary())
EXAMPLES = generate_splits(TASK, 0, n_train=GLOBAL_BATCH, n_val=0, n_test=0)["train"]


def _model() -> torch.nn.Module:
    # float64 before any regime deep-copies it (DPO's and GRPO's references), so both sides agree to ~1e-16.
    return build_model("llama", "1m", TOKENIZER, seed=0).double()


def _data(reasoner: Reasoner, per_rank: int) -> ReasoningDataModule:
    return ReasoningDataModule(reasoner.tokenize, EXAMPLES, [], pad_token_id=TOKENIZER.pad_token_id, batch_size=per_rank)


# -- one builder per regime: (LightningModule, data module whose train loader holds GLOBAL_BATCH items) --------


def build_sft(per_rank: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    reasoner = Reasoner(_model(), TOKENIZER, "cot")
    return SFT(reasoner, TASK, optimizer=replace(SFT.default_optimizer, warmup_steps=0)), _data(reasoner, per_rank)


def build_latent_sft(per_rank: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    latent = LatentConfig(thoughts_per_step=1, max_stage=2, step_separator=" ; ")
    reasoner = Reasoner(_model(), TOKENIZER, "latent", latent=latent)
    module = LatentSFT(reasoner, TASK, curriculum=False, optimizer=replace(LatentSFT.default_optimizer, warmup_steps=0))
    return module, _data(reasoner, per_rank)


def build_dpo(per_rank: int) -> tuple[L.LightningModule, L.LightningDataModule]:
    reasoner = Reasoner(_model(), TOKENIZER, "cot")
    data = PreferenceDataModule.from_task(TASK, reasoner.tokenize, pad_token_id=TOKENIZER.pad_token_id, n_train=GLOBAL_BATCH,
                                          n_val=0, batch_size=per_rank)
    return DPO(reasoner, TASK, optimizer=replace(DPO.default_optimizer, warmup_steps=0)), data


class FixedCompletions(TokenPolicy):
    """A token policy whose rollout teacher-forces set completions instead of sampling (sampling differs per rank).

    Completion j of training example k has `2**k + j` tokens, then EOS. The
    prompts' token totals are then distinct powers of two plus a constant, so
    however the prompts are split into two equal halves, the halves hold
    unequal numbers of action tokens.
    """

    def __init__(self, reasoner: Reasoner, examples: Sequence[Example]) -> None:
        super().__init__(reasoner)
        words = [i for i in range(len(TOKENIZER)) if i not in TOKENIZER.all_special_ids]
        self.table: dict[tuple[int, ...], list[list[int]]] = {}
        for k, example in enumerate(examples):
            self.table[tuple(reasoner.prompt_ids(example))] = [
                [words[(5 * k + 3 * j + i) % len(words)] for i in range(2**k + j)] + [TOKENIZER.eos_token_id]
                for j in range(NUM_GENERATIONS)
            ]

    def rollout(self, examples: Sequence[Example], sampling: SamplingConfig) -> Rollout:
        def fixed(module, prompt_ids, **options) -> list[list[int]]:
            # A group's G copies of a prompt are adjacent: copy i gets completion i % G of that prompt.
            return [self.table[tuple(ids)][i % NUM_GENERATIONS] for i, ids in enumerate(prompt_ids)]

        with mock.patch.object(policy_module, "sample", fixed):
            return super().rollout(examples, sampling)


def completion_length(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
    """A reward with spread inside every group (completions differ in length), so advantages are not zero."""
    return [float(len(completion)) for completion in completions]


def build_grpo(per_rank: int, loss_type: str) -> tuple[L.LightningModule, L.LightningDataModule]:
    reasoner = Reasoner(_model(), TOKENIZER, "cot")
    module = GRPO(
        reasoner, completion_length, TASK, policy=FixedCompletions(reasoner, EXAMPLES),
        num_generations=NUM_GENERATIONS, loss_type=loss_type,
        optimizer=replace(GRPO.default_optimizer, max_grad_norm=None),  # compare unclipped gradients
    )
    return module, _data(reasoner, per_rank)


BUILDERS: dict[str, Callable[[int], tuple[L.LightningModule, L.LightningDataModule]]] = {
    "sft": build_sft,
    "latent_sft": build_latent_sft,
    "dpo": build_dpo,
    "grpo-dapo": lambda per_rank: build_grpo(per_rank, "dapo"),
    "grpo-grpo": lambda per_rank: build_grpo(per_rank, "grpo"),
    "grpo-dr_grpo": lambda per_rank: build_grpo(per_rank, "dr_grpo"),
}


# -- the step ------------------------------------------------------------------------------------------------


class Capture(L.Callback):
    """This rank's loss (what it backpropagates) and the gradients the optimizer would apply (all-reduced under DDP)."""

    def __init__(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64)
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self.loss = self.loss + loss.detach().cpu().double()  # summed: GRPO may backpropagate per micro-batch

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.grads = {
            name: parameter.grad.detach().cpu().clone()
            for name, parameter in pl_module.named_parameters()
            if parameter.grad is not None
        }


def one_step(case: str, devices: int) -> dict[str, Any]:
    """Build `case` and take one optimizer step on its GLOBAL_BATCH training items over `devices` processes.

    The training set is exactly one global batch, so whatever split Lightning's DistributedSampler
    makes (it shuffles, seed 0), the ranks together hold the items one process holds.
    """
    if GLOBAL_BATCH % devices:
        raise ValueError(f"GLOBAL_BATCH={GLOBAL_BATCH} does not split over {devices} devices")
    module, data = BUILDERS[case](GLOBAL_BATCH // devices)
    capture = Capture()
    strategy: Any = "auto"
    if devices > 1:  # gloo on CPU; a rank that dies makes the other fail in minutes, not after the 30-minute default
        strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=120))
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, callbacks=[capture],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    return {"loss": capture.loss.item(), "grads": capture.grads}


def main(out: str, cases: Sequence[str]) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK"):
        if name not in os.environ:
            raise SystemExit(f"start one process per rank with {name} set (tests/test_ddp.py does)")
    results = {case: one_step(case, WORLD_SIZE) for case in cases}
    torch.save(results, Path(out) / f"rank{os.environ['LOCAL_RANK']}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
