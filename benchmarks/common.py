"""Providers, inputs and measurements shared by the pytest-benchmark suite and ``report.py``; and the step clock,
subprocess runs and command line of the training-step comparisons with TRL (``grpo.py``, ``sft.py``).

Every provider runs forward + backward of a token cross-entropy over a linear
head on the same inputs. Time is wall clock around the call, with
``torch.cuda.synchronize`` on GPU; ``report.py`` interleaves the providers
round by round and takes medians. Peak memory is measured in a fresh
subprocess per (provider, masked fraction), because a process's peak can only
be read, not reset, from inside for CPU tensors:

- CPU: the kernel's high-water mark of resident memory (``VmHWM`` in
  ``/proc/self/status``), reset with ``/proc/self/clear_refs`` after the inputs
  exist and after a warm-up call (which also absorbs ``torch.compile``), minus
  the resident memory at that moment (after ``malloc_trim``, so memory glibc
  kept from the warm-up is not mistaken for free headroom). It counts everything the call allocates,
  gradients included, as the operating system sees it. (tracemalloc does not
  see torch's allocations.)
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus the memory allocated before the call.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass(frozen=True)
class Shape:
    n: int
    h: int
    v: int
    dtype: torch.dtype
    device: str


CPU_SHAPE = Shape(4096, 512, 32000, torch.float32, "cpu")
GPU_SHAPE = Shape(8192, 4096, 128256, torch.bfloat16, "cuda")
MASKED = (0.0, 0.5, 0.9)


def make_inputs(shape: Shape, masked: float, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape.v, (shape.n,), generator=generator)
    # Exactly round(masked * n) tokens masked, in random positions, like a trace mask.
    labels[torch.randperm(shape.n, generator=generator)[: round(masked * shape.n)]] = IGNORE
    hidden = torch.randn(shape.n, shape.h, generator=generator)
    weight = torch.randn(shape.v, shape.h, generator=generator) / shape.h**0.5
    return {
        "hidden": hidden.to(shape.device, shape.dtype).requires_grad_(),
        "weight": weight.to(shape.device, shape.dtype).requires_grad_(),
        "labels": labels.to(shape.device),
    }


def _naive(hidden, weight, labels):
    return F.cross_entropy(F.linear(hidden, weight).float(), labels, ignore_index=IGNORE)


def _ours(hidden, weight, labels):
    import kernels

    return kernels.linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE)


def _torch_chunked(hidden, weight, labels):
    return F.linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE,
                                  options=torch.nn.LinearCrossEntropyOptions())


def _liger(hidden, weight, labels):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE)


def _cce(hidden, weight, labels):
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE)


def providers(device: str) -> dict[str, Callable[..., torch.Tensor] | None]:
    """name -> loss function, or None where the provider cannot run here (reported as skipped)."""
    cuda = device == "cuda"
    return {
        "naive": _naive,
        "torch.compile(naive)": "compile",
        "F.linear_cross_entropy (chunked)": _torch_chunked if hasattr(F, "linear_cross_entropy") else None,
        "liger-kernel": _liger if cuda and importlib.util.find_spec("liger_kernel") else None,
        "cut-cross-entropy": _cce if cuda and importlib.util.find_spec("cut_cross_entropy") else None,
        "thoughtlab": _ours,
    }


def loss_fn(name: str, device: str) -> Callable[..., torch.Tensor] | None:
    fn = providers(device)[name]
    return torch.compile(_naive) if fn == "compile" else fn


def step(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
    """One forward + backward, gradients dropped so repeated calls do not accumulate."""
    inputs["hidden"].grad = inputs["weight"].grad = None
    fn(**inputs).backward()
    if inputs["hidden"].is_cuda:
        torch.cuda.synchronize()


def time_step(fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], rounds: int) -> float:
    """Median seconds of ``rounds`` calls after one warm-up call."""
    return time_interleaved({"fn": fn}, inputs, rounds)["fn"]


def time_interleaved(
    fns: dict[str, Callable[..., torch.Tensor]], inputs: dict[str, torch.Tensor], rounds: int
) -> dict[str, float]:
    """Median seconds per function, calling them in turn each round after one warm-up call each.

    Interleaving keeps slow drifts of a shared machine (other tenants, clock
    changes) from landing on one provider only.
    """
    for fn in fns.values():
        step(fn, inputs)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            step(fn, inputs)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def gemm_seconds(shape: Shape, rounds: int = 5) -> float:
    """Median seconds of one [N, H] x [H, V] matmul in the benchmark dtype: the rate the matmul floor uses."""
    a = torch.randn(shape.n, shape.h, device=shape.device, dtype=shape.dtype)
    b = torch.randn(shape.h, shape.v, device=shape.device, dtype=shape.dtype)
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        a @ b
        if a.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first call pays for library initialisation
    return sorted(times)[len(times) // 2]


def rss_kib(field: str) -> int:
    """A memory figure of this process from /proc (`VmRSS` now, `VmHWM` its peak), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_here(name: str, shape: Shape, masked: float) -> int:
    """Peak extra bytes of one forward + backward, measured in this (fresh) process."""
    inputs = make_inputs(shape, masked)
    fn = loss_fn(name, shape.device)
    step(fn, inputs)  # warm-up: compilation, allocator caches, gradient buffers freed again below
    inputs["hidden"].grad = inputs["weight"].grad = None
    gc.collect()
    if shape.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(fn, inputs)
        return torch.cuda.max_memory_allocated() - before
    # Return memory the allocator kept from the warm-up to the system, so the
    # baseline is live memory only and the call's own allocations show up.
    before = reset_peak_rss()
    step(fn, inputs)
    return (rss_kib("VmHWM") - before) * 1024


