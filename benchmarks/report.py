"""Print the linear cross-entropy benchmark as a table: ``python -m benchmarks.report``.

Runs every provider on the same inputs for each masked fraction and reports
median forward + backward time (providers interleaved round by round), peak extra memory (see ``benchmarks.common``),
both relative to naive torch, and on GPU the fraction of the matmul floor:
6 * N_unmasked * H * V FLOPs at the dtype's GEMM rate measured in the same run.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import CPU_SHAPE, GPU_SHAPE, MASKED, gemm_seconds, loss_fn, make_inputs, peak_bytes, \
    providers, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per cell (median reported)")
    parser.add_argument("--masked", type=float, nargs="+", default=list(MASKED))
    ns = parser.parse_args()
    shape = GPU_SHAPE if ns.device == "cuda" else CPU_SHAPE
    print(f"N={shape.n} H={shape.h} V={shape.v} {str(shape.dtype).removeprefix('torch.')} on {ns.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {ns.rounds}")
    floor_gemm = gemm_seconds(shape) if ns.device == "cuda" else None
    header = ["masked", "provider", "fwd+bwd s", "x naive", "peak MiB", "x naive"]
    if floor_gemm is not None:
        header.append("of matmul floor")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for masked in ns.masked:
        available = {name: fn for name, fn in providers(ns.device).items() if fn is not None}
        seconds = time_interleaved({name: loss_fn(name, ns.device) for name in available},
                                   make_inputs(shape, masked), ns.rounds)
        peaks = {name: peak_bytes(name, shape, masked) for name in available}
        for name in providers(ns.device):
            if name not in available:
                print(f"| {masked:.0%} | {name} | skipped: not available here |" + " |" * (len(header) - 3))
                continue
            row = [f"{masked:.0%}", name, f"{seconds[name]:.3f}", f"{seconds[name] / seconds['naive']:.2f}",
                   f"{peaks[name] / 2**20:.0f}", f"{peaks[name] / peaks['naive']:.3f}"]
            if floor_gemm is not None:
                unmasked = shape.n - round(masked * shape.n)
                row.append(f"{3 * floor_gemm * unmasked / shape.n / seconds[name]:.0%}")
            print("| " + " | ".join(row) + " |", flush=True)

if __name__ == "__main__":
    main()
