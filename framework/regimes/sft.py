"""Supervised fine-tuning on role-tagged sequences, with any mask strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from transformers import get_cosine_schedule_with_warmup

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.evaluation import GenerationEvaluation
from framework.regimes.loss import causal_lm_loss
from framework.rollout.sampling import SamplingConfig


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

    # A latent reasoner's thoughts need a forward that feeds hidden states back (LatentSFT's); a plain
    # teacher-forced pass would train on the `<latent>` embedding while evaluation feeds thoughts.
    trains_latent_reasoners: ClassVar[bool] = False

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
        if reasoner.latent is not None and not self.trains_latent_reasoners:
            raise ValueError(
                f"{type(self).__name__} trains token-level reasoners; this one is in 'latent' mode: "
                "use framework.regimes.LatentSFT, whose forward feeds the thoughts back"
            )
        super().__init__()
        self.save_hyperparameters(ignore=["reasoner", "task"])
        self.reasoner = reasoner
        self.model = reasoner.model  # registered, so Lightning moves, wraps and checkpoints it
        self.task = task
        self.mask = mask_strategy(mask)
        self.sampling = sampling
        self.evaluation = GenerationEvaluation(task)  # shared by validation and test; reset after each
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
        self.evaluation.update(self.reasoner, examples, self.sampling, step_verdicts=self._step_verdicts)

    def _log_evaluation(self, stage: str) -> None:
        self.log_dict(self.evaluation.compute(stage))
        self.evaluation.reset()

    def _step_verdicts(self, example, trace: str) -> list[bool]:
        """Validity of each generated step, by the task's step checker."""
        return self.task.check_steps(example, trace)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():  # the model, and any trainable module a subclass registers
            if parameter.requires_grad:
                # Decay the model's matrices only: not biases and norms, and not a latent projection, which
                # starts as the identity and must not be pulled towards the zero map.
                (decay if parameter.ndim >= 2 and name.startswith("model.") else no_decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            betas=self.hparams.betas,
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = get_cosine_schedule_with_warmup(optimizer, min(self.hparams.warmup_steps, total_steps // 2), total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
