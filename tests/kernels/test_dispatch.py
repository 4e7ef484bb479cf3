"""Which path runs: keyword > THOUGHTLAB_KERNELS > device; and the Triton path really runs here."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

import kernels
import kernels.linear_softmax as torch_primitive
from kernels import linear_cross_entropy, linear_token_logprobs
from kernels.dispatch import resolve_impl
from kernels.interpreter import check_interpretable

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")


def test_device_default_and_precedence(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_impl(None, cpu) == "torch"
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "reference")
    assert resolve_impl(None, cpu) == "reference"
    assert resolve_impl("torch", cpu) == "torch"  # the keyword wins over the environment


def test_unknown_names(monkeypatch):
    with pytest.raises(ValueError, match="impl="):
        resolve_impl("cuda", torch.device("cpu"))
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "fast")
    with pytest.raises(ValueError, match="THOUGHTLAB_KERNELS"):
        resolve_impl(None, torch.device("cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_impl("triton", torch.device("cpu"))


@needs_triton
def test_kernels_compiled_for_the_gpu_are_refused_on_cpu_tensors(monkeypatch):
    import kernels.decode_attention_triton as triton_decode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    check_interpretable(triton_decode._split_kernel, cpu, "kernels.decode_attention_triton")  # interpreted: fine
    compiled = object()  # stands for a @triton.jit function defined without the interpreter
    check_interpretable(compiled, cuda, "kernels.decode_attention_triton")  # CUDA tensors need no interpreter
    with pytest.raises(ValueError, match="before importing kernels.decode_attention_triton"):
        check_interpretable(compiled, cpu, "kernels.decode_attention_triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CPU tensors needs TRITON_INTERPRET=1"):
        check_interpretable(compiled, cpu, "kernels.decode_attention_triton")


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@needs_triton
@pytest.mark.parametrize("op", ["cross_entropy", "logprobs"])
def test_triton_path_is_taken_and_interpreted(monkeypatch, op):
    import triton

    import kernels.linear_softmax_triton as triton_primitive

    assert isinstance(triton_primitive._stats_kernel, triton.runtime.interpreter.InterpretedFunction)
    stats = _spy(monkeypatch, triton_primitive, "stats")
    grads = _spy(monkeypatch, triton_primitive, "grads")
    torch_sweeps = _spy(monkeypatch, torch_primitive, "sweep")
    monkeypatch.setenv("THOUGHTLAB_KERNELS", "triton")  # via the environment, on CPU tensors
    hidden = torch.randn(5, 16, requires_grad=True)
    labels = torch.tensor([1, -100, 3, 4, 0])
    if op == "cross_entropy":
        out = linear_cross_entropy(hidden, torch.randn(40, 16), labels)
    else:
        out = linear_token_logprobs(hidden, torch.randn(40, 16), labels).sum()
    out.backward()
    assert len(stats) == 1 and len(grads) == 1 and torch_sweeps == []
    rows = stats[0][4]
    assert rows.count.item() == 4  # the ignored token is counted out on the device


@needs_triton
def test_triton_compaction_puts_active_rows_first():
    import kernels.linear_softmax_triton as triton_primitive

    active = torch.tensor([False, True, False, True, True, False])
    rows = triton_primitive.compact(active)
    assert rows.count.tolist() == [3]
    assert rows.index[:3].tolist() == [1, 3, 4] and sorted(rows.index[3:].tolist()) == [0, 2, 5]


def test_reference_path_matches_torch_path():
    hidden, weight, labels = torch.randn(6, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64), \
        torch.randint(0, 11, (6,))
    ours = linear_cross_entropy(hidden, weight, labels, impl="torch")
    reference = linear_cross_entropy(hidden, weight, labels, impl="reference")
    assert torch.allclose(ours, reference, rtol=1e-12)


def _kernel_imports(path: Path) -> set[str]:
    """The `kernels` modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kernels."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("kernels.")}
    return found


def test_kernel_modules_import_no_cycle():
    """A cycle makes the result depend on which module is imported first (dispatch and the Triton modules had one)."""
    package = Path(kernels.__file__).parent
    imports = {path.stem: _kernel_imports(path) for path in package.glob("*.py") if path.stem != "__init__"}
    for start in imports:
        reached, frontier = set(), set(imports[start])
        while frontier:
            reached |= frontier
            frontier = {m for name in frontier for m in imports.get(name, ())} - reached
        assert start not in reached, f"kernels.{start} imports itself through {sorted(reached)}"
