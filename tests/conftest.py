"""Shared fixtures: tiny tokenizers and models built from configs (nothing is downloaded).

Every test runs Triton kernels under Triton's interpreter, on CPU tensors.
Triton reads TRITON_INTERPRET when a `@triton.jit` function is *defined*, so it
is set here, before any test module (or a library it imports) can load a kernel
module; `tests/kernels/test_dispatch.py` checks that the kernels really are
interpreted.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import framework.models.latent as latent_module
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import BOS, EOS, PAD, UNK, build_word_tokenizer, wrap_tokenizer


class _DeprecationLog(logging.Handler):
    """Collects the deprecation notices transformers sends through its own logger rather than `warnings`."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _no_deprecated_calls():
    """Fail a test whose calls transformers announces it will remove (its `warnings` are errors: pyproject.toml)."""
    handler = _DeprecationLog()
    logger = logging.getLogger("transformers")  # does not propagate to the root logger, so caplog misses it
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"deprecated call logged by transformers: {handler.messages[0]}"


@pytest.fixture
def fed_inputs(monkeypatch) -> list[torch.Tensor]:
    """The inputs `[B, 1, H]` of every `forward_one_position` call while the test runs (detached): what
    `run_with_thoughts` feeds the model at each thought column."""
    fed: list[torch.Tensor] = []
    original = latent_module.forward_one_position

    def recording(model, inputs_embeds, *args):
        fed.append(inputs_embeds.detach())
        return original(model, inputs_embeds, *args)

    monkeypatch.setattr(latent_module, "forward_one_position", recording)
    return fed


@pytest.fixture(scope="session")
def addition_task() -> AdditionChain:
    return AdditionChain(n_terms=3, max_operand=9)


@pytest.fixture(scope="session")
def word_tokenizer(addition_task) -> PreTrainedTokenizerFast:
    return build_word_tokenizer(addition_task.vocabulary())


@pytest.fixture(scope="session")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on English-ish text, so merges straddle word pieces."""
    corpus = [
        "Question: what is 12 plus 35? Let me think step by step.",
        "First add the tens, then add the units; the answer is 47.",
        "The model reasons in a chain of thought before it answers.",
        "Every wumpus is a yumpus. Tom is a wumpus. Is Tom a yumpus?",
    ] * 50
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[PAD, BOS, EOS, UNK], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(corpus, trainer)
    return wrap_tokenizer(backend)
