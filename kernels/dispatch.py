"""Choose which implementation of a fused op runs: keyword > environment > device.

Three paths sit behind each public op:

- ``"triton"``: the fused GPU kernels. CUDA tensors, or CPU tensors when the
  process runs Triton's interpreter (``TRITON_INTERPRET=1``), which is how the
  test suite exercises the kernels on a machine without a GPU.
- ``"torch"``: the chunked plain-torch path. The default for CPU tensors and the
  fallback where Triton is not installed.
- ``"reference"``: materialised logits in plain torch. For tests and benchmarks;
  it has exactly the memory profile the fused ops exist to avoid.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from .interpreter import triton_interpreting

IMPLS = ("triton", "torch", "reference")
ENV_VAR = "THOUGHTLAB_KERNELS"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str | None, device: torch.device) -> str:
    """The path to run for tensors on ``device``; ``impl`` overrides the environment."""
    chosen = impl if impl is not None else os.environ.get(ENV_VAR) or None
    if chosen is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if chosen not in IMPLS:
        source = "impl" if impl is not None else ENV_VAR
        raise ValueError(f"{source}={chosen!r} is not one of {IMPLS}")
    if chosen == "triton":
        if not triton_available():
            raise ValueError("impl='triton' was asked for but triton is not installed")
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"impl='triton' needs CUDA tensors (got {device.type}); "
                "set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU"
            )
    return chosen


def primitive(path: str) -> ModuleType:
    """The module implementing the shared linear-softmax primitive for ``path`` ("triton" or "torch")."""
    if path == "triton":
        from . import linear_softmax_triton  # imported late: Triton reads TRITON_INTERPRET at definition

        return linear_softmax_triton
    from . import linear_softmax

    return linear_softmax
