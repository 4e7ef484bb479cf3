"""GRPO's tensor maths, with TRL's exact meanings: advantages, the clipped objective, KL and loss aggregation.

Shapes: N completions (G per prompt, a group's completions adjacent), T
scored positions per completion; `mask` [N, T] marks the action tokens that
count. Plain functions of tensors, so each is checked by hand on tiny inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "dr_grpo", "dapo"]
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
LOSS_TYPES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo")
STD_EPS = 1e-4  # TRL's: keeps a near-constant group from blowing its advantages up


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN with fewer than two values), as TRL's."""
    if dim is None:
        values, dim = values.reshape(-1), 0
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    count = (~values.isnan()).sum(dim=dim)
    variance = torch.nanmean((values - mean) ** 2, dim=dim) * count / (count - 1).clamp(min=1)
    return variance.sqrt().masked_fill(count < 2, torch.nan)


@dataclass(frozen=True)
class Advantages:
    advantages: torch.Tensor  # [N], 0 where the reward is NaN (no function applied)
    std: torch.Tensor  # [N] the std each advantage was (or, with "none", would have been) scaled by
    zero_std: torch.Tensor  # [N] bool: the completion's group (or batch) had no reward spread


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: ScaleRewards = "group") -> Advantages:
    """`rewards - group mean`, divided by `std + 1e-4` of the group (`"group"`), of the batch (`"batch"`), or not (`"none"`).

    NaN rewards (completions no reward function applied to) are left out of
    the group statistics and get advantage 0, as in TRL.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; expected one of {list(SCALE_REWARDS)}")
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 for group-relative advantages, got {num_generations}")
    if rewards.ndim != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {num_generations}")
    groups = rewards.view(-1, num_generations)
    mean = torch.nanmean(groups, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:  # "none" keeps the group std for the zero-spread statistic only
        std = nanstd(groups, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + STD_EPS)
    zero_std = torch.isclose(std, torch.zeros_like(std))
    return Advantages(torch.nan_to_num(advantages, nan=0.0), std, zero_std)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) on tokens sampled from π_θ: exp(r) − r − 1, r = log π_ref − log π_θ."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


@dataclass(frozen=True)
class TokenLoss:
    loss: torch.Tensor  # [N, T] per-token loss (before masking and aggregation)
    ratio: torch.Tensor  # [N, T] π_θ / π_old
    low_clipped: torch.Tensor  # [N, T] bool: ratio < 1 − ε_low with a negative advantage
    high_clipped: torch.Tensor  # [N, T] bool: ratio > 1 + ε_high with a positive advantage
    kl: torch.Tensor | None  # [N, T] k3 KL to the reference, when β > 0


def clipped_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
) -> TokenLoss:
    """−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) + β·KL per token, ρ = exp(log π_θ − log π_old)."""
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs")
    advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        kl = k3_kl(logprobs, ref_logprobs)
        loss = loss + beta * kl
    return TokenLoss(
        loss=loss,
        ratio=ratio,
        low_clipped=(ratio < 1 - epsilon_low) & (advantages < 0),
        high_clipped=(ratio > 1 + epsilon_high) & (advantages > 0),
        kl=kl,
    )


def token_weights(
    mask: torch.Tensor,
    loss_type: LossType,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Each token's weight in the aggregated loss, normaliser included: `aggregate_loss` is `(token_loss * weights).sum()`.

    Written out per token so that a loss whose gradient is taken in the forward
    pass (`kernels.linear_policy_loss`) aggregates exactly as `aggregate_loss` does.
    TRL's meanings:

    - `grpo`: each sequence's mean over its tokens, then the mean over sequences;
    - `dr_grpo`: the sum over all tokens / (sequences · `max_completion_length`);
    - `dapo`: the sum over all tokens / the number of tokens in the whole batch.

    For a micro-batch of a larger batch, pass the whole batch's
    `num_sequences` (and `num_tokens` for dapo): the micro-batch losses then
    add up to the whole batch's loss exactly, whatever the split.
    """
    mask = mask.to(dtype)
    num_sequences = mask.shape[0] if num_sequences is None else num_sequences
    if loss_type == "grpo":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / num_sequences
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return mask / (num_sequences * max_completion_length)
    if loss_type == "dapo":
        num_tokens = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=dtype, device=mask.device)
        return mask / num_tokens.clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {list(LOSS_TYPES)}")


def aggregate_loss(
    token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    *,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce per-token losses to a scalar with TRL's meaning of `loss_type` (see `token_weights`)."""
    weights = token_weights(
        mask, loss_type, max_completion_length=max_completion_length, num_sequences=num_sequences,
        num_tokens=num_tokens, dtype=token_loss.dtype,
    )
    return (token_loss * weights).sum()
