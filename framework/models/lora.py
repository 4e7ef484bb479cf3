"""LoRA adapters through peft: a wrapped model trains in every regime, only its adapters optimised.

`add_lora` wraps a causal LM in a `peft` LoRA model. Nothing else changes: a
`Reasoner` holds the wrapped model as it holds any other, regimes optimise the
parameters that require gradients (the adapters alone; the base weights are
frozen), and the fused losses reach the transformer through
`framework.models.backbone.backbone`. A reasoner saves the merged weights as
its checkpoint, so the directory loads as a plain Hugging Face model, and the
adapter alone beside them (`merged_copy`, `ADAPTER_DIR`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

# Where a reasoner's checkpoint keeps the adapter alone, in peft's format (`PeftModel.from_pretrained(base, dir)`).
ADAPTER_DIR = "adapter"


def add_lora(
    model: PreTrainedModel,
    rank: int,
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = "all-linear",
) -> PeftModel:
    """`model` with LoRA adapters of `rank` on `target_modules` (every linear layer but the LM head by default).

    `alpha` defaults to `2 * rank`, the common choice (scale 2). The base
    weights, embeddings included, are frozen: new reasoning tokens keep the
    rows `add_reasoning_tokens` gave them, which start from their sub-word
    pieces' meaning.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` while wrapping.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def is_peft(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain model with the adapters merged into its weights; `model` itself keeps training with its adapters."""
    return copy.deepcopy(model).merge_and_unload()
