"""Log-probabilities (and entropies) of given tokens under a linear head, without ``[tokens, vocab]`` logits.

For token ``i`` with label ``y`` and ``s = (hidden_i @ weight.T) / temperature``:

    logprob_i = s[y] - lse(s)
    entropy_i = lse(s) - sum_j p_j s_j        (p = softmax(s))

Both are differentiable through ``hidden`` and ``weight``. DPO, GRPO and KL
terms use them. Positions whose label is ``ignore_index`` (prompt tokens,
padding) get logprob 0 and entropy 0, receive no gradient and cost no compute:
that makes ``(logprobs * mask).sum(-1)``-style sequence scores work unchanged.

The backward recomputes the logits tile-wise (the upstream gradients of both
outputs are only known then) through the shared softmax primitive. A loss whose
per-token gradient is known during the forward (GRPO's first iteration) takes
its head gradients in one pass with ``policy_loss.linear_policy_loss`` instead.
"""

from __future__ import annotations

import torch

from . import linear_softmax
from .dispatch import primitive, resolve_impl
from .validation import check_kernel_dtype, flatten_tokens


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    impl: str | None = None,
    check_labels: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(hidden @ weight.T / temperature)[labels]``, shaped like ``labels``.

    Returns fp32 log-probabilities (fp64 for fp64 inputs), or ``(logprobs, entropy)``
    with ``return_entropy=True``. ``ignore_index`` positions hold 0 in both.
    ``impl`` and ``check_labels`` behave as in ``linear_cross_entropy``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    h, y, _ = flatten_tokens(hidden, weight, labels, ignore_index=ignore_index, check_labels=check_labels)
    path = resolve_impl(impl, hidden.device)
    if path == "reference":
        logprobs, entropy = token_logprobs_reference(h, weight, y, temperature=temperature, ignore_index=ignore_index)
    else:
        if path == "triton":
            check_kernel_dtype(hidden)
        logprobs, entropy = _LinearTokenLogprobs.apply(
            h, weight, y, ignore_index, 1.0 / float(temperature), return_entropy, path
        )
    if return_entropy:
        return logprobs.reshape(labels.shape), entropy.reshape(labels.shape)
    return logprobs.reshape(labels.shape)


class _LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, inv_temperature, with_entropy, path):
        backend = primitive(path)
        rows = backend.compact(labels != ignore_index)
        stats = backend.stats(
            hidden, weight, None, labels, rows, inv_temperature=inv_temperature, mean_logit=with_entropy
        )
        acc = linear_softmax.accumulator_dtype(hidden.dtype)
        zeros = torch.zeros(labels.shape, dtype=acc, device=hidden.device)
        logprobs = zeros.index_copy(0, rows.index, stats.target_logit - stats.lse)
        entropy = zeros.index_copy(0, rows.index, stats.lse - stats.mean_logit) if with_entropy else zeros
        saved_mean = stats.mean_logit if with_entropy else stats.lse.new_empty(0)
        ctx.save_for_backward(hidden, weight, labels, rows.index, stats.lse, saved_mean)
        ctx.rows_count, ctx.inv_temperature, ctx.with_entropy, ctx.path = (
            rows.count, inv_temperature, with_entropy, path
        )
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, labels, index, lse, mean_logit = ctx.saved_tensors
        g_lp = grad_logprobs.index_select(0, index)
        if ctx.with_entropy:
            g_ent = grad_entropy.index_select(0, index)
            # d entropy / ds_j = -p_j (s_j - E_p[s]);  d logprob / ds_j = [j == y] - p_j
            coefficients = (g_ent * mean_logit - g_lp, -g_ent, g_lp)
        else:
            coefficients = (-g_lp, None, g_lp)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False)
        d_hidden, d_weight, _ = primitive(ctx.path).grads(
            hidden, weight, None, labels, linear_softmax.Rows(index, ctx.rows_count), lse, coefficients,
            inv_temperature=ctx.inv_temperature, needs=needs,
        )
        return (
            d_hidden,
            d_weight.to(weight.dtype) if d_weight is not None else None,
            None, None, None, None, None,
        )


def token_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive reference: materialised ``log_softmax`` in the inputs' dtype. Tests and benchmarks only."""
    logp = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    active = labels != ignore_index
    target = logp.gather(-1, labels.clamp(0, weight.shape[0] - 1).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    acc = linear_softmax.accumulator_dtype(hidden.dtype)
    return torch.where(active, target, 0.0).to(acc), torch.where(active, entropy, 0.0).to(acc)
