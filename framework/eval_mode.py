"""`eval_mode`: run a module in eval mode for a while, then put every submodule back as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Switch `module` and all its submodules to eval mode inside the block (no dropout: sampling, scoring).

    On exit, even by an exception, each submodule gets back its own `training`
    flag, so a submodule that was deliberately in eval mode inside a training
    model stays so (`module.train(was_training)` would flip it to training).
    """
    flags = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        # Pre-order: each call resets a subtree, and the deeper calls after it correct their own parts.
        # Going through `train()` keeps any override of it in the loop, as `eval()` does.
        for submodule, training in flags:
            submodule.train(training)
