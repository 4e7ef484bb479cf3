"""Run the Triton kernels under Triton's interpreter so they execute on CPU tensors.

Triton reads TRITON_INTERPRET when a ``@triton.jit`` function is *defined*, so it
must be set before ``kernels.linear_softmax_triton`` is first imported; the
package imports that module lazily, on the first Triton call, for this reason.
``test_dispatch`` checks that the kernels really are interpreted.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_dispatch_env(monkeypatch):
    """A THOUGHTLAB_KERNELS in the caller's shell must not change which path a test exercises."""
    monkeypatch.delenv("THOUGHTLAB_KERNELS", raising=False)
    torch.manual_seed(0)

