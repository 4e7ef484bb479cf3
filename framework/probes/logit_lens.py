"""The logit lens on continuous thoughts: what token would each thought be, read through the LM head?

A continuous thought is a last hidden state (after the final norm), exactly
what the LM head reads when the model writes a token, so decoding it through
`model.get_output_embeddings()` asks which tokens it is closest to (Coconut's
analysis of its thoughts as superpositions of next steps does this).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LensReading:
    """The top-k tokens of each thought, one entry per row (rows may hold different numbers of thoughts).

    `token_ids[i]` and `probs[i]` are `[k_i, top_k]`, best first; `tokens[i][j]` are thought j's tokens as text.
    """

    token_ids: list[torch.Tensor]
    probs: list[torch.Tensor]
    tokens: list[list[list[str]]]


@torch.no_grad()
def logit_lens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, thoughts: Sequence[torch.Tensor], top_k: int = 5
) -> LensReading:
    """Decode each row's thoughts `[k_i, H]` (e.g. `LatentRollout.thoughts`) through the LM head; top-`top_k` each.

    Probabilities are the softmax over the whole vocabulary of the head's
    logits (bias and final-logit softcapping included, as the model applies them).
    """
    head = model.get_output_embeddings()
    vocab, hidden_size = head.weight.shape
    for row, row_thoughts in enumerate(thoughts):
        if row_thoughts.ndim != 2:
            raise ValueError(f"thoughts[{row}] must be [thoughts, hidden], got shape {tuple(row_thoughts.shape)}")
        if row_thoughts.shape[1] != hidden_size:
            raise ValueError(
                f"thoughts[{row}] have hidden size {row_thoughts.shape[1]}, the LM head expects {hidden_size}"
            )
    if not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be in 1 … {vocab} (the vocabulary), got {top_k}")
    if len(thoughts) == 0:
        return LensReading(token_ids=[], probs=[], tokens=[])
    # One head call for every thought of every row, split back per row afterwards.
    logits = head(torch.cat(list(thoughts)).to(head.weight.device, head.weight.dtype)).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    probs, token_ids = logits.softmax(-1).topk(top_k, dim=-1)
    lengths = [len(row_thoughts) for row_thoughts in thoughts]
    token_ids, probs = list(token_ids.split(lengths)), list(probs.split(lengths))
    tokens = [[[tokenizer.decode([index]) for index in thought] for thought in row.tolist()] for row in token_ids]
    return LensReading(token_ids=token_ids, probs=probs, tokens=tokens)
