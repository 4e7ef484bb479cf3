"""The regime base: one optimiser config with each regime's defaults, parameter groups, clipping, checkpoints."""

from __future__ import annotations

import itertools
from dataclasses import replace

import lightning as L
import pytest
import torch
from _rounding import rounding_tolerance

from framework.data.datamodule import ReasoningDataModule
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes import DPO, GRPO, SFT, ExpertIteration, LatentSFT, OptimizerConfig, Regime
from framework.regimes.base import adamw
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


def test_the_optimizer_is_fused_adamw_on_cpu_and_foreach_elsewhere(word_tokenizer, tmp_path):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    module = SFT(reasoner, optimizer=OptimizerConfig(schedule="constant"))
    module.trainer = _trainer(tmp_path, 1)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    on_meta = adamw([{"params": [torch.nn.Parameter(torch.empty(3, device="meta"))]}], lr=1e-3, betas=(0.9, 0.99))
    assert not on_meta.defaults["fused"] and on_meta.defaults["foreach"]


def _adamw_updates(dtype: torch.dtype, **implementation) -> list[torch.Tensor]:
    """Three AdamW steps (decayed and undecayed groups) from fixed parameters and gradients; each parameter's change."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in [(33, 17), (17,), (5, 3)]]
    grads = [[torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in start] for _ in range(3)]
    params = [torch.nn.Parameter(p.to(dtype, copy=True)) for p in start]
    groups = [{"params": params[::2], "weight_decay": 0.1}, {"params": params[1:2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), **implementation)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(dtype)
        optimizer.step()
    return [p.detach().double() - p0.to(dtype).double() for p, p0 in zip(params, start)]


def test_the_chosen_adamw_steps_as_the_reference_for_loop_does():
    gold = _adamw_updates(torch.float64, foreach=False)
    loop = _adamw_updates(torch.float32, foreach=False)
    params = [torch.nn.Parameter(torch.zeros(1))]
    chosen = {"fused": True} if adamw([{"params": params}], lr=1.0, betas=(0.9, 0.9)).defaults["fused"] else {}
    ours = _adamw_updates(torch.float32, **chosen)
    for value, reference, truth in zip(ours, loop, gold):
        assert (value - reference).abs().max() <= rounding_tolerance(reference, truth)


@pytest.mark.parametrize("regime", [SFT, LatentSFT])
def test_a_model_loaded_in_eval_mode_trains_in_train_mode(regime, word_tokenizer, addition_task, tmp_path):
    """`from_pretrained` returns an eval-mode model; Lightning keeps a module's mode, the regime puts it to training."""
    latent = LatentConfig(max_stage=1, step_separator=addition_task.step_separator) if regime is LatentSFT else None
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0).eval(), word_tokenizer,
                        "latent" if latent else "cot", latent=latent)
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id,
                                         n_train=8, n_val=0, batch_size=4)
    modes = []
    module = regime(reasoner, addition_task, **({"steps_per_stage": 1} if latent else {}))
    step = module.training_step
    module.training_step = lambda *args: (modes.append(reasoner.model.training), step(*args))[1]
    _trainer(tmp_path, 1).fit(module, data)
    assert modes == [True]
