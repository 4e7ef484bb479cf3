"""The first-iteration policy-gradient loss of a linear head, with its gradients taken in the forward pass.

For token ``i`` with label ``y``, ``s = (hidden_i @ weight.T) / temperature`` and
``logprob_i = s[y] - lse(s)``, the loss is GRPO's clipped objective on the
iteration whose old log-probs are the current ones (ratio ``exp(logprob - logprob.detach()) = 1``,
so no clipping is active), plus a k3 KL term against given reference log-probs:

    loss = sum_i w_i * (-A_i * ratio_i + beta * (exp(r_i) - r_i - 1)),   r_i = ref_i - logprob_i

``w_i`` is the token's share of the aggregation (``grpo_loss.token_weights``:
already divided by the batch's normaliser), ``A_i`` its advantage. Its gradient
with respect to ``logprob_i`` is known as soon as ``logprob_i`` is:

    c_i = w_i * (-A_i + beta * (1 - exp(r_i)))

so, as ``linear_cross_entropy`` does for SFT, the op takes the head's gradients in
the forward pass, chunk by chunk, and its backward only scales them by the
incoming scalar gradient: the logits are computed once, not recomputed.

The log-probs (and entropies) come back too, as values for statistics only.
Positions whose label is ``ignore_index`` hold 0 and receive no gradient.

Paths (see ``dispatch``): ``torch`` takes statistics and gradients in one
chunked sweep; ``triton`` runs its statistics kernel and then its gradient
kernel inside the forward (two passes over the logits, as before; no one-pass
Triton kernel yet). ``reference`` materialises the logits and uses autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import linear_softmax
from .dispatch import primitive, resolve_impl
from .validation import check_kernel_dtype, describe, flatten_tokens


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable through hidden and weight
    logprobs: torch.Tensor  # shaped like labels, not differentiable
    entropy: torch.Tensor | None  # shaped like labels, not differentiable; None unless asked for


def linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    impl: str | None = None,
    check_labels: bool | None = None,
) -> PolicyLoss:
    """GRPO's loss at ratio 1 (plus ``beta`` times k3 KL to ``ref_logprobs``) of ``hidden @ weight.T / temperature``.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]`` hidden states.
        weight: ``[V, H]`` LM head, same dtype and device as ``hidden``.
        labels: integer, shaped like ``hidden``'s tokens; ``ignore_index`` marks positions that are not scored.
        advantages: float per token, shaped like ``labels``. Not differentiated.
        weights: float per token, shaped like ``labels``: each token's weight in the aggregated loss, the
            global normaliser included (0 for tokens outside the loss). Not differentiated.
        beta: the KL coefficient; with ``beta != 0``, ``ref_logprobs`` (shaped like ``labels``) are needed.
        temperature, return_entropy, ignore_index, impl, check_labels: as in ``linear_token_logprobs``.

    Returns the loss in fp32 (fp64 for fp64 inputs), and the log-probs and entropies as values.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs")
    h, y, w = flatten_tokens(hidden, weight, labels, weights=weights, ignore_index=ignore_index,
                             check_labels=check_labels)
    per_token = {"advantages": advantages, "ref_logprobs": ref_logprobs if beta != 0.0 else None}
    for name, tensor in per_token.items():
        if tensor is not None and (not tensor.is_floating_point() or tensor.shape != labels.shape):
            raise ValueError(f"{name} must be a float tensor shaped like labels {tuple(labels.shape)}, "
                             f"got {describe(tensor)}")
    acc = linear_softmax.accumulator_dtype(hidden.dtype)
    a = advantages.detach().reshape(-1).to(acc)
    ref = per_token["ref_logprobs"]
    ref = ref.detach().reshape(-1).to(acc) if ref is not None else None
    path = resolve_impl(impl, hidden.device)
    if path == "reference":
        loss, logprobs, entropy = policy_loss_reference(
            h, weight, y, a, w.detach().to(acc), beta=beta, ref_logprobs=ref, temperature=temperature,
            ignore_index=ignore_index,
        )
    else:
        if path == "triton":
            check_kernel_dtype(hidden)
        loss, logprobs, entropy = _LinearPolicyLoss.apply(
            h, weight, y, a, w.detach().to(acc), ref, float(beta), ignore_index, 1.0 / float(temperature),
            return_entropy, path, torch.is_grad_enabled(),
        )
    return PolicyLoss(loss, logprobs.reshape(labels.shape),
                      entropy.reshape(labels.shape) if return_entropy else None)


def _coefficients(
    logprobs: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor, beta: float, ref: torch.Tensor | None
) -> linear_softmax.Coefficients:
    """(alpha, beta, gamma) of the logit gradient ``c * ([j == y] - p_j)``, c = dLoss/dlogprob."""
    c = -advantages
    if beta != 0.0:
        c = c + beta * (1 - torch.exp(ref - logprobs))
    c = weights * c
    return -c, None, c


