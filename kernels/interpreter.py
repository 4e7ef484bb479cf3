"""Whether Triton kernels may run on the tensors at hand: on CUDA, or on CPU under Triton's interpreter.

It sits apart from ``dispatch`` because both sides need it: ``dispatch``
refuses ``impl="triton"`` on CPU without the interpreter, and the Triton
modules, which ``dispatch`` imports, check their kernels before launching.
In one module with ``dispatch`` it made the two import each other.
"""

from __future__ import annotations

import os

import torch


def triton_interpreting() -> bool:
    # Triton reads the same variable, when a ``@triton.jit`` function is defined.
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_interpretable(kernel: object, device: torch.device, module: str) -> None:
    """Refuse to launch ``module``'s Triton kernels on a non-CUDA ``device`` unless they are interpreted.

    ``kernel`` is one of the module's ``@triton.jit`` functions; whether Triton
    made it an interpreted function was fixed when the module was imported.
    """
    # Imported here, not at the top: only the Triton modules call this, and triton is optional.
    from triton.runtime.interpreter import InterpretedFunction

    if device.type != "cuda" and not isinstance(kernel, InterpretedFunction):
        raise ValueError(
            "the Triton kernels were defined before TRITON_INTERPRET=1 was set, so they cannot run on "
            f"{device.type} tensors; set it before importing {module}"
            if triton_interpreting() else "impl='triton' on CPU tensors needs TRITON_INTERPRET=1"
        )
