"""Cross-entropy of a linear head without materialising ``[tokens, vocab]`` logits.

Per token ``i`` with label ``y`` and transformed logits ``s = T(hidden_i @ weight.T + bias)``
(``T`` is Gemma-2 softcapping ``c * tanh(z / c)`` or the identity):

    loss_i = lse(s) - s[y] + z_loss * lse(s)^2        (PaLM z-loss)

Tokens whose label is ``ignore_index`` or whose weight is 0 are *inactive*:
they are dropped before any logit is computed, so a trace with 90% of its
tokens masked costs about a tenth of the work.

Paths (see ``dispatch``): ``torch`` takes gradients in the same chunked pass as
the loss for ``mean``/``sum`` (the upstream gradient is a scalar applied in
backward), and recomputes the logits tile-wise in backward for ``none``. The
``triton`` path always recomputes in backward. ``reference`` materialises.
"""

from __future__ import annotations

import torch

from . import linear_softmax
from .dispatch import primitive, resolve_impl
from .validation import check_kernel_dtype, flatten_tokens

REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    z_loss: float = 0.0,
    bias: torch.Tensor | None = None,
    impl: str | None = None,
    check_labels: bool | None = None,
) -> torch.Tensor:
    """Weighted token cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels``.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]`` hidden states (fp16, bf16, fp32; fp64 off Triton).
        weight: ``[V, H]`` LM head, same dtype and device as ``hidden``.
        labels: integer ``[N]`` or ``[B, T]``; ``ignore_index`` marks tokens without a loss.
        weights: optional float per-token weights (the trace weight of ``weighted_trace``),
            shaped like ``labels``. Not differentiated.
        reduction: ``"mean"`` = sum(w * loss) / sum(w) over non-ignored tokens (0 when
            that sum is 0), ``"sum"`` = sum(w * loss), ``"none"`` = ``w * loss`` per
            token, shaped like ``labels``, 0 at inactive tokens.
        softcap: if set, logits become ``softcap * tanh(logits / softcap)``.
        z_loss: coefficient of ``lse^2`` added to each token's loss, weighted like it.
        bias: optional ``[V]`` head bias.
        impl: ``"triton"``, ``"torch"`` or ``"reference"``; overrides ``THOUGHTLAB_KERNELS``.
        check_labels: range-check labels (see ``validation.flatten_tokens``); by
            default only where it costs no host synchronisation.

    Returns the loss in fp32 (fp64 for fp64 inputs): a scalar, or per token for ``"none"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive or None, got {softcap!r}")
    h, y, w = flatten_tokens(
        hidden, weight, labels, bias=bias, weights=weights, ignore_index=ignore_index, check_labels=check_labels
    )
    path = resolve_impl(impl, hidden.device)
    if path == "reference":
        loss = linear_cross_entropy_reference(
            h, weight, y, w, ignore_index=ignore_index, reduction=reduction, softcap=softcap, z_loss=z_loss, bias=bias
        )
    else:
        if path == "triton":
            check_kernel_dtype(hidden)
        loss = _LinearCrossEntropy.apply(
            h, weight, bias, y, w if w is None else w.detach(), ignore_index, reduction, softcap, float(z_loss), path,
            torch.is_grad_enabled(),
        )
    return loss.reshape(labels.shape) if reduction == "none" else loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, weights, ignore_index, reduction, softcap, z_loss, path, grad_mode):
        backend = primitive(path)
        active = labels != ignore_index
        token_weight = active.to(linear_softmax.accumulator_dtype(hidden.dtype))
        if weights is not None:
            active &= weights != 0
            token_weight = torch.where(active, weights, 0.0).to(token_weight.dtype)
        rows = backend.compact(active)
        row_weight = token_weight.index_select(0, rows.index)
        total = token_weight.sum()
        # 1 where no token counts, so an all-masked batch gives 0 / 1, never 0 / 0.
        denominator = torch.where(total != 0, total, torch.ones_like(total)) if reduction == "mean" else None
        row_scale = row_weight / denominator if denominator is not None else row_weight
        # needs_input_grad ignores torch.no_grad(); the grad mode of the caller decides whether
        # evaluation pays for in-forward gradients.
        needs = tuple(grad_mode and n for n in ctx.needs_input_grad[:3])
        needs = (needs[0], needs[1], bias is not None and needs[2])
        fuse = path == "torch" and reduction != "none" and any(needs)

        if fuse:
            def coefficients(chunk: linear_softmax.RowStats, chunk_rows: slice):
                scale = row_scale[chunk_rows]
                return scale * (1 + 2 * z_loss * chunk.lse), None, -scale

            stats, grads = backend.stats_and_grads(
                hidden, weight, bias, labels, rows, coefficients, softcap=softcap, needs=needs
            )
        else:
            stats = backend.stats(hidden, weight, bias, labels, rows, softcap=softcap)
            grads = None
        row_loss = stats.lse - stats.target_logit
        if z_loss:
            row_loss = row_loss + z_loss * stats.lse.square()
        weighted = row_weight * row_loss

        ctx.reduction, ctx.softcap, ctx.z_loss, ctx.path, ctx.needs = reduction, softcap, z_loss, path, needs
        ctx.rows_count, ctx.dtype = rows.count, hidden.dtype
        # Fused gradients live on ctx rather than in save_for_backward so the first
        # backward can scale them in place and hand them over: a copy of an fp32
        # [V, H] buffer would double the op's peak memory. A later backward
        # through the same graph (retain_graph=True) recomputes from the inputs.
        ctx.fused_grads = grads
        ctx.save_for_backward(hidden, weight, bias, labels, rows.index, stats.lse, row_scale)
        if reduction == "none":
            return torch.zeros_like(token_weight).index_copy_(0, rows.index, weighted)
        loss = weighted.sum()
        return loss / denominator if denominator is not None else loss

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.fused_grads is not None:
            (d_hidden, d_weight, d_bias), ctx.fused_grads = ctx.fused_grads, None
        else:
            hidden, weight, bias, labels, index, lse, row_scale = ctx.saved_tensors
            rows = linear_softmax.Rows(index, ctx.rows_count)
            scale = row_scale * (grad_out.index_select(0, index) if ctx.reduction == "none" else grad_out)
            coefficients = (scale * (1 + 2 * ctx.z_loss * lse), None, -scale)
            d_hidden, d_weight, d_bias = primitive(ctx.path).grads(
                hidden, weight, bias, labels, rows, lse, coefficients, softcap=ctx.softcap, needs=ctx.needs
            )
            grad_out = None  # already folded into the coefficients
        return (
            linear_softmax.scaled_grad(d_hidden, grad_out, ctx.dtype),
            linear_softmax.scaled_grad(d_weight, grad_out, ctx.dtype),
            linear_softmax.scaled_grad(d_bias, grad_out, ctx.dtype),
            None, None, None, None, None, None, None, None,
        )


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    z_loss: float = 0.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Naive reference: materialises the logits in the inputs' dtype. Tests and benchmarks only."""
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    active = labels != ignore_index
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, labels.clamp(0, weight.shape[0] - 1).unsqueeze(-1)).squeeze(-1)
    loss = (lse - target + z_loss * lse.square()).to(linear_softmax.accumulator_dtype(hidden.dtype))
    token_weight = active.to(loss.dtype) if weights is None else active * weights.to(loss.dtype)
    weighted = torch.where(active, token_weight * loss, 0.0)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    total = token_weight.sum()
    return weighted.sum() / torch.where(total != 0, total, torch.ones_like(total))
