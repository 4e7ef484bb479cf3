"""Input checks shared by the fused ops, run before any kernel launches.

Every failure is a ``ValueError`` that names the offending argument, so a wrong
call fails loudly at the call site instead of deep inside a kernel.
"""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def flatten_tokens(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    ignore_index: int = -100,
    check_labels: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Check the arguments and return ``hidden`` as ``[N, H]``, ``labels`` and ``weights`` as ``[N]``.

    ``check_labels`` decides whether labels are range-checked. The check is one
    reduction read back to the host: free for CPU tensors, a synchronisation on
    CUDA. ``None`` (the default) checks only where it is free. Unchecked
    out-of-range labels are never used as addresses; their rows come out NaN.
    """
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got {describe(hidden)}")
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be [N, H] or [B, T, H], got shape {tuple(hidden.shape)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a [V, H] tensor, got {describe(weight)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight has {weight.shape[1]} input features but hidden has {hidden.shape[-1]} "
            f"(weight {tuple(weight.shape)}, hidden {tuple(hidden.shape)})"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {describe(labels)}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match hidden's token shape {tuple(hidden.shape[:-1])}"
        )
    tensors = {"hidden": hidden, "weight": weight, "labels": labels}
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
            raise ValueError(f"weights must be a floating-point tensor, got {describe(weights)}")
        if weights.shape != labels.shape:
            raise ValueError(f"weights shape {tuple(weights.shape)} does not match labels shape {tuple(labels.shape)}")
        tensors["weights"] = weights
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {describe(bias)}")
        if bias.dtype != weight.dtype:
            raise ValueError(f"bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
        tensors["bias"] = bias
    check_same_device(tensors)

    flat_labels = labels.reshape(-1)
    if check_labels is None:
        check_labels = flat_labels.device.type == "cpu"
    if check_labels:
        vocab = weight.shape[0]
        bad = ((flat_labels < 0) | (flat_labels >= vocab)) & (flat_labels != ignore_index)
        if bool(bad.any()):
            raise ValueError(
                f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; "
                f"found {flat_labels[bad][:5].tolist()}"
            )
    flat_weights = weights.reshape(-1) if weights is not None else None
    return hidden.reshape(-1, hidden.shape[-1]), flat_labels, flat_weights


def check_kernel_dtype(tensor: torch.Tensor, name: str = "hidden") -> None:
    """The Triton kernels are written for the dtypes models train in; ``name`` is the argument checked."""
    if tensor.dtype not in KERNEL_DTYPES:
        raise ValueError(f"impl='triton' supports {name} dtypes {KERNEL_DTYPES}, got {tensor.dtype}")


def check_same_device(tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor on one device; the error lists each argument's device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


def describe(value: object) -> str:
    """What an argument is, for an error message: a tensor's dtype and shape, or any other value's type."""
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__
