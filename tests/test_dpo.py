"""DPO: TRL's loss variants by hand, exact sequence log-probs, learning on held-out pairs, and bad input."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import lightning as L
import pytest
import torch

from framework.data.formats import DataFormatError, PreferencePair
from framework.data.preferences import PreferenceDataModule, corrupted_answer_pairs
from framework.data.sample import Example, Role
from framework.models import Reasoner, build_model
from framework.regimes.dpo import DPO, dpo_loss
from framework.rollout import SamplingConfig
from framework.stats import wilson_interval


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))  # -log sigmoid(-x)


# Two pairs, beta = 0.5: logits = (chosen - rejected) - (ref_chosen - ref_rejected) = [2, -1].
CHOSEN, REJECTED = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])


@pytest.mark.parametrize(
    "loss_type, label_smoothing, expected",
    [
        ("sigmoid", 0.0, [_softplus(-1.0), _softplus(0.5)]),
        ("sigmoid", 0.2, [0.8 * _softplus(-1.0) + 0.2 * _softplus(1.0), 0.8 * _softplus(0.5) + 0.2 * _softplus(-0.5)]),
        ("hinge", 0.0, [0.0, 1.5]),  # relu(1 - beta * logits)
        ("ipo", 0.0, [1.0, 4.0]),  # (logits - 1 / (2 beta))^2
    ],
)
def test_loss_variants_match_hand_computed_values(loss_type, label_smoothing, expected):
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta=0.5, loss_type=loss_type, label_smoothing=label_smoothing
    )
    torch.testing.assert_close(losses, torch.tensor(expected))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 0.0]))  # beta * (logps - ref_logps)
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.5]))


def test_sigmoid_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = CHOSEN.clone().requires_grad_(), REJECTED.clone().requires_grad_()
    losses, _, _ = dpo_loss(chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=0.5)
    losses.sum().backward()
    # d/dc -log sigmoid(beta * logits) = -beta * sigmoid(-beta * logits)
    expected = -0.5 * torch.sigmoid(-0.5 * torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_sequence_logps_sum_completion_tokens_of_the_full_logits(loss_type, word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("qwen3", "1m", word_tokenizer, seed=0).double(), word_tokenizer, "cot")
    data = PreferenceDataModule.from_task(addition_task, reasoner.tokenize,
                                          pad_token_id=reasoner.tokenizer.pad_token_id, n_train=6, n_val=0,
                                          batch_size=6)
    batch = next(iter(data.train_dataloader()))
    module = DPO(reasoner, loss_type=loss_type)

    logits = reasoner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    roles = batch["roles"][:, 1:]
    completion = ((roles == Role.TRACE) | (roles == Role.ANSWER)).double()  # never the prompt, never padding
    expected = (token_logps * completion).sum(-1)
    if loss_type == "ipo":
        expected = expected / completion.sum(-1)
    torch.testing.assert_close(module.sequence_logps(reasoner.model, batch).double(), expected)


def test_dpo_raises_margin_and_preference_accuracy_on_held_out_pairs(word_tokenizer, addition_task):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    data = PreferenceDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=256, n_val=64, batch_size=32, eval_batch_size=64)
    module = DPO(reasoner, addition_task, beta=0.5, optimizer=replace(DPO.default_optimizer, lr=3e-3, warmup_steps=5),
                 eval_sampling=SamplingConfig(max_new_tokens=16))
    trainer = _trainer(60, inference_mode=False)
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    trained = dict(trainer.callback_metrics)
    after = trainer.validate(module, data, verbose=False)[0]

    # The policy starts as its own reference: every implicit reward is exactly 0.
    assert before["val/rewards/margins"] == 0.0 and before["val/rewards/accuracies"] == 0.0
    assert before["val/loss"] == pytest.approx(math.log(2))
    assert after["val/rewards/margins"] > 1.0, after
    # Better than chance on the 64 held-out pairs, beyond the binomial noise of 64 draws (a fixed 0.75 after 60
    # steps held on one processor and not on another).
    preferred = round(after["val/rewards/accuracies"] * 64)
    assert wilson_interval(preferred, 64)[0] > 0.5, after
    assert after["val/loss"] < 0.75 * before["val/loss"], after
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert f"val/{key}" in after and f"train/{key}" in trained
    assert "val/accuracy" in after  # answers are generated and checked, as in SFT


def test_precomputed_reference_scores_every_pair_with_the_initial_policy(word_tokenizer, addition_task):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("gpt2", "1m", word_tokenizer), word_tokenizer, "cot")
    initial = copy.deepcopy(reasoner.model).eval()
    data = PreferenceDataModule.from_task(addition_task, reasoner.tokenize, pad_token_id=reasoner.tokenizer.pad_token_id, n_train=64, n_val=16, batch_size=16)
    module = DPO(reasoner, addition_task, reference="precomputed", beta=0.5,
                 optimizer=replace(DPO.default_optimizer, lr=3e-3, warmup_steps=2),
                 eval_sampling=SamplingConfig(max_new_tokens=4))
    assert module.reference_model is None  # no second model in memory
    _trainer(10, limit_val_batches=0).fit(module, data)

    assert module.reference_logps.shape == (80, 2)
    batch = next(iter(data.val_dataloader()))
    expected = module.sequence_logps(initial, batch).detach()
    n = len(batch["pair_ids"])
    torch.testing.assert_close(module.reference_logps[batch["pair_ids"]], torch.stack([expected[:n], expected[n:]], 1))
    scores = module.score(batch)  # the trained policy moved away from the stored reference
    assert (scores.chosen_rewards - scores.rejected_rewards).mean() > 0

    restored = DPO(reasoner, reference="precomputed")
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    restored.on_load_checkpoint(checkpoint)
    torch.testing.assert_close(restored.reference_logps, module.reference_logps)


def test_corrupted_answer_pairs_differ_only_in_a_wrong_answer(addition_task):
    import random

    examples = [addition_task.generate(random.Random(seed)) for seed in range(20)]
    for example, pair in zip(examples, corrupted_answer_pairs(addition_task, examples, seed=1)):
        assert pair.chosen == example
        assert (pair.rejected.prompt, pair.rejected.trace) == (example.prompt, example.trace)
        assert not addition_task.check_answer(example, pair.rejected.answer)


def test_a_jsonl_row_whose_chosen_equals_rejected_names_file_and_line(word_tokenizer, tmp_path):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    rows = [
        {"prompt": "1 + 2", "chosen": "<think>1 + 2 = 3</think>3", "rejected": "<think>1 + 2 = 3</think>4"},
        {"prompt": "2 + 2", "chosen": "<think>2 + 2 = 4</think>4", "rejected": "<think> 2 + 2 = 4 </think> 4"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl:2: field 'rejected': .*same completion"):
        PreferenceDataModule.from_jsonl(reasoner.tokenize, path, pad_token_id=reasoner.tokenizer.pad_token_id)


def test_a_pair_that_tokenizes_to_the_same_sequence_is_named(word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    good = PreferencePair(Example("1 + 2", "1 + 2 = 3", "3"), Example("1 + 2", "1 + 2 = 3", "4"))
    # Different strings, same words: the word-level tokenizer cannot tell them apart.
    same = PreferencePair(Example("2 + 2", "2 + 2 = 4", "4"), Example("2 + 2", "2 + 2  = 4", "4"))
    data = PreferenceDataModule(reasoner.tokenize, [good, same], pad_token_id=reasoner.tokenizer.pad_token_id)
    with pytest.raises(ValueError, match=r"train split: pair 2 \(prompt '2 \+ 2'\).*same token sequence"):
        data.train_dataloader()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"loss_type": "kto"}, "loss_type"),
        ({"beta": 0.0}, "beta"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "label_smoothing"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"reference": "none"}, "reference"),
        ({"mask": "train_on_all"}, "prompt"),
    ],
)
def test_bad_options_are_named(options, match, word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    with pytest.raises(ValueError, match=match):
        DPO(reasoner, **options)


def test_precomputed_reference_needs_a_preference_data_module(word_tokenizer, addition_task):
    from framework.data.datamodule import ReasoningDataModule

    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize,
                                         pad_token_id=reasoner.tokenizer.pad_token_id, n_train=8, n_val=0)
    with pytest.raises(TypeError, match="PreferenceDataModule"):
        _trainer(1, limit_val_batches=0).fit(DPO(reasoner, reference="precomputed"), data)
