"""Attention of one new query position per row against a KV cache whose rows have different valid keys.

This is the per-step hot path of decoding and of latent (continuous-thought)
rollouts: every row of a batch adds one position and attends over its cache.
Rows of a left-padded batch have different valid lengths, and a rollout whose
rows stop at different times can leave holes, so validity is a boolean key
mask (what transformers' attention masks reduce to for a single query), not a
length.

For query head ``h`` of row ``b`` (KV head ``h // (Hq // Hkv)``, as transformers'
``repeat_kv``)::

    out[b, h] = softmax(scale * q[b, h] @ K[b, kv].T  masked to key_mask[b]) @ V[b, kv]

A row with no valid key gets zeros, as PyTorch's own ``scaled_dot_product_attention``
does on the CPU. Paths (see ``dispatch``): ``triton`` (split-K flash-decoding,
``decode_attention_triton``), ``torch`` (grouped matmuls and a masked softmax in
fp32, without repeating K/V per query head) and ``reference`` (repeat K/V, plain
softmax; tests and benchmarks only). All are differentiable (the Triton
forward's backward recomputes the probabilities in torch), so gradients flow
through continuous thoughts whichever path runs.
"""

from __future__ import annotations

import math

import torch

from .dispatch import resolve_impl
from .validation import check_kernel_dtype, check_same_device, describe

TRITON_MAX_HEAD_DIM = 256  # the largest head-dim block the kernel's tiles are sized for


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """Attention of one query position per row over a (padded) KV cache.

    Args:
        query: ``[B, Hq, D]`` or ``[B, Hq, 1, D]`` (transformers' layout for one new position).
        key: ``[B, Hkv, T, D]`` cache, ``Hq`` a multiple of ``Hkv`` (grouped-query / multi-query attention).
        value: ``[B, Hkv, T, D]``, like ``key``.
        key_mask: ``[B, T]`` bool, True where a key may be attended to (False at padding),
            or None when every key is valid.
        scale: multiplies the query-key products; default ``1 / sqrt(D)``.
        impl: ``"triton"``, ``"torch"`` or ``"reference"``; overrides ``THOUGHTLAB_KERNELS``.

    Returns the output shaped like ``query``, in its dtype (accumulated in fp32, or
    fp64 for fp64 inputs). Tensors may have any strides (a transposed query, a slice
    of a static cache); none is copied on the Triton path.
    """
    q = _validate(query, key, value, key_mask, scale)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    path = resolve_impl(impl, query.device)
    if path == "triton":
        check_kernel_dtype(query, "query")
        if query.shape[-1] > TRITON_MAX_HEAD_DIM:
            raise ValueError(f"impl='triton' supports head dims up to {TRITON_MAX_HEAD_DIM}, got query head dim "
                             f"{query.shape[-1]}; use impl='torch'")
        out = _TritonDecodeAttention.apply(q, key, value, key_mask, scale)
    elif path == "torch":
        out = decode_attention_torch(q, key, value, key_mask, scale)
    else:
        out = decode_attention_reference(q, key, value, key_mask, scale=scale)
    return out.reshape(query.shape)


