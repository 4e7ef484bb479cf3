"""linear_cross_entropy against a float64 reference, on every path that can run here."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _kernel_checks import assert_as_accurate_as_naive, relative_error
from kernels import linear_cross_entropy
from kernels.linear_cross_entropy import linear_cross_entropy_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"))]
# Odd sizes: no dimension is a multiple of any block or chunk size.
N, H, V = 37, 24, 101


def make_inputs(
    n: int = N, h: int = H, v: int = V, *, masked: float = 0.3, weighted: bool = True, bias: bool = True,
    scale: float = 1.0, lead: tuple[int, ...] | None = None,
) -> dict[str, torch.Tensor]:
    shape = lead if lead is not None else (n,)
    labels = torch.randint(0, v, shape)
    labels[torch.rand(shape) < masked] = -100
    tensors = {
        "hidden": torch.randn(*shape, h, dtype=torch.float64) * scale,
        "weight": torch.randn(v, h, dtype=torch.float64) / h**0.5,
        "labels": labels,
    }
    if weighted:
        tensors["weights"] = torch.rand(shape, dtype=torch.float64) * 2
    if bias:
        tensors["bias"] = torch.randn(v, dtype=torch.float64)
    return tensors


def check(tensors, dtype, impl, upstream=None, **options):
    reduction = options.get("reduction", "mean")
    if upstream is None:
        token_shape = tensors["labels"].shape
        upstream = torch.randn(token_shape, dtype=torch.float64) if reduction == "none" else torch.tensor(1.0)
    kernel = functools.partial(linear_cross_entropy, impl=impl, **options)
    reference = functools.partial(_reference, **options)
    return assert_as_accurate_as_naive(kernel, reference, tensors, dtype, [upstream])


def _reference(hidden, weight, labels, weights=None, bias=None, **options):
    flat = linear_cross_entropy_reference(
        hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
        None if weights is None else weights.reshape(-1), bias=bias, **options,
    )
    return flat.reshape(labels.shape) if options.get("reduction") == "none" else flat


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64(impl, dtype, reduction):
    check(make_inputs(), dtype, impl, reduction=reduction)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("masked", [0.0, 0.5, 1.0])
def test_masked_fractions(impl, masked):
    out = check(make_inputs(masked=masked), torch.float32, impl, reduction="mean")
    if masked == 1.0:
        assert out["out0"].item() == 0.0
        for name in ("d_hidden", "d_weight", "d_bias"):
            assert torch.count_nonzero(out[name]) == 0, name


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcap_and_z_loss(impl, dtype):
    # scale makes |logits| large enough that the cap and the z-loss both matter
    check(make_inputs(scale=8.0), dtype, impl, reduction="none", softcap=3.0, z_loss=1e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_peaked_softmax(impl):
    """Logits in the hundreds: the log-sum-exp must be online-stable, not exp-then-log."""
    tensors = make_inputs(scale=40.0)
    out = check(tensors, torch.float32, impl, reduction="sum")
    assert out["out0"] > 100  # really peaked: most tokens' losses are far from log(V)


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_hidden(impl):
    out = check(make_inputs(lead=(3, 13)), torch.float32, impl, reduction="none")
    assert out["out0"].shape == (3, 13)
    assert out["d_hidden"].shape == (3, 13, H)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_weight_tokens_are_inactive(impl):
    """Zero-weight tokens contribute nothing, and the mean divides by the weight sum."""
    tensors = make_inputs(masked=0.0, bias=False)
    tensors["weights"][::2] = 0.0
    out = check(tensors, torch.float32, impl, reduction="none")
    assert torch.count_nonzero(out["out0"][::2]) == 0
    assert torch.count_nonzero(out["d_hidden"][::2]) == 0
    mean = linear_cross_entropy(**{k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                                impl=impl)
    expected = out["out0"].sum() / tensors["weights"].sum()
    assert relative_error(mean, expected) < 1e-5


def test_torch_path_skips_masked_rows(monkeypatch):
    """Masked tokens cost no compute: only the unmasked rows reach the logit sweep."""
    import kernels.linear_softmax as primitive

    seen = []
    original = primitive.sweep

    def spy(hidden, *args, **kwargs):
        seen.append(hidden.shape[0])
        return original(hidden, *args, **kwargs)

    monkeypatch.setattr(primitive, "sweep", spy)
    labels = torch.full((100,), -100)
    labels[:10] = 3
    hidden = torch.randn(100, H, requires_grad=True)
    linear_cross_entropy(hidden, torch.randn(V, H), labels, impl="torch").backward()
    assert seen == [10]


def test_no_grad_evaluation_takes_no_gradients(monkeypatch):
    import kernels.linear_softmax as primitive

    calls = []
    original = primitive.sweep
    monkeypatch.setattr(primitive, "sweep", lambda *a, **k: calls.append(k.get("coefficients")) or original(*a, **k))
    hidden = torch.randn(N, H, requires_grad=True)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, torch.randn(V, H), torch.randint(0, V, (N,)), impl="torch")
    assert calls == [None] and not loss.requires_grad


def test_gradcheck_torch_path():
    """Float64 finite differences through every option, including a non-scalar upstream gradient."""
    t = make_inputs(9, 5, 13, masked=0.3)
    for reduction in ("mean", "none"):
        def fn(hidden, weight, bias):
            return linear_cross_entropy(hidden, weight, t["labels"], t["weights"], bias=bias, softcap=2.0,
                                        z_loss=0.1, reduction=reduction, impl="torch")
        args = tuple(t[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
        # gradcheck re-runs backward: the first uses the in-forward gradients, later
        # ones recompute, so they agree to rounding rather than bit for bit.
        assert torch.autograd.gradcheck(fn, args, nondet_tol=1e-12)


def test_chunking_does_not_change_the_result(monkeypatch):
    """Many small chunks (and a partial last one) give the same loss and gradients as one."""
    import kernels.linear_softmax as primitive

    t = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs(masked=0.2).items()}
    results = []
    for elements in (1 << 22, 7 * V):
        monkeypatch.setattr(primitive, "CHUNK_ELEMENTS", elements)
        assert primitive.chunk_rows_for(V) == (16 if elements < 1 << 22 else (1 << 22) // V // 16 * 16)
        hidden = t["hidden"].clone().requires_grad_()
        loss = linear_cross_entropy(hidden, t["weight"], t["labels"], t["weights"], bias=t["bias"], impl="torch")
        loss.backward()
        results.append((loss.detach(), hidden.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 40), h=st.integers(1, 20), v=st.integers(2, 70),
    masked=st.sampled_from([0.0, 0.5, 0.9, 1.0]), reduction=st.sampled_from(["mean", "sum", "none"]),
    bias=st.booleans(), weighted=st.booleans(),
)
def test_property_torch_path(n, h, v, masked, reduction, bias, weighted):
    check(make_inputs(n, h, v, masked=masked, bias=bias, weighted=weighted), torch.float32, "torch",
          reduction=reduction)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@settings(max_examples=4, deadline=None)
@given(
    n=st.integers(1, 40), h=st.integers(1, 40), v=st.integers(2, 80),
    masked=st.sampled_from([0.0, 0.5, 1.0]), reduction=st.sampled_from(["mean", "none"]),
)
def test_property_triton_path(n, h, v, masked, reduction):
    check(make_inputs(n, h, v, masked=masked), torch.float32, "triton", reduction=reduction, softcap=4.0)


def test_second_backward_recomputes_fused_gradients():
    """The in-forward gradients are handed over once; retain_graph backward passes recompute them."""
    t = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs().items()}
    hidden = t["hidden"].requires_grad_()
    loss = linear_cross_entropy(hidden, t["weight"], t["labels"], t["weights"], z_loss=0.1, impl="torch")
    first = torch.autograd.grad(loss, hidden, torch.tensor(2.0), retain_graph=True)[0]
    second = torch.autograd.grad(loss, hidden, torch.tensor(2.0))[0]
    assert torch.count_nonzero(first) > 0
    assert torch.allclose(first, second, rtol=1e-5, atol=1e-7)
