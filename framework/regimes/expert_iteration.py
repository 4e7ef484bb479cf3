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
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from framework.data.masks import MaskStrategy
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.data.tokenize import collate
from framework.models.reasoner import Reasoner
from framework.regimes.sft import SFT
from framework.rollout.sampling import SamplingConfig, sample

RewardFunction = Callable[..., Sequence[Any]]


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


def combined_rewards(
    funcs: Sequence[RewardFunction], weights: Sequence[float], prompts: list[str], completions: list[str], **columns: Any
) -> torch.Tensor:
    """Weighted sum of the functions' rewards per completion, None skipped; NaN where none applied."""
    per_function = torch.empty(len(completions), len(funcs))
    for j, func in enumerate(funcs):
        name = getattr(func, "__name__", type(func).__name__)
        rewards = func(prompts=prompts, completions=completions, **columns)
        if isinstance(rewards, torch.Tensor):
            rewards = rewards.tolist()
        if not isinstance(rewards, Sequence) or len(rewards) != len(completions):
            got = f"{len(rewards)} rewards" if isinstance(rewards, Sequence) else type(rewards).__name__
            raise ValueError(f"reward function {name!r} returned {got} for {len(completions)} completions")
        for i, reward in enumerate(rewards):
            if reward is not None and not (isinstance(reward, numbers.Real) and math.isfinite(reward)):
                raise ValueError(f"reward function {name!r} returned {reward!r} for completion {i}; expected a number or None")
            per_function[i, j] = math.nan if reward is None else float(reward)
    total = (per_function * torch.tensor(weights, dtype=torch.float)).nansum(dim=1)
    return total.masked_fill(per_function.isnan().all(dim=1), math.nan)


class ExpertIteration(SFT):
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
        reasoner: the policy; a text mode (cot, none, pause).
        task: checkers for validation and for `sample_accuracy`.
        reward_funcs: one or several TRL-style reward functions.
        reward_weights: one weight per function (default 1 each).
        num_samples: completions sampled per problem and round.
        threshold: keep completions whose reward is at least this (None: no threshold).
        top_k: keep at most this many per problem, the best first (None: no limit).
        rollout: how completions are sampled; `do_sample=True` for more than one sample.
        mask: which roles of a kept completion are trained on (see `framework.data.masks`).
        lr, weight_decay, betas, warmup_steps, sampling: as in `SFT` (`sampling` is for validation).
    """

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        reward_funcs: RewardFunction | Sequence[RewardFunction],
        reward_weights: Sequence[float] | None = None,
        num_samples: int = 4,
        threshold: float | None = 1.0,
        top_k: int | None = None,
        rollout: SamplingConfig = SamplingConfig(do_sample=True),
        mask: str | MaskStrategy = "train_on_completion",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 10,
        sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        super().__init__(
            reasoner, task, mask=mask, lr=lr, weight_decay=weight_decay, betas=betas,
            warmup_steps=warmup_steps, sampling=sampling,
        )
        self.save_hyperparameters(ignore=["reasoner", "task", "reward_funcs"])  # functions are not config
        funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        if not funcs or not all(callable(func) for func in funcs):
            raise ValueError(f"reward_funcs must be one or more callables, got {reward_funcs!r}")
        weights = [1.0] * len(funcs) if reward_weights is None else list(reward_weights)
        if len(weights) != len(funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(funcs)} reward functions")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if num_samples > 1 and not rollout.do_sample:
            raise ValueError("num_samples > 1 needs rollout.do_sample=True: greedy decoding repeats one completion")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.reward_funcs, self.reward_weights = funcs, weights
        self.num_samples, self.threshold, self.top_k, self.rollout = num_samples, threshold, top_k, rollout

    @torch.no_grad()
    def collect(self, examples: Sequence[Example]) -> Round:
        """Sample `num_samples` completions per example, score them, and keep the accepted ones.

        A completion cut by the length limit is never kept: it is no demonstration
        of a finished answer. Kept completions become `Example`s with the generated
        trace and answer (and the problem's metadata), ready for the reasoner's format.
        """
        tokenizer = self.reasoner.tokenizer
        repeated = [example for example in examples for _ in range(self.num_samples)]
        completion_ids = sample(
            self.model, [self.reasoner.prompt_ids(example) for example in repeated],
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, config=self.rollout,
        )
        generations = [self.reasoner.parse(ids) for ids in completion_ids]
        completions = [
            tokenizer.decode(ids[:-1] if g.finished else ids, skip_special_tokens=False)
            for ids, g in zip(completion_ids, generations)
        ]
        prompts = ["".join(segment.text for segment in self.reasoner.prompt_segments(e)) for e in repeated]
        rewards = combined_rewards(
            self.reward_funcs, self.reward_weights, prompts, completions,
            example=repeated, answer=[example.answer for example in repeated], completion_ids=completion_ids,
        ).view(len(examples), self.num_samples)
        finished = torch.tensor([g.finished for g in generations]).view_as(rewards)
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        examples = batch["examples"]
        round_ = self.collect(examples)
        self.log_dict({f"train/{name}": value for name, value in round_.metrics().items()}, batch_size=len(examples))
        if not round_.kept:
            return None
        kept = collate([self.reasoner.tokenize(example) for example in round_.kept], self.reasoner.tokenizer.pad_token_id)
        loss = self.loss({key: value.to(self.device) for key, value in kept.items()})
        self.log("train/loss", loss, prog_bar=True, batch_size=len(round_.kept))
        return loss
