"""Triton version of the shared primitive in ``linear_softmax``: a softmax over ``hidden @ weight.T``.

Two kernels, never a ``[N, V]`` buffer:

- ``_stats_kernel``: one program per (row block, vocabulary split) walks its
  split in tiles, building each ``[BLOCK_N, BLOCK_V]`` logit tile from
  ``BLOCK_H`` slices of the hidden size, and keeps an online max and sum of
  exponentials, the target logit and (for entropies) an online ``sum p * s``;
  the splits' partials merge into a log-sum-exp in torch.
- ``_grads_kernel``: one program per (row block, vocabulary tile) recomputes its
  logit tile, forms the logit gradient ``p * (alpha + beta * s) + gamma * onehot``
  and adds its share of ``dhidden`` and ``dweight`` (and ``dbias``) into fp32
  buffers with atomics.

Masked tokens without a host synchronisation: ``compact`` sorts active rows to
the front on the device and counts them there; every program reads that count
from device memory and programs past it return at once. Row and column offsets
are widened to int64 before multiplying by strides, so ``N * V`` or ``V * H``
past 2**31 address correctly.

Imported lazily (see ``dispatch.primitive``): Triton decides at
definition time whether ``@triton.jit`` compiles or interprets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .interpreter import check_interpretable
from .linear_softmax import Coefficients, Grads, Rows, RowStats


@triton.jit
def _tanh(x):
    # tl has no tanh in every backend (the interpreter among them); this form saturates cleanly to +-1.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    # Triton 3.9's interpreter multiplies bf16 operands as raw integers; upcasting
    # there keeps its numerics those of the GPU's bf16 x bf16 -> fp32 dot.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)


@triton.jit
def _logit_tile(
    hidden_ptr, weight_ptr, bias_ptr, rows, row_mask, cols, col_mask, H,
    stride_hn, stride_hh, stride_wv, stride_wh, softcap, inv_temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Transformed logits ``s`` of one [BLOCK_N, BLOCK_V] tile, accumulated in fp32."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        a = tl.load(hidden_ptr + rows[:, None] * stride_hn + hk[None, :] * stride_hh,
                    mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        b = tl.load(weight_ptr + cols[None, :] * stride_wv + hk[:, None] * stride_wh,
                    mask=col_mask[None, :] & h_mask[:, None], other=0.0)
        acc = _dot(a, b, acc, UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        return softcap * _tanh(acc / softcap)
    return acc * inv_temperature


@triton.jit
def _stats_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, order_ptr, count_ptr,
    max_ptr, sum_ptr, target_ptr, dot_ptr, n_slots,
    V, H, stride_hn, stride_hh, stride_wv, stride_wh, softcap, inv_temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, MEAN_LOGIT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT_TILES: tl.constexpr,
):
    """Partial statistics of one row block over one vocabulary split, merged in ``stats``."""
    count = tl.load(count_ptr)
    slots = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if tl.program_id(0) * BLOCK_N >= count:
        return
    row_mask = slots < count
    rows = tl.load(order_ptr + slots, mask=row_mask, other=0).to(tl.int64)
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1).to(tl.int64)

    running_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    running_dot = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum_j exp(s_j - max) * s_j
    target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    split_start = tl.program_id(1) * SPLIT_TILES * BLOCK_V
    for v0 in range(split_start, tl.minimum(split_start + SPLIT_TILES * BLOCK_V, V), BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < V
        s = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, row_mask, cols, col_mask, H,
                        stride_hn, stride_hh, stride_wv, stride_wh, softcap, inv_temperature,
                        HAS_BIAS, HAS_SOFTCAP, UPCAST, BLOCK_N, BLOCK_V, BLOCK_H)
        s = tl.where(col_mask[None, :], s, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(s, axis=1))
        rescale = tl.exp(running_max - new_max)
        p = tl.exp(s - new_max[:, None])
        running_sum = running_sum * rescale + tl.sum(p, axis=1)
        if MEAN_LOGIT:
            running_dot = running_dot * rescale + tl.sum(p * tl.where(col_mask[None, :], s, 0.0), axis=1)
        target += tl.sum(tl.where(cols[None, :] == labels[:, None], s, 0.0), axis=1)
        running_max = new_max

    out = tl.program_id(1).to(tl.int64) * n_slots + slots
    tl.store(max_ptr + out, running_max, mask=row_mask)
    tl.store(sum_ptr + out, running_sum, mask=row_mask)
    tl.store(target_ptr + out, target, mask=row_mask)
    if MEAN_LOGIT:
        tl.store(dot_ptr + out, running_dot, mask=row_mask)


@triton.jit
def _grads_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr, order_ptr, count_ptr,
    lse_ptr, alpha_ptr, beta_ptr, gamma_ptr, d_hidden_ptr, d_weight_ptr, d_bias_ptr,
    V, H, stride_hn, stride_hh, stride_wv, stride_wh, softcap, inv_temperature,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, HAS_BETA: tl.constexpr,
    NEED_HIDDEN: tl.constexpr, NEED_WEIGHT: tl.constexpr, NEED_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    count = tl.load(count_ptr)
    slots = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if tl.program_id(0) * BLOCK_N >= count:
        return
    row_mask = slots < count
    rows = tl.load(order_ptr + slots, mask=row_mask, other=0).to(tl.int64)
    labels = tl.load(labels_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    col_mask = cols < V

    s = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, row_mask, cols, col_mask, H,
                    stride_hn, stride_hh, stride_wv, stride_wh, softcap, inv_temperature,
                    HAS_BIAS, HAS_SOFTCAP, UPCAST, BLOCK_N, BLOCK_V, BLOCK_H)
    lse = tl.load(lse_ptr + slots, mask=row_mask, other=0.0)
    alpha = tl.load(alpha_ptr + slots, mask=row_mask, other=0.0)
    gamma = tl.load(gamma_ptr + slots, mask=row_mask, other=0.0)
    p = tl.exp(s - lse[:, None])
    if HAS_BETA:
        beta = tl.load(beta_ptr + slots, mask=row_mask, other=0.0)
        grad = p * (alpha[:, None] + beta[:, None] * s)
    else:
        grad = p * alpha[:, None]
    grad += tl.where(cols[None, :] == labels[:, None], gamma[:, None], 0.0)
    if HAS_SOFTCAP:
        tanh = s / softcap
        grad = grad * (1.0 - tanh * tanh)
    else:
        grad = grad * inv_temperature
    grad = tl.where(row_mask[:, None] & col_mask[None, :], grad, 0.0)

    if NEED_BIAS:
        tl.atomic_add(d_bias_ptr + cols, tl.sum(grad, axis=0), mask=col_mask)
    grad_in = grad.to(hidden_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        if NEED_HIDDEN:
            w = tl.load(weight_ptr + cols[:, None] * stride_wv + hk[None, :] * stride_wh,
                        mask=col_mask[:, None] & h_mask[None, :], other=0.0)
            d_h = _dot(grad_in, w, tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32), UPCAST)
            tl.atomic_add(d_hidden_ptr + rows[:, None] * H + hk[None, :], d_h,
                          mask=row_mask[:, None] & h_mask[None, :])
        if NEED_WEIGHT:
            a = tl.load(hidden_ptr + rows[:, None] * stride_hn + hk[None, :] * stride_hh,
                        mask=row_mask[:, None] & h_mask[None, :], other=0.0)
            d_w = _dot(tl.trans(grad_in), a, tl.zeros((BLOCK_V, BLOCK_H), dtype=tl.float32), UPCAST)
            tl.atomic_add(d_weight_ptr + cols[:, None] * H + hk[None, :], d_w,
                          mask=col_mask[:, None] & h_mask[None, :])


def _blocks(device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_H, SPLIT_TILES, num_warps).

    The interpreter runs on CPU on the small shapes of the test suite, where
    small tiles and two-tile vocabulary splits make every masking edge (rows,
    vocabulary, hidden, splits) happen. The GPU tiles are a conventional GEMM
    shape, not tuned in this session; 4096-column splits keep a few hundred
    programs busy in the forward even when 90% of the rows are masked.
    """
    if device.type != "cuda":
        return 16, 32, 16, 2, 1
    return 64, 128, 64, 32, 8


