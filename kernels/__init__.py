"""Fused ops for reasoning-model training: losses over an LM head without [tokens, vocab] logits, decode attention."""

from .decode_attention import decode_attention
from .linear_cross_entropy import linear_cross_entropy
from .token_logprobs import linear_token_logprobs

__all__ = ["decode_attention", "linear_cross_entropy", "linear_token_logprobs"]
