"""One decode step of attention, as a model calls it, providers side by side: ``python -m benchmarks.decode_attention``.

Every provider is called through transformers' attention-function signature
on the same inputs: a ``[B, Hq, 1, D]`` query (transposed out of
``[B, 1, Hq, D]``, as the models make it), a ``[B, Hkv, T, D]`` KV cache and
the mask transformers builds for a left-padded batch (rows' valid lengths drawn
between T/2 and T). Providers:

- ``eager (transformers)``: K/V repeated per query head, matmul, fp32 softmax, matmul.
- ``sdpa (transformers)``: transformers' SDPA path (for one query position it
  folds the query heads of a KV group into rows instead of repeating K/V).
- ``thoughtlab``: ``kernels.hf_attention`` (``decode_attention``: Triton on CUDA,
  the grouped torch path on the CPU); on CUDA also its torch path alone.

Time is the median wall clock of interleaved rounds (``torch.cuda.synchronize``
on GPU). The table reports each provider's time relative to SDPA and the rate
at which it streams the cache (bytes of K and V over time; decode attention is
bound by that read).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

from kernels.decode_attention import decode_attention
from kernels.hf_attention import decode_attention_forward


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    q_heads: int
    kv_heads: int
    length: int
    dim: int
    dtype: torch.dtype
    device: str

    def cache_bytes(self) -> int:
        return 2 * self.batch * self.kv_heads * self.length * self.dim * torch.finfo(self.dtype).bits // 8


# Llama-3.2-1B's attention heads at a modest cache for a 2-core CPU; Llama-3-8B's at batch 64 on a GPU.
CPU_SHAPE = DecodeShape(8, 32, 8, 1024, 64, torch.float32, "cpu")
GPU_SHAPE = DecodeShape(64, 32, 8, 4096, 128, torch.bfloat16, "cuda")
Inputs = dict[str, object]


def make_inputs(shape: DecodeShape, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(shape.device, shape.dtype)

    lengths = torch.randint(shape.length // 2, shape.length + 1, (shape.batch,), generator=generator)
    key_mask = (torch.arange(shape.length)[None, :] >= (shape.length - lengths)[:, None]).to(shape.device)
    bool_mask = key_mask[:, None, None, :]
    float_mask = torch.zeros(bool_mask.shape, dtype=shape.dtype, device=shape.device)
    module = torch.nn.Module().eval()
    module.num_key_value_groups = shape.q_heads // shape.kv_heads
    return {
        "module": module,
        "query": randn(shape.batch, 1, shape.q_heads, shape.dim).transpose(1, 2),
        "key": randn(shape.batch, shape.kv_heads, shape.length, shape.dim),
        "value": randn(shape.batch, shape.kv_heads, shape.length, shape.dim),
        "bool_mask": bool_mask,
        # eager's additive mask, as transformers builds it: dtype-min at padding.
        "float_mask": float_mask.masked_fill(~bool_mask, torch.finfo(shape.dtype).min),
        "scaling": shape.dim**-0.5,
    }


def _eager(module, query, key, value, float_mask, scaling, **_):
    return eager_attention_forward(module, query, key, value, float_mask, scaling=scaling)[0]


def _sdpa(module, query, key, value, bool_mask, scaling, **_):
    return sdpa_attention_forward(module, query, key, value, bool_mask, scaling=scaling)[0]


def _ours(module, query, key, value, bool_mask, scaling, **_):
    return decode_attention_forward(module, query, key, value, bool_mask, scaling=scaling)[0]


def _ours_torch(module, query, key, value, bool_mask, scaling, **_):
    key_mask = bool_mask[:, 0, 0, :]
    return decode_attention(query, key, value, key_mask, scale=scaling, impl="torch").transpose(1, 2)


def providers(device: str) -> dict[str, Callable[..., torch.Tensor]]:
    names = {"eager (transformers)": _eager, "sdpa (transformers)": _sdpa, "thoughtlab": _ours}
    if device == "cuda":
        names["thoughtlab torch path"] = _ours_torch
    return names


@torch.no_grad()
def call(fn: Callable[..., torch.Tensor], inputs: Inputs) -> torch.Tensor:
    """One decode step, finished (synchronised) before returning."""
    out = fn(**inputs)
    if out.is_cuda:
        torch.cuda.synchronize()
    return out


def time_interleaved(fns: dict[str, Callable[..., torch.Tensor]], inputs: Inputs, rounds: int) -> dict[str, float]:
    """Median seconds per provider, calling them in turn each round after two warm-up calls each."""
    for fn in fns.values():
        call(fn, inputs)
        call(fn, inputs)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            call(fn, inputs)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per provider (median reported)")
    ns = parser.parse_args()
    shape = GPU_SHAPE if ns.device == "cuda" else CPU_SHAPE
    print(f"B={shape.batch} Hq={shape.q_heads} Hkv={shape.kv_heads} T={shape.length} D={shape.dim} "
          f"{str(shape.dtype).removeprefix('torch.')} on {ns.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {ns.rounds}")
    inputs = make_inputs(shape)
    seconds = time_interleaved(providers(ns.device), inputs, ns.rounds)
    print("| provider | ms | x sdpa | cache GB/s |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s * 1e3:.3f} | {s / seconds['sdpa (transformers)']:.2f} | "
              f"{shape.cache_bytes() / s / 1e9:.1f} |")


if __name__ == "__main__":
    main()
