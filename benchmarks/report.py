"""Print a benchmark suite as a table: ``python -m benchmarks.report [--suite linear_cross_entropy|latent]``.

``linear_cross_entropy`` (the default) runs every provider on the same inputs
for each masked fraction and reports median forward + backward time
(providers interleaved round by round), peak extra memory (see
``benchmarks.common``), both relative to naive torch, and on GPU the fraction
of the matmul floor: 6 * N_unmasked * H * V FLOPs at the dtype's GEMM rate
measured in the same run.

``latent`` checks that the rollout providers write the same greedy
completions and the training providers compute the same loss, then reports
median rollout time and thoughts·rows per second, and median training step
time, with thoughtlab's speedup over each provider (see ``benchmarks.latent``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from benchmarks import latent
from benchmarks.common import (
    CPU_SHAPE,
    GPU_SHAPE,
    MASKED,
    gemm_seconds,
    loss_fn,
    make_inputs,
    peak_bytes,
    providers,
    time_interleaved,
)


def linear_cross_entropy_report(ns: argparse.Namespace) -> None:
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


def latent_report(ns: argparse.Namespace) -> None:
    workload = latent.GPU_WORKLOAD if ns.device == "cuda" else latent.CPU_WORKLOAD
    if ns.batch is not None:
        workload = replace(workload, batch=ns.batch)
    print(f"{workload.describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {ns.rounds} (providers interleaved, one warm-up call each)")
    setup = latent.build_setup(workload)
    rows = latent.check_rows(workload)
    latent.check_rollouts_agree(setup, rows)
    losses = latent.check_training_agrees(setup)
    print(f"check (float32): {', '.join(latent.ROLLOUTS)} write the same greedy completions on rows {rows} "
          f"(batched providers run the whole batch); training losses on 4 rows: "
          + ", ".join(f"{name} {loss:.6f}" for name, loss in losses.items()), flush=True)
    rollouts = latent.time_interleaved({name: latent.rollout_fn(setup, name) for name in latent.ROLLOUTS},
                                       ns.rounds, workload.device)
    print("\n".join(latent.rollout_table(workload, rollouts)) + "\n", flush=True)
    setup.model.train()
    training = latent.time_interleaved({name: latent.training_step_fn(setup, name) for name in latent.TRAINING},
                                       ns.rounds, workload.device)
    print("\n".join(latent.training_table(training)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["linear_cross_entropy", "latent"], default="linear_cross_entropy")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per cell (median reported)")
    parser.add_argument("--masked", type=float, nargs="+", default=list(MASKED), help="linear_cross_entropy only")
    parser.add_argument("--batch", type=int, help="latent only: rows per batch (default: the workload's)")
    ns = parser.parse_args()
    if ns.batch is not None and ns.batch < 1:
        parser.error(f"--batch must be >= 1, got {ns.batch}")
    if ns.suite == "latent":
        latent_report(ns)
    else:
        linear_cross_entropy_report(ns)


if __name__ == "__main__":
    main()
