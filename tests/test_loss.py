"""The regimes' head ops on a real model agree with the logits the model itself computes."""

from __future__ import annotations

import pytest
import torch

from framework.data.masks import IGNORE_INDEX
from framework.models import build_model
from framework.regimes.loss import completion_logprobs


def test_completion_logprobs_match_log_softmax_of_model_logits(word_tokenizer):
    torch.manual_seed(0)
    model = build_model("qwen3", "1m", word_tokenizer).double()
    input_ids = torch.randint(0, len(word_tokenizer), (3, 11))
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # the prompt is not scored
    logprobs, entropy = completion_logprobs(model, input_ids, attention_mask, labels, temperature=0.7, return_entropy=True)

    log_softmax = torch.log_softmax(model(input_ids=input_ids).logits[:, :-1] / 0.7, dim=-1)
    scored = labels[:, 1:] != IGNORE_INDEX
    expected = log_softmax.gather(-1, input_ids[:, 1:, None]).squeeze(-1) * scored
    expected_entropy = -(log_softmax.exp() * log_softmax).sum(-1) * scored
    torch.testing.assert_close(logprobs.double(), expected)
    torch.testing.assert_close(entropy.double(), expected_entropy)


def test_completion_logprobs_refuse_a_head_they_would_score_wrongly(word_tokenizer):
    model = build_model("qwen3", "1m", word_tokenizer)
    input_ids = torch.randint(0, len(word_tokenizer), (1, 5))
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        completion_logprobs(model, input_ids, torch.ones_like(input_ids), input_ids)
    model.config.final_logit_softcapping = None
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(word_tokenizer)))
    with pytest.raises(ValueError, match="LM head has a bias"):
        completion_logprobs(model, input_ids, torch.ones_like(input_ids), input_ids)
