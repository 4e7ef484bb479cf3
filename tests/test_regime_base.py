"""The regime base: one optimiser config with each regime's defaults, parameter groups, clipping, checkpoints."""

from __future__ import annotations

import itertools
from dataclasses import replace

import lightning as L
import pytest
import torch

from framework.data.datamodule import ReasoningDataModule
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes import DPO, GRPO, SFT, ExpertIteration, LatentSFT, OptimizerConfig, Regime
from framework.rewards import AnswerCorrectness

REGIMES = (SFT, LatentSFT, DPO, GRPO, ExpertIteration)


def _trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, **kwargs,
    )


def test_every_regime_subclasses_the_base_and_none_another():
    assert all(issubclass(regime, Regime) for regime in REGIMES)
    assert not any(issubclass(a, b) for a, b in itertools.permutations(REGIMES, 2))


def test_each_regime_keeps_its_own_optimizer_defaults():
    sft = OptimizerConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, warmup_steps=100, schedule="cosine")
    assert SFT.default_optimizer == sft and LatentSFT.default_optimizer == sft
    assert ExpertIteration.default_optimizer == replace(sft, warmup_steps=10)
    assert DPO.default_optimizer == replace(sft, lr=1e-4, weight_decay=0.0, warmup_steps=10)
    assert GRPO.default_optimizer == OptimizerConfig(
        lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, schedule="constant"
    )


@pytest.mark.parametrize(
    "options, match",
    [({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"), ({"warmup_steps": -1}, "warmup_steps"),
     ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"schedule": "linear"}, "schedule")],
)
def test_bad_optimizer_settings_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**options)


def test_grpo_decays_neither_norms_nor_biases_nor_the_latent_projection(word_tokenizer, tmp_path):
    reasoner = Reasoner(build_model("gpt2", "1m", word_tokenizer, seed=0), word_tokenizer, "latent",
                        latent=LatentConfig(max_stage=2, step_separator=" ; ", projection=True))
    module = GRPO(reasoner, AnswerCorrectness(), optimizer=OptimizerConfig(weight_decay=0.1, schedule="constant"))
    module.trainer = _trainer(tmp_path, 1)
    groups = module.configure_optimizers()["optimizer"].param_groups
    decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    assert not decayed & {id(p) for p in reasoner.projection.parameters()}
    assert all(reasoner.model.get_parameter(name).ndim >= 2 for name, p in reasoner.model.named_parameters()
               if id(p) in decayed)
    assert id(reasoner.model.get_input_embeddings().weight) in decayed
    assert sum(len(group["params"]) for group in groups) == len(list(module.model.parameters()))


def test_max_grad_norm_clips_an_automatic_regime_and_may_not_be_set_twice(word_tokenizer, addition_task, tmp_path):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=8, n_val=0, batch_size=4)
    module = SFT(reasoner, optimizer=OptimizerConfig(warmup_steps=0, max_grad_norm=0.5))
    clipped = []
    module.clip_gradients = lambda optimizer, gradient_clip_val, gradient_clip_algorithm: clipped.append(
        (gradient_clip_val, gradient_clip_algorithm))
    _trainer(tmp_path, 2).fit(module, data)
    assert clipped == [(0.5, "norm")] * 2
    with pytest.raises(ValueError, match="set twice"):
        _trainer(tmp_path, 1, gradient_clip_val=1.0).fit(module, data)


def test_a_checkpoint_keeps_the_optimizer_config_and_loads_weights_only(word_tokenizer, addition_task, tmp_path):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=8, n_val=0, batch_size=4)
    config = OptimizerConfig(lr=3e-3, warmup_steps=1)
    trainer = _trainer(tmp_path, 1)
    trainer.fit(SFT(reasoner, addition_task, optimizer=config), data)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    checkpoint = torch.load(tmp_path / "sft.ckpt", weights_only=True)  # what Lightning's resume reads
    assert checkpoint["hyper_parameters"]["optimizer"] == config
    assert {"reasoner", "task", "module"}.isdisjoint(checkpoint["hyper_parameters"])
