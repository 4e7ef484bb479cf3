"""Bad input fails with a ValueError naming the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import kernels.linear_softmax as torch_primitive
from kernels import linear_cross_entropy, linear_token_logprobs

N, H, V = 6, 8, 11


@pytest.fixture(autouse=True)
def no_kernel_runs(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran before validation failed")

    monkeypatch.setattr(torch_primitive, "sweep", fail)


def good():
    return {"hidden": torch.randn(N, H), "weight": torch.randn(V, H), "labels": torch.randint(0, V, (N,))}


CASES = [
    ("hidden", {"hidden": torch.randint(0, 3, (N, H))}),
    ("hidden", {"hidden": torch.randn(N)}),
    ("input features", {"weight": torch.randn(V, H + 1)}),
    ("weight", {"weight": torch.randn(V)}),
    ("dtype", {"weight": torch.randn(V, H, dtype=torch.float64)}),
    ("labels", {"labels": torch.randn(N)}),
    ("labels", {"labels": torch.randint(0, V, (N + 1,))}),
    ("labels", {"labels": torch.tensor([0, 1, 2, V, 4, 5])}),
    ("labels", {"labels": torch.tensor([0, 1, 2, -1, 4, 5])}),
    ("device", {"labels": torch.randint(0, V, (N,), device="meta")}),
]


@pytest.mark.parametrize("needle, change", CASES)
def test_shared_checks(needle, change):
    for op in (linear_cross_entropy, linear_token_logprobs):
        with pytest.raises(ValueError, match=needle):
            op(**{**good(), **change})


@pytest.mark.parametrize("needle, kwargs", [
    ("weights", {"weights": torch.ones(N + 1)}),
    ("weights", {"weights": torch.ones(N, dtype=torch.int64)}),
    ("bias", {"bias": torch.randn(V + 1)}),
    ("bias", {"bias": torch.randn(V, dtype=torch.float64)}),
    ("reduction", {"reduction": "avg"}),
    ("softcap", {"softcap": 0.0}),
    ("impl", {"impl": "cuda"}),
])
def test_cross_entropy_checks(needle, kwargs):
    with pytest.raises(ValueError, match=needle):
        linear_cross_entropy(**good(), **kwargs)


def test_logprobs_checks():
    with pytest.raises(ValueError, match="temperature"):
        linear_token_logprobs(**good(), temperature=0.0)


def test_ignore_index_is_allowed_and_label_check_can_be_skipped(monkeypatch):
    monkeypatch.undo()  # let the kernel run
    inputs = good()
    inputs["labels"][0] = -100
    assert torch.isfinite(linear_cross_entropy(**inputs))
    # Unchecked out-of-range labels are never used as addresses: their rows come out NaN.
    inputs["labels"][1] = V + 3
    per_token = linear_cross_entropy(**inputs, reduction="none", check_labels=False)
    assert torch.isnan(per_token[1]) and torch.isfinite(per_token[2:]).all()
