"""Chunked plain-torch primitive shared by the fused ops: a softmax over ``hidden @ weight.T``.

Both public ops need, per token row ``i`` of ``hidden``, statistics of the
distribution ``p = softmax(s)`` over the vocabulary, where ``s`` is the
transformed logit row (softcapped, or divided by a temperature), and later the
gradient of a per-row objective. Every objective used here has a logit gradient
of one shape,

    d/ds_j = p_j * (alpha_i + beta_i * s_j) + gamma_i * [j == target_i],

so one primitive serves cross-entropy with z-loss (beta = 0) and token
log-probabilities with entropy. It walks the rows in chunks so that only a
``[chunk, V]`` block of logits exists at a time; the row chunk is sized from the
vocabulary so that block stays around ``CHUNK_ELEMENTS`` floats.

The Triton version of the same primitive is ``linear_softmax_triton``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

# About 16 MiB of fp32 logits per chunk: small next to materialised logits, large
# enough that each chunk's matmul still runs near the GEMM rate.
CHUNK_ELEMENTS = 1 << 22

Coefficients = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


class RowStats(NamedTuple):
    # Each [n], in fp32 (fp64 for fp64 inputs).
    lse: torch.Tensor  # log-sum-exp of the transformed logits
    target_logit: torch.Tensor | None  # s[target]; NaN where the target is out of range
    mean_logit: torch.Tensor | None  # E_p[s], only when asked for (entropy)


class Grads(NamedTuple):
    hidden: torch.Tensor | None  # [n, H] in hidden's dtype
    weight: torch.Tensor | None  # [V, H] accumulated in fp32 (fp64 for fp64 inputs)
    bias: torch.Tensor | None  # [V] likewise


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for the training dtypes, fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def chunk_rows_for(vocab: int, chunk_rows: int | None = None) -> int:
    if chunk_rows is not None:
        return max(1, chunk_rows)
    return max(16, CHUNK_ELEMENTS // max(vocab, 1) // 16 * 16)


def _logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None, inv_temperature: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Transformed logits of a row chunk in at least fp32, and ds/dz where it is not a constant."""
    z = h @ weight.T
    if bias is not None:
        z += bias
    s = z.to(accumulator_dtype(z.dtype))
    if softcap is not None:
        tanh = s.div_(softcap).tanh_()
        s = tanh * softcap
        # ds/dz = 1 - tanh^2, computed in place over the tanh buffer
        return s, tanh.square_().neg_().add_(1.0)
    if inv_temperature != 1.0:
        s.mul_(inv_temperature)
    return s, None


