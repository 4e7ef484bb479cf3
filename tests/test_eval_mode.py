"""eval_mode: eval inside the block, every submodule's own mode restored after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from framework.data.tokenizer import LATENT, LATENT_END, LATENT_START
from framework.eval_mode import eval_mode
from framework.models import build_model
from framework.rollout import SamplingConfig, latent_rollout, sample


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)))
    model.train()
    model[2][0].eval()  # a submodule deliberately kept in eval mode inside a training model
    return model


def _flags(model: nn.Module) -> list[bool]:
    return [submodule.training for submodule in model.modules()]


def test_eval_mode_switches_everything_off_and_restores_each_submodules_own_mode():
    model = _model()
    before = _flags(model)
    assert before == [True, True, True, True, False, True]
    x = torch.randn(8, 4)
    with eval_mode(model) as inside:
        assert inside is model and not any(_flags(model))
        torch.testing.assert_close(model(x), model(x))  # no dropout
    assert _flags(model) == before


def test_eval_mode_restores_after_an_exception():
    model = _model()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert _flags(model) == before


@pytest.mark.parametrize("rollout", ["sample", "latent_rollout"])
def test_rollouts_run_in_eval_mode_and_hand_a_training_model_back_training(rollout, word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, seed=0).train()
    modes_seen = []
    model.base_model.register_forward_pre_hook(lambda module, args: modes_seen.append(module.training))
    latent_id = word_tokenizer.convert_tokens_to_ids(LATENT)
    prompt = word_tokenizer(f"1 + 2 <think> {LATENT_START} {LATENT} {LATENT} {LATENT_END}").input_ids
    ids = {"pad_token_id": word_tokenizer.pad_token_id, "eos_token_id": word_tokenizer.eos_token_id,
           "config": SamplingConfig(max_new_tokens=3)}
    if rollout == "sample":
        sample(model, [prompt], **ids)
    else:
        latent_rollout(model, [prompt], latent_token_id=latent_id, **ids)
    assert modes_seen and not any(modes_seen)
    assert all(submodule.training for submodule in model.modules())
