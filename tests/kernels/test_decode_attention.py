"""decode_attention against PyTorch's scaled_dot_product_attention, on every path that can run here.

SDPA in float64 is the truth; SDPA in the test dtype is the error a plain-torch
user accepts today (``_kernel_checks``). Outputs and the gradients of query,
key and value are compared. The Triton path runs under the interpreter
(``conftest``), so its shapes stay small; they are still odd enough to leave
partial tiles, several cache splits and fully padded tiles.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _kernel_checks import assert_as_accurate_as_naive
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import decode_attention
from kernels.decode_attention import decode_attention_reference

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
IMPLS = ["torch", pytest.param("triton", marks=needs_triton)]

# (batch, query heads, KV heads, cache length, head dim): MHA, GQA 2 and 4, MQA; odd lengths; non-power-of-2 dims.
SHAPES = [
    (3, 4, 4, 7, 16),
    (3, 4, 2, 33, 80),
    (2, 8, 2, 130, 64),
    (3, 6, 1, 1, 96),
    (2, 4, 2, 50, 32),
]


def left_padding_mask(lengths: list[int], length: int) -> torch.Tensor:
    """[B, T] True on each row's last ``lengths[b]`` positions (a left-padded cache)."""
    return torch.arange(length)[None, :] >= (length - torch.tensor(lengths))[:, None]


def make_inputs(batch, q_heads, kv_heads, length, dim, *, mask="left", scale=1.0):
    tensors = {
        "query": torch.randn(batch, q_heads, dim, dtype=torch.float64) * scale,
        "key": torch.randn(batch, kv_heads, length, dim, dtype=torch.float64),
        "value": torch.randn(batch, kv_heads, length, dim, dtype=torch.float64),
    }
    if mask == "left":  # every row a different valid length, one row full
        lengths = [length] + torch.randint(1, length + 1, (batch - 1,)).tolist()
        tensors["key_mask"] = left_padding_mask(lengths, length)
    elif mask == "holes":  # what a rollout with rows stopping at different steps leaves behind
        tensors["key_mask"] = torch.rand(batch, length) < 0.6
        tensors["key_mask"][:, -1] = True
    return tensors


def sdpa(query, key, value, key_mask=None, scale=None):
    """The PyTorch op, independent of the package: one query position, a broadcast boolean mask, GQA."""
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(query.unsqueeze(2), key, value, attn_mask=attn_mask, scale=scale,
                                         enable_gqa=True)
    return out.squeeze(2)


def check(tensors, dtype, impl, **options):
    upstream = [torch.randn(tensors["query"].shape, dtype=torch.float64)]
    kernel = functools.partial(decode_attention, impl=impl, **options)
    return assert_as_accurate_as_naive(kernel, functools.partial(sdpa, **options), tensors, dtype, upstream)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}-Hq{h}-Hkv{k}-T{t}-D{d}" for b, h, k, t, d in SHAPES])
