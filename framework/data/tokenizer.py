"""Tokenizers: the word-level one of the synthetic tasks, and the reasoning tokens every reasoner needs."""

from __future__ import annotations

from typing import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"

# Markup of the reasoning modes. `<think>`/`</think>` delimit a visible trace (as
# in Qwen3 and DeepSeek-R1); `<pause>` is the filler of the pause-token control;
# `<bot>`/`<latent>`/`<eot>` frame Coconut's continuous thoughts.
THINK_START, THINK_END, PAUSE = "<think>", "</think>", "<pause>"
LATENT_START, LATENT, LATENT_END = "<bot>", "<latent>", "<eot>"
REASONING_TOKENS = (THINK_START, THINK_END, PAUSE, LATENT_START, LATENT, LATENT_END)


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A real `PreTrainedTokenizerFast` over whitespace-separated `words`.

    Every task text is space-separated words, so a word-level vocabulary is
    exact and tiny (tens of tokens), which keeps the synthetic models small.
    The reasoning tokens are added as special tokens: they split text wherever
    they occur, even without surrounding spaces, and vanish from decodes that
    skip special tokens.
    """
    specials = [PAD, BOS, EOS, UNK, *REASONING_TOKENS]
    vocab = {token: index for index, token in enumerate(specials)}
    for word in sorted(set(words) - set(specials)):
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    return wrap_tokenizer(backend)


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` as a Hugging Face tokenizer with this project's special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(REASONING_TOKENS),
        clean_up_tokenization_spaces=False,
    )


def missing_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Iterable[str]) -> list[str]:
    """The `tokens` that `tokenizer` does not encode as one single id."""
    missing = []
    for token in tokens:
        ids = tokenizer.convert_tokens_to_ids(token)
        if ids is None or ids == tokenizer.unk_token_id:
            missing.append(token)
    return missing


def add_reasoning_tokens(tokenizer: PreTrainedTokenizerBase, model=None, *, init_from: str | None = None) -> list[str]:
    """Add any missing reasoning tokens to `tokenizer` (and grow `model`'s embeddings).

    As Coconut does, every new token starts as a copy of an existing token's
    input and output embedding (`init_from`, by default the EOS token): a
    trained model then reads and predicts the new tokens like a real one from
    the first step, instead of from random rows. Returns what was added.
    """
    added = missing_tokens(tokenizer, REASONING_TOKENS)
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    if model is None:
        return added
    old_rows = model.get_input_embeddings().num_embeddings
    reasoning_ids = dict(zip(REASONING_TOKENS, tokenizer.convert_tokens_to_ids(list(REASONING_TOKENS))))
    new_ids = [index for token, index in reasoning_ids.items() if token in added or index >= old_rows]
    if not new_ids:
        return added
    source = init_from if init_from is not None else tokenizer.eos_token
    if source is None or source in added or missing_tokens(tokenizer, [source]):
        raise ValueError(
            f"add_reasoning_tokens: init_from={source!r} is not an existing token of the tokenizer; "
            "name a token whose embedding the new tokens copy"
        )
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    source_id = tokenizer.convert_tokens_to_ids(source)
    with torch.no_grad():
        # Tied heads share one matrix: the second copy is then a no-op.
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            if embedding is not None:
                embedding.weight[new_ids] = embedding.weight[source_id].clone()
                if getattr(embedding, "bias", None) is not None:
                    embedding.bias[new_ids] = embedding.bias[source_id].clone()
    return added