def sweep(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    inv_temperature: float = 1.0,
    mean_logit: bool = False,
    coefficients: Callable[[RowStats, slice], Coefficients] | None = None,
    lse: torch.Tensor | None = None,
    needs: tuple[bool, bool, bool] = (True, True, True),
    chunk_rows: int | None = None,
) -> tuple[RowStats | None, Grads | None]:
    """One pass over the rows of ``hidden`` (already compacted to the rows that count).

    Without ``coefficients`` it returns the row statistics only. With them it also
    returns gradients for (hidden, weight, bias) as flagged by ``needs``;
    ``coefficients`` maps each chunk's statistics and row slice to its
    (alpha, beta, gamma), so
    a loss whose coefficients depend on the log-sum-exp (z-loss) can take its
    gradient in the same pass as its value. Passing ``lse`` (saved by an earlier
    pass) skips the statistics and returns only gradients.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    step = chunk_rows_for(vocab, chunk_rows)
    safe_targets = targets.clamp(0, vocab - 1)
    in_range = safe_targets == targets
    want_stats = lse is None
    want_grads = coefficients is not None
    acc = accumulator_dtype(hidden.dtype)
    lse_out = torch.empty(n, dtype=acc, device=hidden.device) if want_stats else None
    target_out = torch.empty_like(lse_out) if want_stats else None
    mean_out = torch.empty_like(lse_out) if want_stats and mean_logit else None
    need_h, need_w, need_b = needs if want_grads else (False, False, False)
    d_hidden = torch.empty_like(hidden) if need_h else None
    # The first chunk writes the [V, H] accumulators instead of adding into zeros: no zero-fill when rows exist.
    blank = torch.zeros if n == 0 else torch.empty
    d_weight = blank(weight.shape, dtype=acc, device=weight.device) if need_w else None
    d_bias = blank(vocab, dtype=acc, device=weight.device) if need_b and bias is not None else None

    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        h = hidden[rows]
        t = safe_targets[rows]
        s, ds_dz = _logits(h, weight, bias, softcap, inv_temperature)
        chunk_target = chunk_mean = None
        if want_stats:
            chunk_target = torch.where(in_range[rows], s.gather(1, t[:, None]).squeeze(1), float("nan"))
            target_out[rows] = chunk_target
            shift = s.amax(dim=1)
        else:
            shift = lse[rows]
        # One exp per logit: exp(s - max) yields both the log-sum-exp and, once
        # normalised, the probabilities. s itself is kept only where E_p[s] or a
        # beta term needs it (entropy); otherwise the shift happens in place.
        keep_s = mean_logit or not want_stats
        p = (s - shift[:, None] if keep_s else s.sub_(shift[:, None])).exp_()
        if want_stats:
            total = p.sum(dim=1)
            chunk_lse = shift + total.log()
            lse_out[rows] = chunk_lse
            if not (mean_logit or want_grads):
                continue
            p.div_(total[:, None])
        else:
            chunk_lse = shift
        if want_stats and mean_logit:
            chunk_mean = torch.linalg.vecdot(p, s)
            mean_out[rows] = chunk_mean
        if not want_grads:
            continue
        alpha, beta, gamma = coefficients(RowStats(chunk_lse, chunk_target, chunk_mean), rows)
        assert beta is None or keep_s, "a beta term needs s: pass mean_logit or a saved lse"
        # p becomes the logit gradient in place: p * (alpha + beta * s) + gamma * onehot
        if beta is not None:
            p.mul_(s.mul_(beta[:, None]).add_(alpha[:, None]))
        else:
            p.mul_(alpha[:, None])
        p.scatter_add_(1, t[:, None], gamma[:, None].to(acc))
        if ds_dz is not None:
            p.mul_(ds_dz)
        elif inv_temperature != 1.0:
            p.mul_(inv_temperature)
        if need_h:
            d_hidden[rows] = p.to(hidden.dtype) @ weight
        first = start == 0
        if need_w:
            d_weight.addmm_(p.T, h.to(acc), beta=0.0 if first else 1.0)
        if d_bias is not None and first:
            torch.sum(p, 0, out=d_bias)
        elif d_bias is not None:
            d_bias += p.sum(0)

    stats = RowStats(lse_out, target_out, mean_out) if want_stats else None
    grads = Grads(d_hidden, d_weight, d_bias) if want_grads else None
    return stats, grads


class Rows(NamedTuple):
    """The token rows that count, in the order the row statistics come back."""

    index: torch.Tensor  # [n] int64 row numbers
    # Device scalar: only the first ``count`` entries of ``index`` count (the Triton
    # path keeps every row in ``index`` to avoid a data-dependent shape).
    # None: all of them do.
    count: torch.Tensor | None


def compact(active: torch.Tensor) -> Rows:
    """Keep only the active rows, so masked tokens cost no compute.

    ``nonzero`` has a data-dependent shape: free for CPU tensors, one host
    synchronisation when this fallback runs on CUDA (the Triton path has none).
    """
    return Rows(active.nonzero().squeeze(1), None)


def stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    rows: Rows,
    *,
    softcap: float | None = None,
    inv_temperature: float = 1.0,
    mean_logit: bool = False,
    chunk_rows: int | None = None,
) -> RowStats:
    """Row statistics for ``rows`` of ``hidden [N, H]``, one entry per ``rows.index``."""
    row_stats, _ = sweep(
        hidden.index_select(0, rows.index), weight, bias, labels.index_select(0, rows.index),
        softcap=softcap, inv_temperature=inv_temperature, mean_logit=mean_logit, chunk_rows=chunk_rows,
    )
    return row_stats


def grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    rows: Rows,
    lse: torch.Tensor,
    coefficients: Coefficients,
    *,
    softcap: float | None = None,
    inv_temperature: float = 1.0,
    needs: tuple[bool, bool, bool] = (True, True, True),
    chunk_rows: int | None = None,
) -> Grads:
    """Gradients from per-row coefficients and a saved ``lse``; the hidden gradient is full size ``[N, H]``."""
    _, row_grads = sweep(
        hidden.index_select(0, rows.index), weight, bias, labels.index_select(0, rows.index),
        softcap=softcap, inv_temperature=inv_temperature, coefficients=lambda _, rows: tuple(c[rows] if c is not None else None for c in coefficients), lse=lse,
        needs=needs, chunk_rows=chunk_rows,
    )
    return _scatter_hidden(row_grads, hidden, rows)


def stats_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    rows: Rows,
    coefficients: Callable[[RowStats, slice], Coefficients],
    *,
    softcap: float | None = None,
    inv_temperature: float = 1.0,
    mean_logit: bool = False,
    needs: tuple[bool, bool, bool] = (True, True, True),
    chunk_rows: int | None = None,
) -> tuple[RowStats, Grads]:
    """Statistics and gradients in one pass over the logits (three matmuls, not four).

    ``coefficients`` receives each chunk's statistics and its slice of ``rows``.
    """
    row_stats, row_grads = sweep(
        hidden.index_select(0, rows.index), weight, bias, labels.index_select(0, rows.index),
        softcap=softcap, inv_temperature=inv_temperature, mean_logit=mean_logit, coefficients=coefficients,
        needs=needs, chunk_rows=chunk_rows,
    )
    return row_stats, _scatter_hidden(row_grads, hidden, rows)


def scaled_grad(grad: torch.Tensor | None, grad_out: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A gradient taken in the forward pass, times the scalar upstream gradient (in place: the buffer is the op's),
    cast to its input's dtype."""
    if grad is None:
        return None
    if grad_out is not None:
        grad.mul_(grad_out)
    return grad.to(dtype)


def _scatter_hidden(row_grads: Grads, hidden: torch.Tensor, rows: Rows) -> Grads:
    if row_grads.hidden is None:
        return row_grads
    d_hidden = torch.zeros_like(hidden).index_copy_(0, rows.index, row_grads.hidden)
    return row_grads._replace(hidden=d_hidden)
