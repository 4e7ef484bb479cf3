"""The logit lens on continuous thoughts: what token would each thought be, read through the LM head?

A continuous thought is a last hidden state (after the final norm), exactly
what the LM head reads when the model writes a token, so decoding it through
`model.get_output_embeddings()` asks which tokens it is closest to (Coconut's
analysis of its thoughts as superpositions of next steps does this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class LensReading:
    """The top-k tokens of each thought: ids and probabilities `[B, k, top_k]`, and the tokens as text."""

    token_ids: torch.Tensor
    probs: torch.Tensor
    tokens: list[list[list[str]]]


@torch.no_grad()
def logit_lens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, thoughts: torch.Tensor, top_k: int = 5
) -> LensReading:
    """Decode thoughts `[B, k, H]` (e.g. `LatentRollout.thoughts`) through the LM head; top-`top_k` per thought.

    Probabilities are the softmax over the whole vocabulary of the head's
    logits (bias and final-logit softcapping included, as the model applies them).
    """
    if thoughts.ndim != 3:
        raise ValueError(f"thoughts must be [batch, thoughts, hidden], got shape {tuple(thoughts.shape)}")
    head = model.get_output_embeddings()
    if thoughts.shape[-1] != head.weight.shape[1]:
        raise ValueError(f"thoughts have hidden size {thoughts.shape[-1]}, the LM head expects {head.weight.shape[1]}")
    if not 1 <= top_k <= head.weight.shape[0]:
        raise ValueError(f"top_k must be in 1 … {head.weight.shape[0]} (the vocabulary), got {top_k}")
    logits = head(thoughts.to(head.weight.dtype)).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    probs, token_ids = logits.softmax(-1).topk(top_k, dim=-1)
    tokens = [[[tokenizer.decode([index]) for index in thought] for thought in row] for row in token_ids.tolist()]
    return LensReading(token_ids=token_ids, probs=probs, tokens=tokens)
