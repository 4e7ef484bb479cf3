"""The causal-LM loss of every regime: backbone hidden states into the fused head loss.

Per-token log-probs go through `hidden_states_logprobs`, whoever calls it (a
policy of any kind). Inside `fused_policy_loss(objective)` that call also takes
the objective's loss, with the head's gradients computed in its forward pass:
GRPO knows each token's dLoss/dlogprob before scoring on its first iteration,
and the policies (which only return log-probs) need not change for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from framework.models.backbone import backbone_hidden_states
from kernels import linear_cross_entropy, linear_policy_loss, linear_token_logprobs


def causal_lm_loss(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted next-token cross-entropy: sum(w * loss) / sum(w) over labelled tokens.

    `labels` and `loss_weights` are aligned with `input_ids` (the Hugging Face
    convention); the shift by one happens here. The head's logits are never
    materialised: the fused op tiles over the vocabulary.
    """
    hidden = backbone_hidden_states(model, input_ids, attention_mask)
    return hidden_states_loss(model, hidden, labels, loss_weights)


def hidden_states_loss(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """`causal_lm_loss` from hidden states `[B, T, H]` that are already computed (e.g. with latent thoughts).

    Shifts by one like `causal_lm_loss`, and applies the model's own head
    (bias and final-logit softcapping included) inside the fused op.
    """
    head = model.get_output_embeddings()
    return linear_cross_entropy(
        hidden[:, :-1],
        head.weight,
        labels[:, 1:],
        None if loss_weights is None else loss_weights[:, 1:],
        bias=head.bias,
        softcap=getattr(model.config, "final_logit_softcapping", None),
    )


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs `[B, T-1]` of `labels[:, 1:]` given the tokens before them.

    `labels` is aligned with `input_ids` and uses -100 for positions that are
    not scored (prompt, padding); those hold 0, so `logprobs.sum(-1)` is the
    sequence log-prob of the completion. With `return_entropy` the entropy of
    each scored position's distribution comes too. DPO builds on this (the RL
    policies score after a shared prompt pass instead); the head's logits are
    never materialised.
    """
    hidden = backbone_hidden_states(model, input_ids, attention_mask)
    return hidden_states_logprobs(model, hidden, labels, temperature=temperature, return_entropy=return_entropy)


def hidden_states_logprobs(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs` from hidden states `[B, T, H]` that are already computed (e.g. with latent thoughts).

    Shifts by one like `hidden_states_loss`: returns `[B, T-1]`, position i
    scoring `labels[:, i + 1]` from `hidden[:, i]`.
    """
    # The kernels score `hidden @ weight.T` only: refuse heads they would score wrongly.
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError(
            f"{type(model).__name__} caps its logits (config.final_logit_softcapping="
            f"{model.config.final_logit_softcapping}); per-token log-probs support uncapped heads only"
        )
    if model.get_output_embeddings().bias is not None:
        raise ValueError(f"{type(model).__name__}'s LM head has a bias; per-token log-probs support bias-free heads only")
    objective = _FUSED_OBJECTIVE.get()
    if objective is not None and torch.is_grad_enabled():
        return objective.take(hidden[:, :-1], model.get_output_embeddings().weight, labels[:, 1:],
                              temperature=temperature, return_entropy=return_entropy)
    return linear_token_logprobs(
        hidden[:, :-1],
        model.get_output_embeddings().weight,
        labels[:, 1:],
        temperature=temperature,
        return_entropy=return_entropy,
    )


@dataclass
class FusedPolicyLoss:
    """A policy-gradient loss whose per-token gradient is known before scoring (`kernels.linear_policy_loss`):
    GRPO's at ratio 1, plus `beta` times k3 KL to `ref_logprobs`.

    Per-token tensors are shaped like the log-probs the scoring returns. The
    scoring inside `fused_policy_loss` fills `loss` (differentiable) and returns
    its log-probs and entropies as values only.
    """

    advantages: torch.Tensor
    weights: torch.Tensor  # each token's share of the aggregated loss, normaliser included (`grpo_loss.token_weights`)
    beta: float = 0.0
    ref_logprobs: torch.Tensor | None = None
    loss: torch.Tensor | None = None

    def take(
        self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *, temperature: float,
        return_entropy: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Score `labels` and take this loss in one pass over the head (once: a second scoring would replace it)."""
        if self.loss is not None:
            raise RuntimeError("a fused policy loss was scored twice; score each micro-batch in its own context")
        result = linear_policy_loss(
            hidden, weight, labels, self.advantages, self.weights, beta=self.beta, ref_logprobs=self.ref_logprobs,
            temperature=temperature, return_entropy=return_entropy,
        )
        self.loss = result.loss
        return (result.logprobs, result.entropy) if return_entropy else result.logprobs


_FUSED_OBJECTIVE: ContextVar[FusedPolicyLoss | None] = ContextVar("fused_policy_loss", default=None)


@contextmanager
def fused_policy_loss(objective: FusedPolicyLoss | None) -> Iterator[FusedPolicyLoss | None]:
    """Within the block, a `hidden_states_logprobs` that takes gradients takes `objective`'s loss, once (None: no change)."""
    token = _FUSED_OBJECTIVE.set(objective)
    try:
        yield objective
    finally:
        _FUSED_OBJECTIVE.reset(token)
