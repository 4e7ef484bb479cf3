"""Triton decode attention: one query position per row against a KV cache, split over the cache (flash-decoding).

Two kernels:

- ``_split_kernel``: one program per (batch row, KV head, cache split). It loads
  the query rows of *all* query heads that share the KV head (grouped-query
  attention: K and V are read once per group, not once per query head), walks
  its split of the cache in ``BLOCK_T`` tiles with an online softmax in fp32,
  and writes a partial (running max, running sum, unnormalised output) per
  query head. Tiles whose keys are all masked (the left padding of a batch) are
  skipped without reading K or V.
- ``_reduce_kernel``: one program per (batch row, query head) merges the
  splits' partials into the output.

Splitting the cache is what keeps a GPU busy at decode time: batch x KV heads
alone is often fewer programs than the GPU has SMs. A row with no valid key
gets output 0 (never NaN).

Scores live in the base-2 domain (``scale * log2(e)`` is folded into the
query-key product) so the kernels use ``exp2``. Batch, head and cache offsets
are widened to int64 before multiplying by strides, so caches past 2**31
elements address correctly; inputs are read through their strides, never
copied.

Imported lazily (see ``decode_attention``): Triton decides at definition time
whether ``@triton.jit`` compiles or interprets.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .interpreter import check_interpretable

LOG2E = math.log2(math.e)
MAX_SPLITS = 64  # the reduce kernel holds every split of a row in one block


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # Triton 3.9's interpreter multiplies bf16 operands as raw integers; upcasting there keeps the GPU's numerics.
    # fp32 inputs use exact fp32 products (not TF32): decode is memory-bound, so the precision is free.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, part_max_ptr, part_sum_ptr, part_acc_ptr,
    T, D, HKV, n_splits, split_len, scale_log2,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_mb, stride_mt,
    GROUP: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial softmax statistics of one KV group's query heads over one split of the cache."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    batch, kv_head = row // HKV, row % HKV
    g = tl.arange(0, BLOCK_G)
    g_mask = g < GROUP
    heads = kv_head * GROUP + g  # query head h reads KV head h // GROUP, as transformers' repeat_kv
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D

    q = tl.load(q_ptr + batch * stride_qb + heads[:, None] * stride_qh + d[None, :] * stride_qd,
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh

    running_max = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    start = split * split_len
    end = tl.minimum(start + split_len, T)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T).to(tl.int64)
        valid = t < end
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + batch * stride_mb + t * stride_mt, mask=valid, other=0) != 0)
        # Only tiles with a valid key are read; in them every row's max is finite, so no exp2(-inf - -inf).
        if tl.max(valid.to(tl.int32), axis=0) > 0:
            k = tl.load(k_base + t[:, None] * stride_kt + d[None, :] * stride_kd,
                        mask=valid[:, None] & d_mask[None, :], other=0.0)
            scores = _dot(q, tl.trans(k), UPCAST, IEEE) * scale_log2
            scores = tl.where(valid[None, :], scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
            rescale = tl.exp2(running_max - new_max)
            p = tl.exp2(scores - new_max[:, None])
            running_sum = running_sum * rescale + tl.sum(p, axis=1)
            v = tl.load(v_base + t[:, None] * stride_vt + d[None, :] * stride_vd,
                        mask=valid[:, None] & d_mask[None, :], other=0.0)
            acc = acc * rescale[:, None] + _dot(p.to(v.dtype), v, UPCAST, IEEE)
            running_max = new_max

    slots = (batch * HKV * GROUP + heads) * n_splits + split
    tl.store(part_max_ptr + slots, running_max, mask=g_mask)
    tl.store(part_sum_ptr + slots, running_sum, mask=g_mask)
    tl.store(part_acc_ptr + slots[:, None] * D + d[None, :], acc, mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def _reduce_kernel(
    part_max_ptr, part_sum_ptr, part_acc_ptr, out_ptr,
    D, HQ, n_splits, stride_ob, stride_oh, stride_od,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge one (row, query head)'s split partials: out = sum_s w_s acc_s / sum_s w_s l_s."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    s_mask = s < n_splits
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    part_max = tl.load(part_max_ptr + row * n_splits + s, mask=s_mask, other=float("-inf"))
    part_sum = tl.load(part_sum_ptr + row * n_splits + s, mask=s_mask, other=0.0)
    row_max = tl.max(part_max, axis=0)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    weight = tl.exp2(part_max - safe_max)  # 0 for splits without a valid key
    total = tl.sum(weight * part_sum, axis=0)
    part_acc = tl.load(part_acc_ptr + (row * n_splits + s)[:, None] * D + d[None, :],
                       mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(weight[:, None] * part_acc, axis=0) / tl.where(total > 0, total, 1.0)
    batch, head = row // HQ, row % HQ
    tl.store(out_ptr + batch * stride_ob + head * stride_oh + d * stride_od, out.to(out_ptr.dtype.element_ty),
             mask=d_mask)


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# (BLOCK_T, num_warps) per (fp32 inputs, BLOCK_D) for a 16-row query block: the largest cache tile that
# ptxas (Triton 3.9, sm_90) fits in registers without spilling. Checked by compiling for sm_90 ahead of
# time; not timed (no GPU in this session). Wider query blocks (more query heads per KV head) halve BLOCK_T.
GPU_TILES = {
    (False, 16): (64, 4), (False, 32): (64, 4), (False, 64): (64, 8), (False, 128): (64, 4), (False, 256): (64, 8),
    (True, 16): (32, 4), (True, 32): (32, 4), (True, 64): (32, 4), (True, 128): (32, 8), (True, 256): (32, 8),
}


class Plan(NamedTuple):
    block_g: int  # query heads of one KV group, padded to at least 16 rows (the MMA tile height)
    block_t: int  # cache positions per tile
    block_d: int  # head dim, padded to a power of 2 and masked
    split_len: int  # cache positions per split, a whole number of tiles
    n_splits: int
    num_warps: int


def plan(batch: int, kv_heads: int, group: int, length: int, dim: int, dtype: torch.dtype,
         device: torch.device) -> Plan:
    """Tile sizes and the split of a ``length``-position cache.

    On the GPU the cache is split until batch x KV heads x splits covers the SMs
    about twice (a decode step is memory-bound; idle SMs are idle bandwidth), in
    whole tiles and at most ``MAX_SPLITS``. The interpreter uses small tiles and
    two-tile splits so the test suite's short caches exercise several splits,
    partial tiles and skipped tiles.
    """
    block_g = max(16, triton.next_power_of_2(group))
    block_d = max(16, triton.next_power_of_2(dim))
    if device.type == "cuda":
        block_t, warps = GPU_TILES[(dtype == torch.float32, block_d)]
        block_t = max(16, block_t * 16 // block_g)
        wanted = triton.cdiv(2 * _multiprocessors(device.index or 0), batch * kv_heads)
    else:
        block_t, warps = 16, 1
        wanted = triton.cdiv(length, 2 * block_t)
    tiles = triton.cdiv(length, block_t)
    splits = max(1, min(wanted, tiles, MAX_SPLITS))
    split_len = triton.cdiv(tiles, splits) * block_t
    return Plan(block_g, block_t, block_d, split_len, triton.cdiv(length, split_len), warps)


def decode_attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Output ``[B, Hq, D]`` in the query's dtype.

    ``query`` is ``[B, Hq, D]``, ``key``/``value`` ``[B, Hkv, T, D]`` (any strides),
    ``key_mask`` ``[B, T]`` bool or None; the caller has validated them.
    """
    check_interpretable(_split_kernel, query.device, __name__)
    batch, q_heads, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = q_heads // kv_heads
    tiles = plan(batch, kv_heads, group, length, dim, query.dtype, query.device)

    device = query.device
    part_max = torch.empty(batch * q_heads * tiles.n_splits, dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    part_acc = torch.empty(batch * q_heads * tiles.n_splits, dim, dtype=torch.float32, device=device)
    out = torch.empty(batch, q_heads, dim, dtype=query.dtype, device=device)
    # Bool and uint8 share a byte; the view reads the caller's mask (strides included) without a copy.
    mask = key_mask.view(torch.uint8) if key_mask is not None else key
    mask_strides = key_mask.stride() if key_mask is not None else (0, 0)

    _split_kernel[(batch * kv_heads, tiles.n_splits)](
        query, key, value, mask, part_max, part_sum, part_acc,
        length, dim, kv_heads, tiles.n_splits, tiles.split_len, scale * LOG2E,
        *query.stride(), *key.stride(), *value.stride(), *mask_strides,
        GROUP=group, HAS_MASK=key_mask is not None, UPCAST=device.type != "cuda",
        IEEE=query.dtype == torch.float32,
        BLOCK_G=tiles.block_g, BLOCK_T=tiles.block_t, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    _reduce_kernel[(batch * q_heads,)](
        part_max, part_sum, part_acc, out, dim, q_heads, tiles.n_splits, *out.stride(),
        BLOCK_S=triton.next_power_of_2(tiles.n_splits), BLOCK_D=tiles.block_d, num_warps=4,
    )
    return out

