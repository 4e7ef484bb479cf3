"""Small random-initialised Hugging Face models, local checkpoints and named pretrained models.

Tests and CPU recipes train models from configs (nothing is downloaded); real
work points `load_pretrained` at a local checkpoint directory, or at a named
model (`framework.models.pretrained.PRETRAINED`) converted once from an
installed package into a local cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
)

from framework.models.pretrained import resolve_checkpoint

Family = Literal["llama", "qwen3", "gpt2"]
Size = Literal["1m", "20m"]

# (hidden, layers, heads, kv_heads, mlp) per size. Sized by the transformer
# blocks alone: ~0.8M and ~21M parameters for Llama/Qwen3 (GPT-2's 4x MLP lands close).
_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "1m": (128, 4, 4, 2, 384),
    "20m": (384, 12, 6, 2, 1152),
}
FAMILIES: tuple[str, ...] = ("llama", "qwen3", "gpt2")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def tiny_config(
    family: Family, size: Size, *, vocab_size: int, max_positions: int = 1024, tokenizer: PreTrainedTokenizerBase | None = None
) -> PretrainedConfig:
    """A small config of a real architecture family; `tokenizer` supplies the special ids."""
    if size not in _SHAPES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(_SHAPES)}")
    hidden, layers, heads, kv_heads, mlp = _SHAPES[size]
    ids = {}
    if tokenizer is not None:
        ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=mlp, max_position_embeddings=max_positions,
            tie_word_embeddings=True, **ids,
        )
    if family == "qwen3":
        return Qwen3Config(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv_heads, head_dim=hidden // heads, intermediate_size=mlp,
            max_position_embeddings=max_positions, tie_word_embeddings=True, **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
            # GPT-2 has no dropout-free default; dropout only slows tiny-model convergence.
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids,
        )
    raise ValueError(f"unknown model family {family!r}; expected one of {list(FAMILIES)}")


def build_model(
    family: Family, size: Size, tokenizer: PreTrainedTokenizerBase, *, max_positions: int = 1024, seed: int | None = None
) -> PreTrainedModel:
    """A randomly initialised `AutoModelForCausalLM` matching `tokenizer`'s vocabulary."""
    config = tiny_config(family, size, vocab_size=len(tokenizer), max_positions=max_positions, tokenizer=tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer of a local Hugging Face checkpoint directory or named model (never the network)."""
    path = _checkpoint_dir(path)
    # transformers would otherwise build an empty tokenizer from the model type alone.
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} has no tokenizer: expected one of {', '.join(_TOKENIZER_FILES)} "
            "(save the tokenizer with the model: tokenizer.save_pretrained(path))"
        )
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def load_pretrained(path: str | os.PathLike, **model_kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a local Hugging Face checkpoint directory or a named model such as
    `smollm2-135m-instruct` (never the network; a named model is converted into the cache on first use)."""
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(_checkpoint_dir(path), local_files_only=True, **model_kwargs)
    return model, tokenizer


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    path = resolve_checkpoint(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
    return path


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
