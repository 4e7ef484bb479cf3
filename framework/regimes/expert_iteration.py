"""Expert iteration: sample completions, keep those the reward accepts, fine-tune on them.

A round takes a batch of problems, samples `num_samples` completions for each
from the current policy, scores them with reward functions, keeps the
accepted ones (reward >= `threshold`, and/or the `top_k` best per problem)
and takes an SFT step on them with any mask strategy. Here a round is one
training step on one batch of the data module's training problems (the
online form, as in RAFT, Dong et al. 2023): it is then an ordinary
LightningModule that runs under any Trainer, strategy and pipeline stage,
and the batch size sets how much is sampled per update. The classic offline
form (STaR, ReST-EM: sample the whole set, then several SFT epochs) is
`collect` over the set followed by an `SFT` run on the kept examples.

Sampling goes through a `Policy`, as in GRPO: a latent reasoner thinks
before it samples its answer (`LatentPolicy`), and its kept completions are
trained through its thoughts at the final stage (`LatentLoss`), the format
it sampled in; a text-mode reasoner's through `TokenLoss`.

Reward functions have TRL's signature `f(prompts, completions, **columns)`:
`prompts` is the text the model read (reasoning markup included: a `cot`
prompt ends with `<think>`), `completions` the text it wrote (`trace
</think> answer`), and the columns are `example` (the problem, with its
ground truth), `answer` (its reference answer) and `completion_ids`.
Several functions are summed with `reward_weights`, skipping None (TRL's
nansum); a completion no function applies to is never kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from framework.data.masks import MaskStrategy, mask_strategy
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.latent_policy import LatentPolicy
from framework.regimes.policy import Policy, TokenPolicy
from framework.regimes.teacher_forcing import teacher_forcing
from framework.rewards.base import RewardFunction, Rewards, reward_columns
from framework.rollout.sampling import SamplingConfig


@dataclass(frozen=True)
class Round:
    """What one round sampled and kept. Tensors are `[problems, num_samples]`."""

    kept: list[Example]
    rewards: torch.Tensor  # NaN where no reward function applied
    accepted: torch.Tensor
    correct: torch.Tensor | None  # by the task's answer checker; None without a task

    def metrics(self) -> dict[str, float]:
        """`kept`, `acceptance_rate` (kept / sampled), `reward` (mean) and `sample_accuracy` (with a task)."""
        finite = self.rewards[~self.rewards.isnan()]
        metrics = {
            "kept": float(len(self.kept)),
            "acceptance_rate": self.accepted.float().mean().item(),
            "reward": finite.mean().item() if finite.numel() else math.nan,
        }
        if self.correct is not None:
            metrics["sample_accuracy"] = self.correct.float().mean().item()
        return metrics


def select(rewards: torch.Tensor, *, threshold: float | None, top_k: int | None) -> torch.Tensor:
    """Which completions to keep, per row of `rewards` `[problems, samples]`.

    A completion needs a reward (not NaN), at least `threshold` if given, and
    to be among its problem's `top_k` best if given (ties go to the earlier sample).
    """
    accepted = ~rewards.isnan()
    if threshold is not None:
        accepted &= rewards >= threshold
    if top_k is not None:
        ranked = rewards.masked_fill(~accepted, -math.inf).argsort(dim=1, descending=True, stable=True)
        accepted &= ranked.argsort(dim=1) < top_k
    return accepted


class ExpertIteration(Regime):
    """SFT on the policy's own completions that a reward accepts, re-sampled every step.

    Training batches must hold `examples` (the problems to sample for), as
    `ReasoningDataModule`'s do. Validation and testing
    are `SFT`'s: teacher-forced loss on the reference and generated answers
    checked by the task. Every step logs `train/kept`, `train/acceptance_rate`,
    `train/reward` and, with a task, `train/sample_accuracy`.

    A round that keeps nothing skips its update (training_step returns None).
    Under DDP every rank must then skip together, so give each rank enough
    problems per batch that some completion is accepted.

    Args:
        reasoner: the policy's reasoner, in any mode (a latent one samples and trains at its final stage).
        task: checkers for validation and for `sample_accuracy`.
        reward_funcs: one or several TRL-style reward functions.
        reward_weights: one weight per function (default 1 each).
        policy: what samples the completions (its module must hold the reasoner's parameters); by default a
            `LatentPolicy` of a latent reasoner (thoughts, then a sampled answer), else a `TokenPolicy`.
        num_samples: completions sampled per problem and round.
        threshold: keep completions whose reward is at least this (None: no threshold).
        top_k: keep at most this many per problem, the best first (None: no limit).
        rollout: how completions are sampled; `do_sample=True` for more than one sample.
        mask: which roles of a kept completion are trained on (see `framework.data.masks`).
        optimizer: AdamW with linear warm-up, then cosine decay to zero over the run.
        eval_sampling: how validation generates (greedy by default).
    """

    default_optimizer = OptimizerConfig(warmup_steps=10)
    runtime_arguments = ("reward_funcs", "policy")  # functions and models are not configuration

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        reward_funcs: RewardFunction | Sequence[RewardFunction],
        reward_weights: Sequence[float] | None = None,
        policy: Policy | None = None,
        num_samples: int = 4,
        threshold: float | None = 1.0,
        top_k: int | None = None,
        rollout: SamplingConfig = SamplingConfig(do_sample=True),
        mask: str | MaskStrategy = "train_on_completion",
        optimizer: OptimizerConfig = default_optimizer,
        eval_sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        super().__init__(reasoner, task, optimizer=optimizer, eval_sampling=eval_sampling)
        self.rewards = Rewards(reward_funcs, reward_weights)
        if policy is None:
            policy = LatentPolicy(reasoner) if reasoner.latent is not None else TokenPolicy(reasoner)
        elif not isinstance(policy, Policy):
            raise ValueError(f"policy {policy!r} lacks the Policy interface (module, rollout, logprobs)")
        self.policy = policy
        self.mask = mask_strategy(mask)
        self.objective = teacher_forcing(reasoner, self.mask)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples > 1 and not rollout.do_sample:
            raise ValueError("num_samples > 1 needs rollout.do_sample=True: greedy decoding repeats one completion")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.num_samples, self.threshold, self.top_k, self.rollout = num_samples, threshold, top_k, rollout

    @torch.no_grad()
    def collect(self, examples: Sequence[Example]) -> Round:
        """Sample `num_samples` completions per example, score them, and keep the accepted ones.

        A completion cut by the length limit is never kept: it is no demonstration
        of a finished answer. Kept completions become `Example`s with the generated
        trace and answer (and the problem's metadata), ready for the reasoner's format.
        """
        repeated = [example for example in examples for _ in range(self.num_samples)]
        rollout = self.policy.rollout(repeated, self.rollout)
        generations = [self.reasoner.parse(ids) for ids in rollout.completion_ids]
        rewards = self.rewards.score(
            rollout.prompts, rollout.completions, **reward_columns(rollout.examples, rollout.completion_ids)
        ).total.view(len(examples), self.num_samples)
        finished = ~rollout.truncated.view_as(rewards)
        accepted = select(rewards, threshold=self.threshold, top_k=self.top_k) & finished
        kept = [
            Example(example.prompt, generation.trace, generation.answer, metadata=example.metadata)
            for example, generation, keep in zip(repeated, generations, accepted.flatten().tolist())
            if keep
        ]
        correct = None
        if self.task is not None:
            correct = torch.tensor([self.task.check_answer(e, g.answer) for e, g in zip(repeated, generations)])
            correct = correct.view_as(rewards)
        return Round(kept, rewards, accepted, correct)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective(self.model, batch)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Evaluation batches in the format the loss reads (a latent reasoner's at its stage); a training batch
        is only its problems."""
        if self.trainer.training or not isinstance(batch, dict) or "examples" not in batch:
            return batch
        return self.objective.prepare(batch)

    def on_fit_start(self) -> None:
        # A latent reasoner samples, trains and validates at its final stage: a completion sampled earlier writes
        # language steps, which a kept example could not split back into the `Example.steps` its stage needs.
        if self.reasoner.latent is not None:
            self.reasoner.stage = self.reasoner.latent.final_stage

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        examples = batch["examples"]
        round_ = self.collect(examples)
        self.log_dict({f"train/{name}": value for name, value in round_.metrics().items()}, batch_size=len(examples))
        if not round_.kept:
            return None
        kept = self.objective.batch(round_.kept)
        loss = self.loss({key: value.to(self.device) for key, value in kept.items()})
        self.log("train/loss", loss, prog_bar=True, batch_size=len(round_.kept))
        return loss
