"""Fused ops for reasoning-model training: losses over an LM head without [tokens, vocab] logits, decode attention."""

from .decode_attention import decode_attention
from .linear_cross_entropy import linear_cross_entropy
from .policy_loss import PolicyLoss, linear_policy_loss
from .token_logprobs import linear_token_logprobs

__all__ = ["PolicyLoss", "decode_attention", "linear_cross_entropy", "linear_policy_loss", "linear_token_logprobs"]