def peak_bytes(name: str, shape: Shape, masked: float) -> int:
    """Run ``_peak_here`` in a fresh interpreter so earlier providers leave no high-water mark behind."""
    args = [sys.executable, "-m", "benchmarks.common", name, json.dumps(
        [shape.n, shape.h, shape.v, str(shape.dtype).removeprefix("torch."), shape.device]), str(masked)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> int:
    """Reset the process's ``VmHWM`` to its resident size after returning freed memory to the system; that size, KiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    return rss_kib("VmRSS")


class StepClock:
    """Training-step times and the peak extra resident memory after the warm-up (first) step."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.rollout_s: list[float] = []
        self.completion_tokens: list[float] = []  # per step, where the provider reports it: its mean completion length
        self._start = 0.0
        self._baseline_kib = 0

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self, rollout_s: float = 0.0) -> None:
        self.step_s.append(time.perf_counter() - self._start)
        self.rollout_s.append(rollout_s)
        if len(self.step_s) == 1:  # the warm-up step: measure memory from here on
            self._baseline_kib = reset_peak_rss()

    def result(self) -> dict[str, float]:
        """Medians over the steps after the warm-up: step, rollout and update (step - rollout) seconds, completion
        tokens where reported; peak MiB."""
        steps, rollouts = self.step_s[1:], self.rollout_s[1:]
        updates = [s - r for s, r in zip(steps, rollouts)]
        lengths = {"completion_tokens": statistics.median(self.completion_tokens[1:])} if self.completion_tokens else {}
        return {
            "step_s": statistics.median(steps),
            "rollout_s": statistics.median(rollouts),
            "update_s": statistics.median(updates),
            **lengths,
            "peak_mib": (rss_kib("VmHWM") - self._baseline_kib) / 1024,
        }


def padded_word_tokenizer(words: Sequence[str], vocab: int):
    """A word tokenizer over ``words``, padded with filler words to about ``vocab`` entries, so the LM head weighs
    what it does in a real model."""
    from framework.data.tokenizer import build_word_tokenizer

    return build_word_tokenizer(list(words) + [f"w{i}" for i in range(vocab - len(words) - 10)])


Setting = TypeVar("Setting")


def measure_in_subprocess(module: str, provider: str, setting: Any) -> dict[str, float]:
    """``python -m module --provider P --json`` with ``setting``'s fields, in a fresh interpreter (so the provider's
    peak memory is its own); its last line of output, as JSON."""
    args = [sys.executable, "-m", module, "--provider", provider, "--json"]
    for field in fields(setting):
        args += [f"--{field.name}", str(getattr(setting, field.name))]
    done = subprocess.run(args, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{provider} benchmark failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved_medians(
    measure: Callable[[str, Any], dict[str, float]], providers: Sequence[str], setting: Any, repeats: int
) -> dict[str, dict[str, float]]:
    """Each provider ``repeats`` times, in turn (a shared machine's drifts then land on all of them), and the median
    of each measured quantity over those runs."""
    runs: dict[str, list[dict[str, float]]] = {p: [] for p in providers}
    for _ in range(repeats):
        for provider, measured in runs.items():
            measured.append(measure(provider, setting))
    return {p: {key: statistics.median(run[key] for run in rs) for key in rs[0]} for p, rs in runs.items()}


def available(provider: str) -> bool:
    """Whether a comparison's provider runs here: thoughtlab always, TRL where it is installed (the `bench` extra)."""
    return provider != "trl" or importlib.util.find_spec("trl") is not None


def compare(
    description: str,
    kind: type[Setting],
    runners: dict[str, Callable[[Setting], dict[str, float]]],
    measure: Callable[[str, Setting], dict[str, float]],
    table: Callable[[dict[str, dict[str, float]]], None],
) -> None:
    """A comparison's command line: with ``--provider`` run that one here (as ``measure``'s subprocess does), else
    measure every available provider, interleaved, and print ``table`` of the medians."""
    ns, setting = parse_setting(description, tuple(runners), kind)
    if ns.provider:
        result = runners[ns.provider](setting)
        print(json.dumps(result) if ns.json else result)
        return
    print(f"{asdict(setting)}; torch {torch.__version__}, {torch.get_num_threads()} threads; medians over "
          f"{setting.steps} steps after one warm-up, then over {ns.repeats} interleaved runs per provider")
    table(interleaved_medians(measure, [p for p in runners if available(p)], setting, ns.repeats))


def parse_setting(description: str, providers: Sequence[str], kind: type[Setting]) -> tuple[argparse.Namespace, Setting]:
    """The comparisons' command line: ``--provider``, ``--json``, ``--repeats`` and one option per setting field."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--provider", choices=providers, help="run one provider here (default: each in a subprocess)")
    parser.add_argument("--json", action="store_true", help="print one provider's result as JSON")
    parser.add_argument("--repeats", type=int, default=2, help="runs per provider, interleaved (median reported)")
    for field in fields(kind):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    ns = parser.parse_args()
    return ns, kind(**{field.name: getattr(ns, field.name) for field in fields(kind)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the peak extra bytes of one provider call.")
    parser.add_argument("provider")
    parser.add_argument("shape", help='JSON [n, h, v, "float32", "cpu"]')
    parser.add_argument("masked", type=float)
    ns = parser.parse_args()
    n, h, v, dtype, device = json.loads(ns.shape)
    print(_peak_here(ns.provider, Shape(n, h, v, getattr(torch, dtype), device), ns.masked))
