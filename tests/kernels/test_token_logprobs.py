"""linear_token_logprobs (and entropy) against log_softmax of materialised float64 logits."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _kernel_checks import assert_as_accurate_as_naive
from kernels import linear_token_logprobs

HAS_TRITON = importlib.util.find_spec("triton") is not None
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"))]
N, H, V = 37, 24, 101


def make_inputs(n=N, h=H, v=V, *, masked=0.3, scale=1.0, lead=None):
    shape = lead if lead is not None else (n,)
    labels = torch.randint(0, v, shape)
    labels[torch.rand(shape) < masked] = -100
    return {
        "hidden": torch.randn(*shape, h, dtype=torch.float64) * scale,
        "weight": torch.randn(v, h, dtype=torch.float64) / h**0.5,
        "labels": labels,
    }


def materialised(hidden, weight, labels, *, temperature=1.0, return_entropy=False):
    """Independent of the package: full log_softmax, zeros at ignored positions."""
    logp = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    active = labels != -100
    logprobs = torch.where(active, logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    entropy = torch.where(active, -(logp.exp() * logp).sum(-1), 0.0)
    return (logprobs, entropy) if return_entropy else logprobs


def check(tensors, dtype, impl, **options):
    shape = tensors["labels"].shape
    upstream = [torch.randn(shape, dtype=torch.float64) for _ in range(2 if options.get("return_entropy") else 1)]
    kernel = functools.partial(linear_token_logprobs, impl=impl, **options)
    return assert_as_accurate_as_naive(kernel, functools.partial(materialised, **options), tensors, dtype, upstream)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_and_entropy(impl, dtype, temperature):
    check(make_inputs(), dtype, impl, temperature=temperature, return_entropy=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_logprobs_only_peaked_and_batched(impl):
    out = check(make_inputs(lead=(2, 19), scale=30.0), torch.float32, impl)
    assert out["out0"].shape == (2, 19)


@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_positions_are_zero_without_gradient(impl):
    t = make_inputs(masked=0.5)
    hidden = t["hidden"].float().requires_grad_()
    logprobs, entropy = linear_token_logprobs(hidden, t["weight"].float(), t["labels"], return_entropy=True,
                                              impl=impl)
    ignored = t["labels"] == -100
    assert ignored.any() and (~ignored).any()
    assert torch.count_nonzero(logprobs[ignored]) == 0 and torch.count_nonzero(entropy[ignored]) == 0
    assert (logprobs[~ignored] < 0).all() and (entropy[~ignored] > 0).all()
    (logprobs.sum() + entropy.sum()).backward()
    assert torch.count_nonzero(hidden.grad[ignored]) == 0
    assert torch.count_nonzero(hidden.grad[~ignored].abs().sum(-1)) == int((~ignored).sum())


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored(impl):
    t = make_inputs(masked=1.0)
    hidden = t["hidden"].float().requires_grad_()
    logprobs = linear_token_logprobs(hidden, t["weight"].float(), t["labels"], impl=impl)
    logprobs.sum().backward()
    assert torch.count_nonzero(logprobs) == 0 and torch.count_nonzero(hidden.grad) == 0


def test_gradcheck_torch_path():
    t = make_inputs(7, 5, 11)

    def fn(hidden, weight):
        return linear_token_logprobs(hidden, weight, t["labels"], temperature=0.8, return_entropy=True,
                                     impl="torch")

    assert torch.autograd.gradcheck(fn, (t["hidden"].requires_grad_(), t["weight"].requires_grad_()))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 30), h=st.integers(1, 20), v=st.integers(2, 60), masked=st.sampled_from([0.0, 0.5, 1.0]))
def test_property_torch_path(n, h, v, masked):
    check(make_inputs(n, h, v, masked=masked), torch.float32, "torch", return_entropy=True)
