"""Group Relative Policy Optimization, with TRL's `GRPOTrainer` semantics, as a LightningModule.

One Lightning training step takes one batch of prompts and:

1. samples G completions per prompt from the current policy (`Policy.rollout`);
2. scores them with the reward functions and turns the weighted rewards into
   group-relative advantages (`scale_rewards`);
3. takes `num_iterations` optimizer steps on that rollout batch with the
   clipped objective (ε_low/ε_high) against the log-probs the batch was
   sampled with, plus β·KL to a frozen reference when β > 0, aggregated per
   `loss_type`.

As in TRL, `trainer.global_step` counts optimizer steps: a rollout batch
yields `num_iterations` of them. Log-probs come from `kernels.linear_token_logprobs`
over backbone hidden states, never from `[tokens, vocab]` logits. With one
iteration the ratio is 1 and each token's gradient coefficient is known before
scoring, so the loss comes from `kernels.linear_policy_loss`, which takes the
head's gradients in its forward pass instead of recomputing the logits.

Under DDP each rank samples and normalises its own prompts' groups (groups
never straddle ranks; `scale_rewards="batch"` uses the rank's batch std).
`dapo` divides by the token count of all ranks over W, as TRL does, so the
averaged gradient is the one-process gradient of the global batch whatever
each rank's count; `grpo` and `dr_grpo` normalise per sequence and by a
constant, which matches with equal sequence counts per rank
(`tests/test_ddp.py`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.grpo_loss import (
    LOSS_TYPES,
    SCALE_REWARDS,
    LossType,
    ScaleRewards,
    TokenLoss,
    clipped_token_loss,
    group_advantages,
    nanstd,
    token_weights,
)
from framework.regimes.latent_policy import LatentPolicy
from framework.regimes.loss import FusedPolicyLoss, fused_policy_loss
from framework.regimes.policy import Policy, Rollout, TokenPolicy
from framework.rewards.base import RewardFunction, Rewards, reward_columns
from framework.rollout.sampling import SamplingConfig

ROLLOUT_SAMPLING = SamplingConfig(max_new_tokens=64, do_sample=True)
GREEDY = SamplingConfig()


class GRPO(Regime):
    """GRPO on a reasoner's own samples. Training batches are prompts: a dict with `examples`
    (a `ReasoningDataModule` batch) or a plain list of `Example`s.

    Args:
        reasoner: the model, its tokenizer and mode; validation generates with it.
        rewards: TRL-signature reward functions (or a `Rewards`), combined with `reward_weights`.
        task: its checkers score validation (accuracy with a Wilson interval, step validity).
        policy: what samples and re-scores completions; by default a `LatentPolicy` of a latent reasoner
            (actions: the tokens after `<eot>`, thoughts differentiable), else a `TokenPolicy`.
        num_generations: G, completions per prompt (>= 2).
        scale_rewards: divide advantages by the std of the `"group"`, of the `"batch"`, or `"none"`.
        loss_type: `"grpo"`, `"dr_grpo"` or `"dapo"` aggregation (see `grpo_loss.aggregate_loss`).
        epsilon, epsilon_high: clip range [1 - epsilon, 1 + epsilon_high]; epsilon_high defaults to epsilon.
        beta: KL coefficient; a frozen reference exists only when beta > 0.
        reference: the frozen reference (a module like `policy.module`); a copy of the starting policy by default.
        num_iterations: optimizer steps per rollout batch (TRL's μ), each against the sampling-time log-probs.
        mask_truncated_completions: leave completions cut by `sampling.max_new_tokens` out of the loss.
        mini_batch_size: completions per forward/backward (gradients accumulate into one step); all at once by default.
        sampling: how rollouts sample (must sample; its temperature also scales the scored log-probs).
        eval_sampling: how validation generates (greedy by default).
        optimizer: AdamW with linear warm-up to a constant rate and gradient-norm clipping (TRL's defaults but
            for the constant schedule).
    """

    default_optimizer = OptimizerConfig(
        lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, schedule="constant"
    )
    runtime_arguments = ("rewards", "policy", "reference")  # functions and models are not configuration

    def __init__(
        self,
        reasoner: Reasoner,
        rewards: RewardFunction | Sequence[RewardFunction] | Rewards,
        task: Task | None = None,
        *,
        reward_weights: Sequence[float] | None = None,
        policy: Policy | None = None,
        num_generations: int = 8,
        scale_rewards: ScaleRewards = "group",
        loss_type: LossType = "dapo",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        beta: float = 0.0,
        reference: torch.nn.Module | None = None,
        num_iterations: int = 1,
        mask_truncated_completions: bool = False,
        mini_batch_size: int | None = None,
        sampling: SamplingConfig = ROLLOUT_SAMPLING,
        eval_sampling: SamplingConfig = GREEDY,
        optimizer: OptimizerConfig = default_optimizer,
    ) -> None:
        _check_settings(num_generations, scale_rewards, loss_type, epsilon, epsilon_high, beta, num_iterations,
                        mini_batch_size, sampling)
        if isinstance(rewards, Rewards):
            if reward_weights is not None:
                raise ValueError("reward_weights: pass the weights to the Rewards object itself, not to GRPO as well")
            self.rewards = rewards
        else:
            self.rewards = Rewards(rewards, reward_weights)
        if policy is None:
            policy = LatentPolicy(reasoner) if reasoner.latent is not None else TokenPolicy(reasoner)
        elif not isinstance(policy, Policy):
            raise ValueError(f"policy {policy!r} lacks the Policy interface (module, rollout, logprobs)")
        super().__init__(reasoner, task, optimizer=optimizer, eval_sampling=eval_sampling, module=policy.module)
        self.policy = policy
        self.sampling = sampling
        self.epsilon_low = epsilon
        self.epsilon_high = epsilon if epsilon_high is None else epsilon_high
        if reference is not None and beta == 0:
            raise ValueError("reference was given but beta is 0: the reference only serves the KL term (set beta > 0)")
        self.reference: torch.nn.Module | None = None
        if beta > 0:
            self.reference = reference if reference is not None else copy.deepcopy(policy.module)
            self.reference.requires_grad_(False).eval()
        self.automatic_optimization = False  # one step = one rollout batch and its num_iterations updates

    def train(self, mode: bool = True) -> GRPO:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: no dropout, whatever mode Lightning puts the module in
        return self

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any] | Sequence[Example], batch_idx: int) -> None:
        examples = batch["examples"] if isinstance(batch, dict) else list(batch)
        G = self.hparams.num_generations
        start = time.perf_counter()
        rollout = self.policy.rollout([e for e in examples for _ in range(G)], self.sampling)
        scores = self.rewards.score(
            rollout.prompts, rollout.completions, **reward_columns(rollout.examples, rollout.completion_ids)
        )
        total = scores.total.to(self.device)
        advantages = group_advantages(total, G, self.hparams.scale_rewards)
        mask = self.loss_mask(rollout)
        needs_old = self.hparams.num_iterations > 1  # else the old log-probs are the current ones, detached (TRL)
        old = self._logprobs_without_grad(self.model, rollout) if needs_old else None
        ref = self._logprobs_without_grad(self.reference, rollout) if self.reference is not None else None
        rollout_seconds = time.perf_counter() - start

        start = time.perf_counter()
        loss, stats = self._update(rollout, advantages.advantages, mask, old, ref)
        update_seconds = time.perf_counter() - start

        metrics = {
            "train/loss": loss,
            "train/reward": torch.nanmean(total).item(),
            "train/reward_std": nanstd(total).item(),
            "train/frac_reward_zero_std": advantages.zero_std.float().mean().item(),
            "train/completions/mean_length": float(sum(map(len, rollout.completion_ids)) / len(rollout)),
            "train/completions/clipped_ratio": rollout.truncated.float().mean().item(),
            "train/rollout_s": rollout_seconds,
            "train/update_s": update_seconds,
            **{f"train/{key}": value for key, value in stats.items()},
        }
        for j, name in enumerate(scores.names):
            metrics[f"train/rewards/{name}/mean"] = torch.nanmean(scores.per_function[:, j]).item()
            metrics[f"train/rewards/{name}/std"] = nanstd(scores.per_function[:, j]).item()
        self.log_dict(metrics, batch_size=len(examples))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, list) and all(isinstance(item, Example) for item in batch):
            return batch  # a plain list of prompts: nothing to move (Lightning cannot walk frozen dataclasses)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def loss_mask(self, rollout: Rollout) -> torch.Tensor:
        """The action positions that count in the loss: all, or only those of completions that ended (TRL's
        `mask_truncated_completions`); masked rows still count as sequences for `grpo`/`dr_grpo`, as in TRL."""
        if not self.hparams.mask_truncated_completions:
            return rollout.action_mask
        return rollout.action_mask & ~rollout.truncated.to(rollout.action_mask.device).unsqueeze(1)

    def _update(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
    ) -> tuple[float, dict[str, float]]:
        """`num_iterations` optimizer steps on one rollout batch; returns the mean loss and TRL's statistics."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        # DDP averages gradients over W ranks: dividing by the global token count / W (TRL's normaliser) makes
        # dapo's step the one-process step of the global batch even when ranks hold unequal token counts.
        num_sequences = len(rollout)
        num_tokens = self.trainer.strategy.reduce(mask.sum().float(), reduce_op="mean")  # float: a gloo mean of ints truncates
        sums = {"entropy": 0.0, "kl": 0.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
                "clip_ratio/region_mean": 0.0}
        counted, loss_total = 0.0, 0.0
        for _ in range(self.hparams.num_iterations):
            for rows in self._micro_batches(len(rollout)):
                part_mask = mask[rows]
                loss_weights = token_weights(
                    part_mask, self.hparams.loss_type, max_completion_length=self.sampling.max_new_tokens,
                    num_sequences=num_sequences, num_tokens=num_tokens,
                )
                loss, entropy, terms = self._micro_batch_loss(
                    rollout.rows(rows).inputs, advantages[rows], loss_weights,
                    None if old is None else old[rows], None if ref is None else ref[rows],
                )
                self.manual_backward(loss)
                loss_total += loss.item()
                weights = part_mask.float()
                sums["entropy"] += (entropy.detach() * weights).sum().item()
                if terms.kl is not None:
                    sums["kl"] += (terms.kl.detach() * weights).sum().item()
                sums["clip_ratio/low_mean"] += (terms.low_clipped * weights).sum().item()
                sums["clip_ratio/high_mean"] += (terms.high_clipped * weights).sum().item()
                sums["clip_ratio/region_mean"] += ((terms.low_clipped | terms.high_clipped) * weights).sum().item()
                counted += weights.sum().item()
            self.clip_to_max_grad_norm(optimizer)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        stats = {key: value / max(counted, 1.0) for key, value in sums.items()}
        if self.reference is None:
            del stats["kl"]  # TRL logs kl only when there is a reference
        return loss_total / self.hparams.num_iterations, stats

    def _micro_batch_loss(
        self,
        inputs: dict[str, torch.Tensor],
        advantages: torch.Tensor,
        weights: torch.Tensor,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, TokenLoss]:
        """One micro-batch's aggregated loss (`weights` from `token_weights`), its entropies and TRL's token terms.

        With one iteration (`old` None) the ratio is 1, so each token's
        dLoss/dlogprob is known before scoring: the policy's scoring then takes
        the loss with the head's gradients in its forward pass (`FusedPolicyLoss`),
        and `terms` serve the statistics only. A policy that does not score
        through `hidden_states_logprobs` leaves the objective untaken, and the loss
        comes from its log-probs as on later iterations.
        """
        fused = None
        if old is None:
            fused = FusedPolicyLoss(advantages[:, None].expand_as(weights), weights, self.hparams.beta, ref)
        with fused_policy_loss(fused):
            logprobs, entropy = self.policy.logprobs(
                self.model, inputs, temperature=self.sampling.temperature, return_entropy=True
            )
        terms = clipped_token_loss(
            logprobs,
            logprobs.detach() if old is None else old,
            advantages,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            beta=self.hparams.beta,
            ref_logprobs=ref,
        )
        if fused is not None and fused.loss is not None:
            return fused.loss, entropy, terms
        return (terms.loss * weights).sum(), entropy, terms  # aggregate_loss, with the weights already at hand

    @torch.no_grad()
    def _logprobs_without_grad(self, module: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
        parts = [
            self.policy.logprobs(module, rollout.rows(rows).inputs, temperature=self.sampling.temperature)
            for rows in self._micro_batches(len(rollout))
        ]
        return torch.cat(parts)

    def _micro_batches(self, n: int) -> list[slice]:
        size = self.hparams.mini_batch_size or n
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Generate and score only: GRPO has no reference completions to take a teacher-forced loss on."""
        self.score_generations(batch["examples"])


def _check_settings(
    num_generations: int,
    scale_rewards: str,
    loss_type: str,
    epsilon: float,
    epsilon_high: float | None,
    beta: float,
    num_iterations: int,
    mini_batch_size: int | None,
    sampling: SamplingConfig,
) -> None:
    if not isinstance(num_generations, int) or num_generations < 2:
        raise ValueError(
            f"num_generations (the group size G) must be an integer >= 2, got {num_generations!r}: "
            "advantages are relative to the other completions of the same prompt"
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; expected one of {list(SCALE_REWARDS)}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}")
    if not epsilon >= 0 or (epsilon_high is not None and not epsilon_high >= 0):
        raise ValueError(f"epsilon and epsilon_high must be >= 0, got {epsilon!r} and {epsilon_high!r}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if mini_batch_size is not None and mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1 or None, got {mini_batch_size}")
    if not sampling.do_sample:
        raise ValueError("sampling.do_sample must be True: greedy decoding gives G identical completions per prompt")

