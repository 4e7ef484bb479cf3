"""Direct preference optimisation (Rafailov et al. 2023) with TRL's `sigmoid`, `ipo` and `hinge` losses.

For a pair with chosen completion y_w and rejected y_l, the policy π and the
reference π_ref (the policy as it was before this regime):

    logits   = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))
    sigmoid: −(1 − ε)·log σ(β·logits) − ε·log σ(−β·logits)     (ε: label smoothing, cDPO)
    hinge:   max(0, 1 − β·logits)                               (RSO)
    ipo:     (logits − 1/(2β))²                                 (IPO, Azar et al. eq. 17)

and the implicit rewards are β·(log π(y) − log π_ref(y)). As in TRL, IPO
uses the mean log-prob per completion token, the others the sum. Log-probs
come from `kernels.linear_token_logprobs` through the backbone's hidden
states; no `[tokens, vocab]` logits are built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.preferences import PreferenceDataModule
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.loss import completion_logprobs
from framework.rollout.sampling import SamplingConfig

LossType = Literal["sigmoid", "ipo", "hinge"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses `[B]` and the (detached) implicit rewards of the chosen and rejected completions."""
    logits = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}")
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


@dataclass(frozen=True)
class PreferenceScores:
    """What one batch of pairs gives: per-pair losses, implicit rewards and policy log-probs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor


class DPO(Regime):
    """DPO on `PreferenceDataModule` batches; validation also generates and checks answers, as `SFT` does.

    Args:
        reasoner: the policy (a text mode); its weights at construction are the reference.
        task: answer and step checkers for validation (exact match with the chosen answer without one).
        beta: strength of the implicit KL constraint (TRL's `beta`; τ for IPO).
        loss_type: `sigmoid` (DPO), `ipo` or `hinge`.
        label_smoothing: cDPO's probability that a label is flipped; `sigmoid` only, in [0, 0.5).
        reference: `model` keeps a frozen copy of the initial policy; `precomputed` scores every pair
            of the data module once when fitting starts (no second model in memory; saved in checkpoints).
        mask: which completion roles are scored (weights multiply token log-probs); the prompt never is.
        optimizer: AdamW with linear warm-up, then cosine decay to zero over the run.
        eval_sampling: how validation generates (greedy by default).
    """

    default_optimizer = OptimizerConfig(lr=1e-4, weight_decay=0.0, warmup_steps=10)

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        reference: Literal["model", "precomputed"] = "model",
        mask: str | MaskStrategy = "train_on_completion",
        optimizer: OptimizerConfig = default_optimizer,
        eval_sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        if reasoner.latent is not None:
            raise ValueError("DPO scores the tokens of text-mode reasoners; this one is in 'latent' mode")
        super().__init__(reasoner, task, optimizer=optimizer, eval_sampling=eval_sampling)
        self.mask = mask_strategy(mask)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}")
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta!r}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
        if label_smoothing and loss_type != "sigmoid":
            raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, not {loss_type!r}")
        if reference not in ("model", "precomputed"):
            raise ValueError(f"reference must be 'model' or 'precomputed', got {reference!r}")
        if self.mask.prompt > 0:
            raise ValueError(f"mask {self.mask.name!r} scores the prompt; DPO compares completions only")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        # Held in a tuple so that it is not a submodule: Lightning and DDP/FSDP neither train, wrap, switch
        # to train mode nor checkpoint it (a resumed run rebuilds it from the same initial weights).
        self._reference: tuple[torch.nn.Module, ...] = ()
        if reference == "model":
            self._reference = (copy.deepcopy(reasoner.model).eval().requires_grad_(False),)
        # [pairs, 2]: reference log-probs of (chosen, rejected), indexed by the batches' `pair_ids`.
        self.reference_logps: torch.Tensor | None = None

    # -- scoring ------------------------------------------------------------------------------

    def sequence_logps(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Log-prob `[2B]` of each row's completion under `model` (summed; mean per token for IPO)."""
        labels, weights = self.mask.apply(batch["input_ids"], batch["roles"])
        token_logps = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], labels)
        weights = weights[:, 1:].to(token_logps.dtype)
        logps = (token_logps * weights).sum(-1)
        if self.loss_type == "ipo":
            logps = logps / weights.sum(-1).clamp_min(1e-8)
        return logps

    @property
    def reference_model(self) -> torch.nn.Module | None:
        """The frozen initial policy (`reference='model'`), or None."""
        return self._reference[0] if self._reference else None

    def reference_sequence_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.reference_model is not None:
            parameter = next(self.model.parameters())
            with torch.no_grad():
                return self.sequence_logps(self.reference_model.to(parameter.device, parameter.dtype), batch)
        if self.reference_logps is None:
            raise RuntimeError("reference log-probs are computed when fitting, validating or testing starts")
        pairs = self.reference_logps.to(self.device)[batch["pair_ids"]]
        return torch.cat([pairs[:, 0], pairs[:, 1]])

    def score(self, batch: dict[str, Any]) -> PreferenceScores:
        logps = self.sequence_logps(self.model, batch)
        reference = self.reference_sequence_logps(batch)
        n = batch["pair_ids"].shape[0]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            logps[:n], logps[n:], reference[:n], reference[n:],
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
        )
        return PreferenceScores(losses, chosen_rewards, rejected_rewards, logps[:n].detach(), logps[n:].detach())

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.score(batch).losses.mean()

    # -- steps --------------------------------------------------------------------------------

    def _preference_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        scores = self.score(batch)
        loss = scores.losses.mean()
        metrics = {
            "loss": loss,
            "rewards/chosen": scores.chosen_rewards.mean(),
            "rewards/rejected": scores.rejected_rewards.mean(),
            "rewards/accuracies": (scores.chosen_rewards > scores.rejected_rewards).float().mean(),
            "rewards/margins": (scores.chosen_rewards - scores.rejected_rewards).mean(),
            "logps/chosen": scores.chosen_logps.mean(),
            "logps/rejected": scores.rejected_logps.mean(),
        }
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            batch_size=len(scores.losses), prog_bar=False, sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._preference_step(batch, "train")

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        self._preference_step(batch, stage)
        self.score_generations(batch["examples"])

    # -- precomputed reference log-probs ------------------------------------------------------

    def on_fit_start(self) -> None:
        self._ensure_reference_logps()

    def on_validation_start(self) -> None:
        self._ensure_reference_logps()

    def on_test_start(self) -> None:
        self._ensure_reference_logps()

    @torch.no_grad()
    def _ensure_reference_logps(self) -> None:
        """Score every pair with the current (not yet updated) policy, once."""
        if self.reference_model is not None or self.reference_logps is not None:
            return
        data = self.trainer.datamodule
        if not isinstance(data, PreferenceDataModule):
            raise TypeError(
                "reference='precomputed' needs the pairs as a PreferenceDataModule passed to the Trainer "
                f"(got {type(data).__name__}); use reference='model' with other data"
            )
        was_training = self.model.training
        self.model.eval()
        reference = torch.zeros(data.num_pairs, 2)
        for loader in data.every_pair_dataloader():
            for batch in loader:
                batch = data.transfer_batch_to_device(batch, self.device, 0)
                with self.trainer.precision_plugin.forward_context():  # the precision training steps will use
                    logps = self.sequence_logps(self.model, batch).float().cpu()
                n = batch["pair_ids"].shape[0]
                reference[batch["pair_ids"].cpu()] = torch.stack([logps[:n], logps[n:]], dim=1)
        self.model.train(was_training)
        self.reference_logps = reference

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference_logps is not None:
            checkpoint["dpo_reference_logps"] = self.reference_logps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "dpo_reference_logps" in checkpoint:
            self.reference_logps = checkpoint["dpo_reference_logps"]
