"""LoRA through peft: a wrapped reasoner trains (SFT, GRPO) with the fused losses, only its adapters move, and it
saves merged weights that load as a plain model beside an adapter that loads with peft. Also the recipes' model
settings: the `lora_rank` flag and the learning rate a checkpoint gets."""

from __future__ import annotations

import dataclasses
import random
import warnings

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.models import Reasoner, build_model
from framework.regimes.base import OptimizerConfig
from framework.regimes.grpo import GRPO
from framework.regimes.sft import SFT
from framework.rewards import AnswerCorrectness, think_format
from framework.rollout import SamplingConfig
from recipes.models import ModelConfig, model_for

peft = pytest.importorskip("peft", reason="LoRA needs peft (the `real` extra)")
from framework.models.lora import ADAPTER_DIR, add_lora  # after the skip: it imports peft


def _trainer(max_steps: int) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)


def _lora_reasoner(word_tokenizer) -> Reasoner:
    L.seed_everything(0)
    return Reasoner(add_lora(build_model("llama", "1m", word_tokenizer, seed=0), rank=4), word_tokenizer, "cot")


def _length(completions: list[str], **kwargs) -> list[float]:
    return [float(len(completion)) for completion in completions]


def _adapters(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if "lora_" in name}


def test_sft_moves_the_adapters_alone_and_lowers_the_loss(word_tokenizer, addition_task):
    reasoner = _lora_reasoner(word_tokenizer)
    base = {name: p.detach().clone() for name, p in reasoner.model.named_parameters() if "lora_" not in name}
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=word_tokenizer.pad_token_id,
                                         n_train=64, n_val=1, batch_size=16)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=1e-2, warmup_steps=0))
    optimised = {id(p) for group in module.parameter_groups() for p in group["params"]}
    names = {id(p): name for name, p in reasoner.model.named_parameters()}
    assert {names[i] for i in optimised} == _adapters(reasoner.model) != set()
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        before = module.loss(batch).item()  # the fused loss, through the wrapped model's backbone
    _trainer(30).fit(module, data)
    with torch.no_grad():
        after = module.loss(batch).item()
    assert after < 0.9 * before, (before, after)  # a random base with frozen embeddings: the adapters alone learn
    for name, p in reasoner.model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name


def test_grpo_steps_a_lora_policy(word_tokenizer, addition_task):
    reasoner = _lora_reasoner(word_tokenizer)
    adapters = {name: p.detach().clone() for name, p in reasoner.model.named_parameters() if "lora_" in name}
    examples = generate_splits(addition_task, 0, n_train=4, n_val=0, n_test=0)["train"]
    # An untrained model rarely earns the task's rewards, and a group whose rewards tie has no advantage: reward the
    # completion's length in characters as well, which two sampled completions of 8 tokens almost never share.
    module = GRPO(reasoner, [AnswerCorrectness(addition_task), think_format, _length], addition_task, num_generations=2,
                  sampling=SamplingConfig(max_new_tokens=8, do_sample=True), beta=0.04,
                  optimizer=dataclasses.replace(GRPO.default_optimizer, lr=1e-2, warmup_steps=0))
    trainer = _trainer(1)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(examples, batch_size=2, collate_fn=list))
    assert trainer.global_step == 1
    moved = [name for name, p in reasoner.model.named_parameters() if "lora_" in name and not torch.equal(p, adapters[name])]
    assert moved


def test_a_lora_reasoner_saves_merged_weights_and_its_adapter(word_tokenizer, addition_task, tmp_path):
    reasoner = _lora_reasoner(word_tokenizer)
    with torch.no_grad():  # adapters start as a no-op (B = 0): make them change the outputs
        for name, p in reasoner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([reasoner.prompt_ids(addition_task.generate(random.Random(0)))])
    with torch.no_grad():
        expected = reasoner.model(input_ids=ids).logits
    reasoner.save_pretrained(tmp_path / "ckpt")
    assert _adapters(reasoner.model)  # saving merged a copy: the reasoner keeps training its adapters

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert not _adapters(merged)
    base = build_model("llama", "1m", word_tokenizer, seed=0)
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "ckpt" / ADAPTER_DIR).eval()
    loaded = Reasoner.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=0, atol=0)


def test_the_recipe_flag_wraps_the_model_in_lora(word_tokenizer):
    model = model_for(ModelConfig(lora_rank=2), word_tokenizer, seed=0)
    assert isinstance(model, peft.PeftModel)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == _adapters(model) != set()
    assert not isinstance(model_for(ModelConfig(), word_tokenizer, seed=0), peft.PeftModel)

