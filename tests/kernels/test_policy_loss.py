"""linear_policy_loss (GRPO's first-iteration loss with head gradients from the forward) against float64 autograd."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from _kernel_checks import assert_as_accurate_as_naive
from _rounding import rounding_tolerance

from kernels import linear_policy_loss

HAS_TRITON = importlib.util.find_spec("triton") is not None
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed"))]
# Odd sizes: no dimension is a multiple of any block or chunk size.
N, H, V = 37, 24, 101


def make_inputs(n: int = N, h: int = H, v: int = V, *, masked: float = 0.3, lead: tuple[int, ...] | None = None):
    """Hidden states, head, labels and aggregation weights (some 0 on scored tokens, as truncated completions get),
    and, apart, per-token advantages and reference log-probs."""
    shape = lead if lead is not None else (n,)
    labels = torch.randint(0, v, shape)
    labels[torch.rand(shape) < masked] = -100
    weights = torch.rand(shape, dtype=torch.float64) / n
    weights[torch.rand(shape) < 0.2] = 0.0
    tensors = {
        "hidden": torch.randn(*shape, h, dtype=torch.float64),
        "weight": torch.randn(v, h, dtype=torch.float64) / h**0.5,
        "labels": labels,
        "weights": weights,
    }
    constants = {"advantages": torch.randn(shape), "ref_logprobs": -torch.rand(shape) * 5}
    return tensors, constants


def materialised(hidden, weight, labels, weights, *, advantages, ref_logprobs, beta=0.0, temperature=1.0,
                 return_entropy=False):
    """Independent of the package: full log_softmax, GRPO's ratio (1 in value) and k3 KL through autograd."""
    logp = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    active = labels != -100
    logprobs = torch.where(active, logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    ratio = torch.exp(logprobs - logprobs.detach())
    delta = ref_logprobs - logprobs
    term = -advantages * ratio + beta * (torch.exp(delta) - delta - 1)
    loss = torch.where(active, weights * term, 0.0).sum()
    entropy = torch.where(active, -(logp.exp() * logp).sum(-1), 0.0)
    outputs = (loss, logprobs.detach(), entropy.detach())
    return outputs if return_entropy else outputs[:2]


def kernel(hidden, weight, labels, weights, *, return_entropy=False, **options):
    loss, logprobs, entropy = linear_policy_loss(hidden, weight, labels, weights=weights,
                                                 return_entropy=return_entropy, **options)
    return (loss, logprobs, entropy) if return_entropy else (loss, logprobs)


def check(tensors, constants, dtype, impl, **options):
    shape = tensors["labels"].shape
    # A scalar upstream gradient other than 1 checks that the backward scales the forward's gradients.
    upstream = [torch.tensor(0.7, dtype=torch.float64), torch.randn(shape, dtype=torch.float64),
                torch.randn(shape, dtype=torch.float64)]
    return assert_as_accurate_as_naive(
        functools.partial(kernel, impl=impl, **constants, **options),
        functools.partial(materialised, **constants, **options), tensors, dtype, upstream,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_loss_and_head_gradients_torch_path(dtype, beta, temperature):
    tensors, constants = make_inputs()
    check(tensors, constants, dtype, "torch", beta=beta, temperature=temperature, return_entropy=True)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_head_gradients_triton_path(dtype):
    tensors, constants = make_inputs()
    check(tensors, constants, dtype, "triton", beta=0.04, temperature=0.7, return_entropy=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_batched_rows_and_no_entropy(impl):
    tensors, constants = make_inputs(lead=(3, 11))
    out = check(tensors, constants, torch.float32, impl, beta=0.1)
    assert out["out1"].shape == (3, 11)


def test_micro_batches_with_the_global_weights_add_up_to_the_whole_batch():
    """Gradient accumulation: each micro-batch's weights carry the whole batch's normaliser, so its gradients sum to
    the whole batch's, within float32 rounding measured against float64."""
    tensors, constants = make_inputs(lead=(7, 9), masked=0.2)

    def head_grads(dtype: torch.dtype, splits: list[slice]) -> torch.Tensor:
        hidden = tensors["hidden"].to(dtype, copy=True).requires_grad_()
        weight = tensors["weight"].to(dtype, copy=True).requires_grad_()
        for rows in splits:
            loss, _, _ = linear_policy_loss(
                hidden[rows], weight, tensors["labels"][rows], constants["advantages"][rows],
                tensors["weights"][rows], beta=0.1, ref_logprobs=constants["ref_logprobs"][rows], impl="torch",
            )
            loss.backward()
        return torch.cat([hidden.grad.flatten(), weight.grad.flatten()])

    whole = [slice(0, 7)]
    gold, once = head_grads(torch.float64, whole), head_grads(torch.float32, whole)
    for splits in ([slice(0, 3), slice(3, 7)], [slice(0, 1), slice(1, 2), slice(2, 7)]):
        parts = head_grads(torch.float32, splits)
        assert (parts.double() - once.double()).abs().max() <= rounding_tolerance(once, gold)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored_gives_zero_loss_and_no_gradient(impl):
    tensors, constants = make_inputs(masked=1.0)
    hidden = tensors["hidden"].float().requires_grad_()
    loss, logprobs, entropy = linear_policy_loss(hidden, tensors["weight"].float(), tensors["labels"],
                                                 constants["advantages"], tensors["weights"].float(),
                                                 return_entropy=True, impl=impl)
    loss.backward()
    assert loss == 0 and torch.count_nonzero(logprobs) == 0 and torch.count_nonzero(entropy) == 0
    assert torch.count_nonzero(hidden.grad) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_without_grad_it_scores_only_and_a_second_backward_recomputes(impl):
    tensors, constants = make_inputs()
    hidden, weight = tensors["hidden"].float().requires_grad_(), tensors["weight"].float()
    args = (tensors["labels"], constants["advantages"], tensors["weights"].float())
    with torch.no_grad():
        scored = linear_policy_loss(hidden, weight, *args, impl=impl)
    assert not scored.loss.requires_grad
    loss = linear_policy_loss(hidden, weight, *args, impl=impl).loss
    torch.testing.assert_close(loss, scored.loss, rtol=0, atol=0)
    loss.backward(retain_graph=True)
    first = hidden.grad.clone()
    loss.backward()  # retain_graph: the forward's gradients were handed over, these are recomputed
    assert (hidden.grad - 2 * first).abs().max() <= rounding_tolerance(first, first.double())


def test_bad_input_is_named():
    tensors, constants = make_inputs()
    args = (tensors["hidden"].float(), tensors["weight"].float(), tensors["labels"])
    with pytest.raises(ValueError, match="ref_logprobs"):
        linear_policy_loss(*args, constants["advantages"], tensors["weights"], beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        linear_policy_loss(*args, constants["advantages"][:-1], tensors["weights"])


def test_gradcheck_torch_path_on_the_kl_term():
    """Finite differences see the KL term only: the advantage term's value is constant (ratio 1) while its gradient
    is not, so it is checked against autograd above, and here the advantages are 0."""
    tensors, constants = make_inputs(7, 5, 11)

    def fn(hidden, weight):
        return linear_policy_loss(hidden, weight, tensors["labels"], torch.zeros_like(constants["advantages"]).double(),
                                  tensors["weights"], beta=0.1, ref_logprobs=constants["ref_logprobs"].double(),
                                  temperature=0.8, impl="torch").loss

    # gradcheck's second backward recomputes what the first took from the forward: equal up to float64 rounding.
    assert torch.autograd.gradcheck(fn, (tensors["hidden"].requires_grad_(), tensors["weight"].requires_grad_()),
                                    nondet_tol=1e3 * torch.finfo(torch.float64).eps)