def compact(active: torch.Tensor) -> Rows:
    """Active rows first, and their count, both computed and kept on the device."""
    order = torch.argsort(active.logical_not().to(torch.int8), stable=True)
    return Rows(order, active.sum(dtype=torch.int32).reshape(1))


def _common(hidden, weight, bias, labels, rows, softcap, inv_temperature):
    bias_arg = bias if bias is not None else weight  # never read: HAS_BIAS is False
    args = (hidden, weight, bias_arg, labels.contiguous(), rows.index, rows.count)
    scalars = (weight.shape[0], hidden.shape[1], hidden.stride(0), hidden.stride(1),
               weight.stride(0), weight.stride(1), float(softcap or 1.0), float(inv_temperature))
    flags = dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, UPCAST=hidden.device.type != "cuda")
    return args, scalars, flags


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
) -> RowStats:
    """Row statistics in ``rows.index`` order; slots past ``rows.count`` hold zeros.

    The forward is split over the vocabulary as well as the rows, so masking
    many rows does not leave the GPU idle; the per-split partial maxima, sums
    and target logits are merged here with a few [splits, N] torch ops.
    """
    check_interpretable(_stats_kernel, hidden.device, __name__)
    n, vocab = rows.index.shape[0], weight.shape[0]
    block_n, block_v, block_h, split_tiles, warps = _blocks(hidden.device)
    splits = triton.cdiv(vocab, split_tiles * block_v)
    part_max, part_sum, part_target, part_dot = (
        torch.zeros(splits, n, dtype=torch.float32, device=hidden.device) for _ in range(4)
    )
    args, scalars, flags = _common(hidden, weight, bias, labels, rows, softcap, inv_temperature)
    _stats_kernel[(triton.cdiv(n, block_n), splits)](
        *args, part_max, part_sum, part_target, part_dot, n, *scalars, **flags, MEAN_LOGIT=mean_logit,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, SPLIT_TILES=split_tiles, num_warps=warps,
    )
    counted = torch.arange(n, device=hidden.device) < rows.count
    row_max = part_max.amax(dim=0)
    rescale = torch.exp(part_max - row_max)
    total = (rescale * part_sum).sum(dim=0)
    slot_labels = labels.index_select(0, rows.index)
    in_range = (slot_labels >= 0) & (slot_labels < vocab)
    target = torch.where(in_range, part_target.sum(dim=0), float("nan"))
    # Uncounted slots never ran (their sums are 0, their lse -inf): zero them.
    lse = torch.where(counted, row_max + total.log(), 0.0)
    target = torch.where(counted, target, 0.0)
    mean = torch.where(counted, (rescale * part_dot).sum(dim=0) / total, 0.0) if mean_logit else None
    return RowStats(lse, target, mean)


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
) -> Grads:
    """Gradients for (hidden, weight, bias) as flagged; ``dweight``/``dbias`` stay fp32."""
    check_interpretable(_stats_kernel, hidden.device, __name__)
    n, vocab = rows.index.shape[0], weight.shape[0]
    need_h, need_w, need_b = needs[0], needs[1], needs[2] and bias is not None
    alpha, beta, gamma = (c.float().contiguous() if c is not None else None for c in coefficients)
    d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    d_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if need_b else None
    block_n, block_v, block_h, _, warps = _blocks(hidden.device)
    args, scalars, flags = _common(hidden, weight, bias, labels, rows, softcap, inv_temperature)
    unused = lse  # placeholder pointer for outputs a flag switches off
    _grads_kernel[(triton.cdiv(n, block_n), triton.cdiv(vocab, block_v))](
        *args, lse.float().contiguous(), alpha, beta if beta is not None else unused, gamma,
        d_hidden if need_h else unused, d_weight if need_w else unused, d_bias if need_b else unused,
        *scalars, **flags, HAS_BETA=beta is not None,
        NEED_HIDDEN=need_h, NEED_WEIGHT=need_w, NEED_BIAS=need_b,
        BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps,
    )
    return Grads(d_hidden.to(hidden.dtype) if need_h else None, d_weight, d_bias)

