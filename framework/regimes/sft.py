"""Supervised fine-tuning on role-tagged sequences, with any mask strategy."""

from __future__ import annotations

from typing import Any

import torch

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.teacher_forcing import TokenLoss
from framework.rollout.sampling import SamplingConfig


class SFT(Regime):
    """Teacher-forced SFT whose validation generates and checks answers.

    The loss is `kernels.linear_cross_entropy` over the backbone's hidden
    states, so `[tokens, vocab]` logits are never materialised. Validation
    decodes every validation example with the reasoner and scores it with the
    task's checkers (exact answer match when no task is given).

    Args:
        reasoner: the model, its tokenizer and reasoning mode (a text mode: latent reasoners train with `LatentSFT`).
        task: supplies the answer and step checkers for validation.
        mask: which roles are trained on (see `framework.data.masks`).
        optimizer: AdamW with linear warm-up, then cosine decay to zero over the run.
        eval_sampling: how validation generates (greedy by default).
    """

    default_optimizer = OptimizerConfig()

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        mask: str | MaskStrategy = "train_on_completion",
        optimizer: OptimizerConfig = default_optimizer,
        eval_sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        if reasoner.latent is not None:
            # A plain teacher-forced pass would train on the `<latent>` embedding while evaluation feeds thoughts.
            raise ValueError(
                "SFT trains token-level reasoners; this one is in 'latent' mode: "
                "use framework.regimes.LatentSFT, whose forward feeds the thoughts back"
            )
        super().__init__(reasoner, task, optimizer=optimizer, eval_sampling=eval_sampling)
        self.mask = mask_strategy(mask)
        self.objective = TokenLoss(reasoner, self.mask)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective(self.model, batch)
