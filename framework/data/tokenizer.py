"""Tokenizers: the word-level one of the synthetic tasks, and the reasoning tokens every reasoner needs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:
    # Type only: importing transformers' modeling code here would load Triton before the kernel tests set
    # TRITON_INTERPRET (the root conftest imports this module first).
    from transformers import PreTrainedModel

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


def add_reasoning_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[str]:
    """Add any missing reasoning tokens to `tokenizer` (and grow `model`'s embeddings). Returns what was added.

    Each new token starts from its own meaningful row, input and output: the
    mean embedding of the sub-word pieces its text form has in the tokenizer
    without it (`<think>` -> `<`, `think`, `>`; `</think>` -> `</`, `think`,
    `>`), as is common practice. The whole text form, brackets and slash
    included, keeps the opening and closing tokens apart; a shared copy (of
    EOS, say) would leave a model with tied embeddings unable to tell
    `<think>` from `</think>` or from EOS, and a greedy tie goes to EOS. A
    token whose text has no known piece (a word-level vocabulary) gets a
    sample of a normal with the existing rows' mean and covariance (Hewitt
    2021; transformers' `mean_resizing`), from a fixed seed so a checkpoint
    always grows the same rows.
    """
    added = missing_tokens(tokenizer, REASONING_TOKENS)
    known_rows = len(tokenizer)  # before adding: rows past it (a matrix padded past the vocabulary) were never trained
    pieces = {
        token: tokenizer(token, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for token in REASONING_TOKENS
    }
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    if model is None:
        return added
    old_rows = model.get_input_embeddings().num_embeddings
    reasoning_ids = dict(zip(REASONING_TOKENS, tokenizer.convert_tokens_to_ids(list(REASONING_TOKENS))))
    new = {token: index for token, index in reasoning_ids.items() if token in added or index >= old_rows}
    if not new:
        return added
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    taken = set(reasoning_ids.values())
    known = [i for i in range(min(known_rows, old_rows)) if i not in taken]
    sources = _piece_sources(pieces, new, set(known), tokenizer.unk_token_id)
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        for embedding in (inputs, outputs):
            if embedding is None or (embedding is outputs and outputs.weight is inputs.weight):
                continue  # no head, or a tied one: the input rows are its rows
            embedding.weight[list(new.values())] = _starting_rows(embedding.weight, sources, known)
            if getattr(embedding, "bias", None) is not None:
                embedding.bias[list(new.values())] = _starting_rows(embedding.bias[:, None], sources, known)[:, 0]
    return added


def _piece_sources(
    pieces: dict[str, list[int]], new: dict[str, int], known: set[int], unk_id: int | None
) -> list[list[int]]:
    """Per new token, the known ids whose mean starts it; empty (sample instead) when it has none, or the same
    pieces as an earlier token, so that no two start equal."""
    sources, seen = [], set()
    for token in new:
        ids = [i for i in pieces[token] if i in known and i != unk_id]
        key = tuple(sorted(ids))
        sources.append(ids if ids and key not in seen else [])
        seen.add(key)
    return sources


def _starting_rows(weight: torch.Tensor, sources: list[list[int]], known: list[int]) -> torch.Tensor:
    """A row per source: the mean of its pieces' rows, or a sample from N(mean, covariance) of the known rows.

    The sample is mean + centred^T z / sqrt(n) with z ~ N(0, I_n): exactly that covariance, and no factorisation
    that a singular covariance (fewer rows than dimensions, as in a tiny vocabulary) would break.
    """
    rows = [weight[ids].float().mean(0) if ids else None for ids in sources]
    if any(row is None for row in rows):
        table = weight[known].float()
        mean = table.mean(0)
        generator = torch.Generator().manual_seed(0)
        for k, row in enumerate(rows):
            if row is None:
                z = torch.randn(len(known), generator=generator).to(weight.device)
                rows[k] = mean + (table - mean).T @ z / len(known) ** 0.5
    return torch.stack(rows).to(weight.dtype)
