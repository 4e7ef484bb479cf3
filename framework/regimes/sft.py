"""Supervised fine-tuning on role-tagged sequences, with any mask strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.probes.metrics import AnswerAccuracy, StepValidity
from framework.regimes.loss import causal_lm_loss
from framework.rollout.sampling import SamplingConfig


_RATE_KEYS = (("rate", ""), ("hits", "_hits"), ("total", "_total"), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))


class SFT(L.LightningModule):
    """Teacher-forced SFT whose validation generates and checks answers.

    The loss is `kernels.linear_cross_entropy` over the backbone's hidden
    states, so `[tokens, vocab]` logits are never materialised. Validation
    decodes every validation example with the reasoner and scores it with the
    task's checkers (exact answer match when no task is given).

    Args:
        reasoner: the model, its tokenizer and reasoning mode.
        task: supplies the answer and step checkers for validation.
        mask: which roles are trained on (see `framework.data.masks`).
        lr, weight_decay, betas: AdamW; no decay on biases and norms.
        warmup_steps: linear warm-up, then cosine decay to zero over the run.
        sampling: how validation generates (greedy by default).
    """

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        mask: str | MaskStrategy = "train_on_completion",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["reasoner", "task"])
        self.reasoner = reasoner
        self.model = reasoner.model  # registered, so Lightning moves, wraps and checkpoints it
        self.task = task
        self.mask = mask_strategy(mask)
        self.sampling = sampling
        self.accuracy = AnswerAccuracy()  # shared by validation and test; reset after each
        self.step_validity = StepValidity()
        self._tokens_generated = 0
        self._episodes = 0
        self._last_step_end: float | None = None

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels, loss_weights = self.mask.apply(batch["input_ids"], batch["roles"])
        return causal_lm_loss(self.model, batch["input_ids"], batch["attention_mask"], labels, loss_weights)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        now = time.perf_counter()
        if self._last_step_end is not None:
            tokens = batch["attention_mask"].sum()
            self.log("train/tokens_per_s", tokens / (now - self._last_step_end), batch_size=batch_size)
        self._last_step_end = now
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_step_end = None  # time between epochs is not training throughput

    def on_validation_end(self) -> None:
        self._last_step_end = None  # nor is time spent validating

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Teacher-forced loss, then generate every example and score it with the task's checkers."""
        examples = batch["examples"]
        self.log(f"{stage}/loss", self.loss(batch), batch_size=len(examples), sync_dist=True)
        self.score_generations(examples)

    def score_generations(self, examples: Sequence[Example]) -> None:
        """Generate an answer for every example and add it to this evaluation's accuracy and step validity."""
        generations = self.reasoner.generate(examples, self.sampling)
        self.accuracy.update([self._check_answer(e, g.answer) for e, g in zip(examples, generations)])
        if self.task is not None:
            self.step_validity.update([self.task.check_steps(e, g.trace) for e, g in zip(examples, generations)])
        self._tokens_generated += sum(g.num_tokens for g in generations)
        self._episodes += len(generations)

    def _log_evaluation(self, stage: str) -> None:
        accuracy = self.accuracy.compute()
        self.log_dict({f"{stage}/accuracy{suffix}": accuracy[key] for key, suffix in _RATE_KEYS})
        validity = self.step_validity.compute()
        if validity["total"] > 0:  # no-trace modes produce no steps to judge
            self.log(f"{stage}/step_validity", validity["rate"])
        if self._episodes:
            self.log(f"{stage}/tokens_generated", self._tokens_generated / self._episodes)
        self.accuracy.reset()
        self.step_validity.reset()
        self._tokens_generated = self._episodes = 0

    def _check_answer(self, example, answer: str) -> bool:
        if self.task is not None:
            return self.task.check_answer(example, answer)
        return " ".join(answer.split()) == " ".join(example.answer.split())

    def configure_optimizers(self):
        decay, no_decay = [], []
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            betas=self.hparams.betas,
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = get_cosine_schedule_with_warmup(optimizer, min(self.hparams.warmup_steps, total_steps // 2), total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
