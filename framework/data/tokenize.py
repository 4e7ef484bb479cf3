"""Segments -> token ids with an exact per-token role (`framework.data.collate` pads them into batches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from framework.data.sample import Example, Segment


@dataclass(frozen=True)
class TokenizedSample:
    input_ids: list[int]
    roles: list[int]


# What data modules tokenize with: a reasoner's `tokenize`, or any function that renders examples the same way.
Tokenize = Callable[[Example], TokenizedSample]


def tokenize_segments(
    tokenizer: PreTrainedTokenizerBase, segments: Sequence[Segment], *, add_eos: bool = True
) -> TokenizedSample:
    """Tokenize each segment on its own and concatenate.

    Tokenizing segment by segment makes every token belong to exactly one
    segment, so roles are exact for any tokenizer, sub-word ones included: a
    BPE merge can never straddle the prompt/trace boundary. The tokenizer's
    own special tokens (e.g. BOS) are added once, at the start, as its
    post-processor would; EOS closes the last segment so the model learns to stop.
    """
    if not segments:
        raise ValueError("tokenize_segments needs at least one segment")
    input_ids: list[int] = []
    roles: list[int] = []
    for position, segment in enumerate(segments):
        ids = tokenizer(segment.text, add_special_tokens=position == 0)["input_ids"]
        input_ids += ids
        roles += [int(segment.role)] * len(ids)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token; set one before training")
        input_ids.append(tokenizer.eos_token_id)
        roles.append(int(segments[-1].role))
    return TokenizedSample(input_ids, roles)