def test_matches_sdpa_on_left_padded_caches(impl, dtype, shape):
    check(make_inputs(*shape), dtype, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask", [None, "holes"])
def test_matches_sdpa_without_mask_and_with_holes(impl, mask):
    check(make_inputs(3, 4, 2, 37, 24, mask=mask), torch.float32, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_peaked_scores_and_custom_scale(impl):
    check(make_inputs(2, 4, 2, 45, 32, scale=8.0), torch.float32, impl, scale=0.3)


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_without_valid_keys_are_zero_and_nan_free(impl):
    t = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs(3, 4, 2, 40, 16).items()}
    t["key_mask"][1] = False
    query = t["query"].requires_grad_()
    out = decode_attention(query, t["key"], t["value"], t["key_mask"], impl=impl)
    assert torch.count_nonzero(out[1]) == 0 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.count_nonzero(query.grad[1]) == 0
    assert torch.count_nonzero(query.grad[0]) > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_transformers_layouts_without_copies(impl):
    """A [B, Hq, 1, D] query transposed out of [B, 1, Hq, D], and K/V slices of a longer static cache."""
    batch, q_heads, kv_heads, length, dim = 2, 4, 2, 21, 16
    query = torch.randn(batch, 1, q_heads, dim).transpose(1, 2)
    static_k, static_v = (torch.randn(batch, kv_heads, 64, dim) for _ in range(2))
    key, value = static_k[:, :, :length], static_v[:, :, :length]
    key_mask = left_padding_mask([21, 9], length)
    out = decode_attention(query, key, value, key_mask, impl=impl)
    assert out.shape == query.shape
    expected = sdpa(query.squeeze(2).contiguous(), key.contiguous(), value.contiguous(), key_mask)
    torch.testing.assert_close(out.squeeze(2), expected, atol=1e-5, rtol=1e-5)


def test_reference_matches_sdpa():
    t = make_inputs(3, 4, 2, 19, 8)
    t["key_mask"][2] = False
    torch.testing.assert_close(decode_attention_reference(**t), sdpa(**t), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(decode_attention(**t, impl="reference"), sdpa(**t), atol=1e-12, rtol=1e-12)


def test_gradcheck_torch_path():
    t = make_inputs(2, 4, 2, 6, 5)
    t["key_mask"][1, :] = False  # a row without keys must stay differentiable (zero gradient)

    def fn(query, key, value):
        return decode_attention(query, key, value, t["key_mask"], impl="torch")

    inputs = tuple(t[name].requires_grad_() for name in ("query", "key", "value"))
    assert torch.autograd.gradcheck(fn, inputs)


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 4), kv_heads=st.integers(1, 3), group=st.sampled_from([1, 2, 4]),
    length=st.integers(1, 70), dim=st.integers(1, 40), mask=st.sampled_from([None, "left", "holes"]),
)
def test_property_torch_path(batch, kv_heads, group, length, dim, mask):
    check(make_inputs(batch, kv_heads * group, kv_heads, length, dim, mask=mask), torch.float32, "torch")


@needs_triton
@settings(max_examples=5, deadline=None)
@given(
    batch=st.integers(1, 3), kv_heads=st.integers(1, 2), group=st.sampled_from([1, 3, 4]),
    length=st.integers(1, 70), dim=st.integers(1, 40), mask=st.sampled_from([None, "left", "holes"]),
)
def test_property_triton_path(batch, kv_heads, group, length, dim, mask):
    check(make_inputs(batch, kv_heads * group, kv_heads, length, dim, mask=mask), torch.float32, "triton")


@needs_triton
def test_triton_path_is_taken_and_interpreted(monkeypatch):
    import triton

    import kernels.decode_attention_triton as triton_decode

    assert isinstance(triton_decode._split_kernel, triton.runtime.interpreter.InterpretedFunction)
    calls = []
    original = triton_decode.decode_attention_forward

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(triton_decode, "decode_attention_forward", spy)
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "triton")  # via the environment, on CPU tensors
    t = {k: v.float() if v.is_floating_point() else v for k, v in make_inputs(2, 4, 2, 70, 16).items()}
    decode_attention(**t)
    assert len(calls) == 1
    tiles = triton_decode.plan(2, 2, 2, 70, 16, torch.float32, torch.device("cpu"))
    assert tiles.n_splits > 1 and tiles.split_len % tiles.block_t == 0
    assert (tiles.n_splits - 1) * tiles.split_len < 70 <= tiles.n_splits * tiles.split_len


def good():
    return {"query": torch.randn(2, 4, 8), "key": torch.randn(2, 2, 5, 8), "value": torch.randn(2, 2, 5, 8),
            "key_mask": torch.ones(2, 5, dtype=torch.bool)}