class _LinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, advantages, weights, ref, beta, ignore_index, inv_temperature,
                with_entropy, path, grad_mode):
        backend = primitive(path)
        rows = backend.compact(labels != ignore_index)
        row_a, row_w = advantages.index_select(0, rows.index), weights.index_select(0, rows.index)
        row_ref = ref.index_select(0, rows.index) if ref is not None else None
        # needs_input_grad ignores torch.no_grad(): the caller's grad mode decides whether gradients are taken.
        needs = (grad_mode and ctx.needs_input_grad[0], grad_mode and ctx.needs_input_grad[1], False)
        options = {"inv_temperature": inv_temperature, "mean_logit": with_entropy}
        if path == "torch" and any(needs):
            def coefficients(chunk: linear_softmax.RowStats, chunk_rows: slice) -> linear_softmax.Coefficients:
                return _coefficients(chunk.target_logit - chunk.lse, row_a[chunk_rows], row_w[chunk_rows], beta,
                                     None if row_ref is None else row_ref[chunk_rows])

            stats, grads = backend.stats_and_grads(hidden, weight, None, labels, rows, coefficients, needs=needs,
                                                   **options)
        else:
            stats = backend.stats(hidden, weight, None, labels, rows, **options)
            grads = None
            if any(needs):  # two passes (statistics, then gradients), both in the forward
                coefficients = _coefficients(stats.target_logit - stats.lse, row_a, row_w, beta, row_ref)
                grads = backend.grads(hidden, weight, None, labels, rows, stats.lse, coefficients,
                                      inv_temperature=inv_temperature, needs=needs)
        row_logprobs = stats.target_logit - stats.lse
        gain = _coefficients(row_logprobs, row_a, row_w, beta, row_ref)[2]  # dLoss/dlogprob per row
        term = -row_a
        if beta != 0.0:
            delta = row_ref - row_logprobs
            term = term + beta * (torch.exp(delta) - delta - 1)
        counted = _counted(rows, row_logprobs)
        loss = torch.where(counted, row_w * term, 0.0).sum()
        zeros = torch.zeros(labels.shape, dtype=row_logprobs.dtype, device=hidden.device)
        logprobs = zeros.index_copy(0, rows.index, torch.where(counted, row_logprobs, 0.0))
        entropy = zeros.index_copy(0, rows.index, torch.where(counted, stats.lse - stats.mean_logit, 0.0)) \
            if with_entropy else zeros
        ctx.mark_non_differentiable(logprobs, entropy)
        # Kept on ctx, not saved: the first backward scales them in place and hands them over (no [V, H] copy).
        # A later backward through the same graph (retain_graph=True) recomputes from the inputs.
        ctx.grads, ctx.dtypes = grads, (hidden.dtype, weight.dtype)
        ctx.rows_count, ctx.inv_temperature, ctx.path, ctx.needs = rows.count, inv_temperature, path, needs
        ctx.save_for_backward(hidden, weight, labels, rows.index, stats.lse, gain)
        return loss, logprobs, entropy

    @staticmethod
    def backward(ctx, grad_loss, grad_logprobs, grad_entropy):
        if ctx.grads is not None:
            (d_hidden, d_weight, _), ctx.grads = ctx.grads, None
        else:
            hidden, weight, labels, index, lse, gain = ctx.saved_tensors
            scaled = gain * grad_loss
            d_hidden, d_weight, _ = primitive(ctx.path).grads(
                hidden, weight, None, labels, linear_softmax.Rows(index, ctx.rows_count), lse, (-scaled, None, scaled),
                inv_temperature=ctx.inv_temperature, needs=ctx.needs,
            )
            grad_loss = None  # already folded into the coefficients
        return (
            linear_softmax.scaled_grad(d_hidden, grad_loss, ctx.dtypes[0]),
            linear_softmax.scaled_grad(d_weight, grad_loss, ctx.dtypes[1]),
            None, None, None, None, None, None, None, None, None, None,
        )


def _counted(rows: linear_softmax.Rows, row_values: torch.Tensor) -> torch.Tensor:
    """Which row slots count: all of them, or (Triton) the first ``rows.count``."""
    if rows.count is None:
        return torch.ones_like(row_values, dtype=torch.bool)
    return torch.arange(row_values.shape[0], device=row_values.device) < rows.count


def policy_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    *,
    beta: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Naive reference: materialised ``log_softmax`` in the inputs' dtype, autograd through the ratio and KL.

    Returns ``(loss, logprobs, entropy)``, the last two detached. Tests and benchmarks only.
    """
    logp = torch.log_softmax((hidden @ weight.T) / temperature, dim=-1)
    active = labels != ignore_index
    target = logp.gather(-1, labels.clamp(0, weight.shape[0] - 1).unsqueeze(-1)).squeeze(-1)
    acc = linear_softmax.accumulator_dtype(hidden.dtype)
    logprobs = torch.where(active, target, 0.0).to(acc)
    ratio = torch.exp(logprobs - logprobs.detach())
    term = -advantages * ratio
    if beta != 0.0:
        delta = ref_logprobs - logprobs
        term = term + beta * (torch.exp(delta) - delta - 1)
    loss = torch.where(active, weights * term, 0.0).sum()
    entropy = torch.where(active, -(logp.exp() * logp).sum(-1), 0.0).to(acc)
    return loss, logprobs.detach(), entropy.detach()
