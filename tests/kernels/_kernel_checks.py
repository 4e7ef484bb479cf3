"""CCE-style accuracy check: a kernel may be no less accurate than naive torch in the same dtype.

Each op runs three times on the same inputs: the kernel in ``dtype``, the
materialising reference in ``dtype`` (the error any plain-torch user accepts
today) and the reference in float64 (the truth). The kernel's error on the value
and on every gradient must stay within the naive error plus a small tolerance.
"""

from __future__ import annotations

from typing import Callable

import torch

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def relative_error(value: torch.Tensor, gold: torch.Tensor) -> float:
    """Max-abs error relative to the largest gold magnitude."""
    value, gold = value.double(), gold.double()
    return float((value - gold).abs().max() / gold.abs().max().clamp_min(1e-12))


def run_with_grads(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    tensors: dict[str, torch.Tensor],
    upstream: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Outputs of ``fn(**tensors)`` and the gradients of sum(output * upstream) for floating inputs."""
    leaves = {k: v.detach().requires_grad_(v.is_floating_point() and k != "weights") for k, v in tensors.items()}
    outputs = fn(**leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    objective = sum((o.double() * g).sum() for o, g in zip(outputs, upstream))
    wrt = {k: v for k, v in leaves.items() if v.requires_grad}
    grads = torch.autograd.grad(objective, list(wrt.values()), allow_unused=True)
    result = {f"out{i}": o.detach() for i, o in enumerate(outputs)}
    for name, grad in zip(wrt, grads):
        result[f"d_{name}"] = grad if grad is not None else torch.zeros_like(wrt[name])
    return result


def assert_as_accurate_as_naive(
    kernel: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    reference: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    upstream: list[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Compare ``kernel`` in ``dtype`` with ``reference`` in ``dtype`` against ``reference`` in float64."""
    def cast(to: torch.dtype) -> dict[str, torch.Tensor]:
        return {k: v.to(to) if v.is_floating_point() and k != "weights" else v for k, v in tensors.items()}

    gold = run_with_grads(reference, cast(torch.float64), upstream)
    naive = run_with_grads(reference, cast(dtype), upstream)
    ours = run_with_grads(kernel, cast(dtype), upstream)
    assert ours.keys() == gold.keys()
    for name in gold:
        assert ours[name].shape == gold[name].shape, name
        assert torch.isfinite(ours[name]).all(), f"{name} is not finite"
        if name.startswith("d_"):
            assert ours[name].dtype == tensors[name[2:]].to(dtype).dtype, name
        err, naive_err = relative_error(ours[name], gold[name]), relative_error(naive[name], gold[name])
        assert err <= naive_err + TOLERANCE[dtype], f"{name}: error {err:.3g} vs naive {naive_err:.3g}"
    return ours