@pytest.mark.parametrize("needle, change", [
    ("query", {"query": torch.randint(0, 3, (2, 4, 8))}),
    ("query", {"query": torch.randn(2, 4, 3, 8)}),
    ("query", {"query": torch.randn(2, 8)}),
    ("key must be", {"key": torch.randn(2, 5, 8)}),
    ("value shape", {"value": torch.randn(2, 2, 6, 8)}),
    ("batch", {"query": torch.randn(3, 4, 8)}),
    ("head dim", {"query": torch.randn(2, 4, 9)}),
    ("multiple of key heads", {"query": torch.randn(2, 3, 8)}),
    ("at least one position", {"key": torch.randn(2, 2, 0, 8), "value": torch.randn(2, 2, 0, 8),
                               "key_mask": torch.ones(2, 0, dtype=torch.bool)}),
    ("share a dtype", {"key": torch.randn(2, 2, 5, 8, dtype=torch.float64)}),
    ("key_mask must be a bool", {"key_mask": torch.ones(2, 5)}),
    ("key_mask must have shape", {"key_mask": torch.ones(2, 6, dtype=torch.bool)}),
    ("device", {"key_mask": torch.ones(2, 5, dtype=torch.bool, device="meta")}),
])
def test_bad_input_names_the_argument(needle, change):
    with pytest.raises(ValueError, match=needle):
        decode_attention(**{**good(), **change})


@pytest.mark.parametrize("needle, kwargs", [("scale", {"scale": 0.0}), ("impl", {"impl": "cuda"})])
def test_bad_options_name_the_option(needle, kwargs):
    with pytest.raises(ValueError, match=needle):
        decode_attention(**good(), **kwargs)


@needs_triton
def test_triton_path_rejects_what_it_has_no_tiles_for():
    t = {k: v.double() if v.is_floating_point() else v for k, v in good().items()}
    with pytest.raises(ValueError, match="dtypes"):
        decode_attention(**t, impl="triton")
    wide = {"query": torch.randn(1, 2, 512), "key": torch.randn(1, 1, 3, 512), "value": torch.randn(1, 1, 3, 512)}
    with pytest.raises(ValueError, match="head dims up to 256"):
        decode_attention(**wide, impl="triton")


# Compiles the GPU kernels for an H100 (sm_90) with the tiles ``plan`` picks, in a process without the
# interpreter: the interpreter does not enforce what the compiler does (tl.dot shapes, types, layouts).
COMPILE_FOR_SM90 = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import kernels.decode_attention_triton as m

m._multiprocessors = lambda index: 132  # an H100's SM count; nothing asks a GPU
H100 = GPUTarget("cuda", 90, 32)

def compile(kernel, element, constexprs, num_warps):
    types = {"mask_ptr": "*u8", "out_ptr": "*" + element, "scale_log2": "fp32"}
    signature = {p.name: "constexpr" if p.is_constexpr else types.get(p.name, "*fp32" if p.name.startswith("part")
                 else "*" + element if p.name.endswith("_ptr") else "i32") for p in kernel.params}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    assert triton.compile(source, target=H100, options={"num_warps": num_warps}).asm["cubin"]

names = {torch.bfloat16: "bf16", torch.float32: "fp32"}
for dtype, dim, group, has_mask in [(torch.bfloat16, 128, 4, True), (torch.float32, 80, 1, False),
                                    (torch.bfloat16, 16, 32, True)]:
    tiles = m.plan(64, 8, group, 4096, dim, dtype, torch.device("cuda"))
    compile(m._split_kernel, names[dtype], {"GROUP": group, "HAS_MASK": has_mask, "UPCAST": False,
            "IEEE": dtype == torch.float32, "BLOCK_G": tiles.block_g, "BLOCK_T": tiles.block_t,
            "BLOCK_D": tiles.block_d}, tiles.num_warps)
compile(m._reduce_kernel, "bf16", {"BLOCK_S": 64, "BLOCK_D": 128}, 4)
print("compiled")
"""


@needs_triton
def test_gpu_kernels_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(Path(__file__).parents[2]),
           "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
