"""Kernel tests run under Triton's interpreter (set in the root conftest) with a clean dispatch environment."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _clean_dispatch_env(monkeypatch):
    """A THOUGHTLAB_KERNELS in the caller's shell must not change which path a test exercises."""
    monkeypatch.delenv("THOUGHTLAB_KERNELS", raising=False)
    torch.manual_seed(0)