def decode_attention_torch(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """The CPU path: ``[B, Hq, D]`` output from grouped matmuls, K/V never repeated per query head.

    The query heads of one KV head form the columns of one ``K @ Q_group.T``
    product (``[T, D] @ [D, G]`` reads K in its row-major layout, measurably
    faster on the CPU than ``Q @ K.T``), so K and V are read once per group.
    Scores, softmax and the weighted sum run in fp32 (half-precision caches are
    upcast for the step).
    """
    batch, q_heads, dim = query.shape
    kv_heads = key.shape[1]
    acc = torch.promote_types(query.dtype, torch.float32)
    q = query.reshape(batch, kv_heads, q_heads // kv_heads, dim).to(acc)
    scores = torch.matmul(key.to(acc), q.transpose(-1, -2)).transpose(-1, -2) * scale
    out = torch.matmul(_masked_softmax(scores, key_mask), value.to(acc))
    return out.reshape(batch, q_heads, dim).to(query.dtype)


def _masked_softmax(scores: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of ``[B, Hkv, G, T]`` scores; rows without a valid key are all zero (not NaN).

    A row without keys takes the softmax of all its scores and is then zeroed,
    so neither its value nor its gradient passes through a NaN.
    """
    if key_mask is None:
        return torch.softmax(scores, dim=-1)
    has_key = key_mask.any(dim=-1)[:, None, None, None]
    keep = key_mask[:, None, None, :] | ~has_key
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) * has_key


class _TritonDecodeAttention(torch.autograd.Function):
    """Triton forward; a torch backward that recomputes the probabilities.

    The backward is one pass of ``[B, Hkv, G, T]`` matmuls in fp32 (a decode
    step's probabilities are small). It recomputes the softmax rather than
    reusing the forward's statistics and output: ``sum_t p_t dp_t`` from fp32
    probabilities is exact where ``sum(d_out * out)`` with a bf16 ``out`` is not.
    """

    @staticmethod
    def forward(ctx, query, key, value, key_mask, scale):
        # Imported late: Triton reads TRITON_INTERPRET when the kernels are defined.
        from . import decode_attention_triton

        ctx.save_for_backward(query, key, value, key_mask)
        ctx.scale = scale
        return decode_attention_triton.decode_attention_forward(query, key, value, key_mask, scale)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, key_mask = ctx.saved_tensors
        batch, q_heads, dim = query.shape
        kv_heads = key.shape[1]
        q = query.reshape(batch, kv_heads, q_heads // kv_heads, dim).float()
        d_out = grad_out.reshape(q.shape).float()
        k, v = key.float(), value.float()
        probs = _masked_softmax(torch.matmul(q, k.transpose(-1, -2)) * ctx.scale, key_mask)
        d_probs = torch.matmul(d_out, v.transpose(-1, -2))
        d_scores = probs * (d_probs - (probs * d_probs).sum(-1, keepdim=True)) * ctx.scale
        d_query = torch.matmul(d_scores, k).reshape(batch, q_heads, dim).to(query.dtype)
        d_key = torch.matmul(d_scores.transpose(-1, -2), q).to(key.dtype)
        d_value = torch.matmul(probs.transpose(-1, -2), d_out).to(value.dtype)
        return d_query, d_key, d_value, None, None


def decode_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Naive reference on ``[B, Hq, D]`` queries: K/V repeated per query head, softmax in the inputs' dtype.

    Tests and benchmarks only (it is the eager attention of transformers, for one query).
    """
    group = query.shape[1] // key.shape[1]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", query, k) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row without keys: NaN -> 0
    return torch.einsum("bht,bhtd->bhd", probs, v)


def _validate(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None, scale: float | None
) -> torch.Tensor:
    """Check the arguments; return the query as ``[B, Hq, D]``."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {describe(tensor)}")
    if query.dim() == 4 and query.shape[2] != 1:
        raise ValueError(f"query must hold one position per row, got [B, Hq, {query.shape[2]}, D] = "
                         f"{tuple(query.shape)}; use scaled_dot_product_attention for longer queries")
    if query.dim() not in (3, 4):
        raise ValueError(f"query must be [B, Hq, D] or [B, Hq, 1, D], got shape {tuple(query.shape)}")
    if key.dim() != 4:
        raise ValueError(f"key must be [B, Hkv, T, D], got shape {tuple(key.shape)}")
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} differs from key shape {tuple(key.shape)}")
    batch, q_heads, dim = query.shape[0], query.shape[1], query.shape[-1]
    kv_batch, kv_heads, length, kv_dim = key.shape
    if kv_batch != batch:
        raise ValueError(f"key has batch {kv_batch} but query has batch {batch}")
    if kv_dim != dim:
        raise ValueError(f"key has head dim {kv_dim} but query has head dim {dim}")
    if kv_heads == 0 or q_heads % kv_heads != 0:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key heads ({kv_heads})")
    if length == 0 or dim == 0:
        raise ValueError(f"key must have at least one position and a nonzero head dim, got shape {tuple(key.shape)}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    tensors = {"query": query, "key": key, "value": value}
    if key_mask is not None:
        if not isinstance(key_mask, torch.Tensor) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be a bool tensor (True = attend), got {describe(key_mask)}")
        if key_mask.shape != (batch, length):
            raise ValueError(f"key_mask must have shape (B, T) = {(batch, length)}, got {tuple(key_mask.shape)}")
        tensors["key_mask"] = key_mask
    check_same_device(tensors)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    return query.reshape(batch, q_heads, dim)

