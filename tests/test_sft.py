"""The SFT regime: it learns on every family, runs in a plain Trainer, and saves loadable checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from framework.callbacks import HuggingFaceCheckpoint
from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.models import FAMILIES, Reasoner, build_model, load_pretrained
from framework.regimes.base import OptimizerConfig
from framework.regimes.sft import SFT
from framework.rollout import SamplingConfig


def _trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_lowers_the_loss(family, word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = Reasoner(build_model(family, "1m", word_tokenizer), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=256, n_val=16, batch_size=32)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5))
    batch = next(iter(data.train_dataloader()))
    before = module.loss(batch).item()
    _trainer(tmp_path, max_steps=40, limit_val_batches=0).fit(module, data)
    after = module.loss(batch).item()
    assert after < 0.6 * before, (before, after)


def test_validation_logs_accuracy_and_step_validity(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=12, batch_size=16, eval_batch_size=6)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(warmup_steps=1),
                 eval_sampling=SamplingConfig(max_new_tokens=24))
    trainer = _trainer(tmp_path, max_steps=4, val_check_interval=4)
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/accuracy", "val/accuracy_ci_low", "val/accuracy_ci_high", "val/tokens_generated"):
        assert key in metrics, key
    assert 0.0 <= metrics["val/accuracy_ci_low"] <= metrics["val/accuracy"] <= metrics["val/accuracy_ci_high"] <= 1.0
    assert 0 < metrics["val/tokens_generated"] <= 24
    assert "train/tokens_per_s" in metrics and metrics["train/tokens_per_s"] > 0


@pytest.mark.parametrize("mask, trace_weight", [("mask_trace", 0.0), ("weighted_trace(0.3)", 0.3), ("train_on_completion", 1.0)])
def test_loss_equals_weighted_cross_entropy_of_full_logits(mask, trace_weight, word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("gpt2", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize,
                                         pad_token_id=reasoner.tokenizer.pad_token_id, n_train=8, n_val=1, batch_size=8)
    batch = next(iter(data.train_dataloader()))
    logits = reasoner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    roles = batch["roles"][:, 1:]
    weights = (roles == 2).float() + trace_weight * (roles == 1).float()
    expected = (per_token * weights).sum() / weights.sum()
    torch.testing.assert_close(SFT(reasoner, mask=mask).loss(batch), expected)


def test_checkpoint_from_a_plain_trainer_loads_with_from_pretrained(word_tokenizer, addition_task, tmp_path):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=4, batch_size=16)
    module = SFT(reasoner, addition_task, optimizer=OptimizerConfig(warmup_steps=1))
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[HuggingFaceCheckpoint(tmp_path / "hf")])
    trainer.fit(module, data)
    model, tokenizer = load_pretrained(tmp_path / "hf")
    example = data.splits["val"][0]
    ids = torch.tensor([reasoner.prompt_ids(example)])
    reasoner.model.eval()
    torch.testing.assert_close(model(ids).logits, reasoner.model(ids).logits)
    assert tokenizer.convert_ids_to_tokens(ids[0].tolist()) == word_tokenizer.convert_ids_to_tokens(ids[0].tolist())


def test_splits_are_disjoint_and_stable(addition_task):
    splits = generate_splits(addition_task, seed=3, n_train=200, n_val=30, n_test=30)
    prompts = {name: {e.prompt for e in split} for name, split in splits.items()}
    assert [len(p) for p in prompts.values()] == [30, 30, 200]
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"]) and not (prompts["val"] & prompts["test"])
    bigger = generate_splits(addition_task, seed=3, n_train=400, n_val=30, n_test=30)
    assert bigger["val"] == splits["val"] and bigger["test"] == splits["test"]
    assert generate_splits(addition_task, seed=4, n_train=200, n_val=30, n_test=30)["val"] != splits["val"]


def test_asking_for_more_problems_than_a_task_has_is_a_clear_error():
    from framework.data.tasks import AdditionChain

    with pytest.raises(ValueError, match="distinct problems"):
        generate_splits(AdditionChain(n_terms=2, max_operand=3), seed=0, n_train=100, n_val=0, n_test=0)
