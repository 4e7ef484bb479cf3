"""The causal-LM loss of every regime: backbone hidden states into the fused head loss."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from framework.models.backbone import backbone_hidden_states
from kernels import linear_cross_entropy, linear_token_logprobs


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
    each scored position's distribution comes too. DPO, GRPO and KL terms
    build on this; the head's logits are never materialised.
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
    # kernels.linear_token_logprobs scores `hidden @ weight.T` only: refuse heads it would score wrongly.
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError(
            f"{type(model).__name__} caps its logits (config.final_logit_softcapping="
            f"{model.config.final_logit_softcapping}); per-token log-probs support uncapped heads only"
        )
    if model.get_output_embeddings().bias is not None:
        raise ValueError(f"{type(model).__name__}'s LM head has a bias; per-token log-probs support bias-free heads only")
    return linear_token_logprobs(
        hidden[:, :-1],
        model.get_output_embeddings().weight,
        labels[:, 1:],
        temperature=temperature,
        return_entropy=return_entropy,
    )
