"""Expert iteration: selection and reward combination by hand, what a round keeps, and that it learns."""

from __future__ import annotations

import math
import random

import lightning as L
import pytest
import torch

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import THINK_END, THINK_START
from framework.models import LatentConfig, Reasoner, build_model
from framework.regimes.base import OptimizerConfig
from framework.regimes.expert_iteration import ExpertIteration, select
from framework.regimes.latent_policy import LatentPolicy
from framework.regimes.policy import TokenPolicy
from framework.regimes.sft import SFT
from framework.regimes.teacher_forcing import LatentLoss, TokenLoss
from framework.rollout import SamplingConfig

NAN = math.nan


def correct_answer(task):
    """A TRL-style reward from the task's checker: 1 if the text after `</think>` is the right answer."""

    def correct(prompts, completions, example, **_):
        texts = [prompt + completion for prompt, completion in zip(prompts, completions)]
        return [float(THINK_END in text and task.check_answer(e, text.split(THINK_END, 1)[1])) for text, e in zip(texts, example)]

    return correct


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, inference_mode=False, **kwargs,
    )


def test_select_applies_threshold_then_top_k_per_problem():
    rewards = torch.tensor([[0.2, 0.9, NAN, 0.9], [1.0, 0.1, 0.5, 0.7]])
    assert select(rewards, threshold=None, top_k=None).tolist() == [[True, True, False, True], [True] * 4]
    assert select(rewards, threshold=0.5, top_k=None).tolist() == [[False, True, False, True], [True, False, True, True]]
    # top 2 per row; the tie at 0.9 keeps both, the earlier first
    assert select(rewards, threshold=None, top_k=2).tolist() == [[False, True, False, True], [True, False, False, True]]
    assert select(rewards, threshold=0.8, top_k=1).tolist() == [[False, True, False, False], [True, False, False, False]]


def test_a_round_passes_trl_columns_and_keeps_accepted_finished_completions(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    examples = generate_splits(addition_task, seed=0, n_train=3, n_val=0, n_test=0)["train"]
    seen = {}

    def accept_every_other(prompts, completions, example, answer, completion_ids, **_):
        seen.update(prompts=prompts, completions=completions, example=example, answer=answer, ids=completion_ids)
        return [float(i % 2 == 0) for i in range(len(completions))]

    module = ExpertIteration(reasoner, addition_task, reward_funcs=accept_every_other, num_samples=2,
                             rollout=SamplingConfig(max_new_tokens=30, do_sample=True))
    torch.manual_seed(0)
    round_ = module.collect(examples)

    assert seen["example"] == [e for e in examples for _ in range(2)] and seen["answer"] == [e.answer for e in seen["example"]]
    assert all(p.endswith(THINK_START) and p.startswith(e.prompt) for p, e in zip(seen["prompts"], seen["example"]))
    for completion, ids in zip(seen["completions"], seen["ids"]):
        assert completion == word_tokenizer.decode(ids[:-1] if ids[-1] == word_tokenizer.eos_token_id else ids)
    finished = torch.tensor([ids[-1] == word_tokenizer.eos_token_id for ids in seen["ids"]]).view(3, 2)
    assert torch.equal(round_.accepted, torch.tensor([[True, False]] * 3) & finished)
    assert len(round_.kept) == int(round_.accepted.sum())
    generations = [reasoner.parse(ids) for ids, keep in zip(seen["ids"], round_.accepted.flatten()) if keep]
    for kept, generation in zip(round_.kept, generations):
        assert (kept.trace, kept.answer) == (generation.trace, generation.answer)
    assert set(round_.metrics()) == {"kept", "acceptance_rate", "reward", "sample_accuracy"}


def test_a_round_that_keeps_nothing_skips_the_update(word_tokenizer, addition_task):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    before = {k: v.clone() for k, v in reasoner.model.state_dict().items()}
    data = ReasoningDataModule.from_task(addition_task, reasoner.tokenize,
                                         pad_token_id=reasoner.tokenizer.pad_token_id, n_train=8, n_val=0, batch_size=4)
    module = ExpertIteration(reasoner, reward_funcs=lambda prompts, completions, **_: [0.0] * len(completions),
                             num_samples=2)
    trainer = _trainer(2, limit_val_batches=0)
    trainer.fit(module, data)
    assert trainer.callback_metrics["train/kept"] == 0 and trainer.callback_metrics["train/acceptance_rate"] == 0
    for key, value in reasoner.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_expert_iteration_raises_accuracy_from_a_briefly_trained_start(word_tokenizer):
    """Sums of two digits with a trace; expert iteration over a fixed set of problems raises greedy accuracy on them."""
    task = AdditionChain(n_terms=2, max_operand=9)
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    sampling = SamplingConfig(max_new_tokens=12)
    splits = generate_splits(task, seed=0, n_train=30, n_val=64, n_test=0)
    warm_start = ReasoningDataModule(reasoner.tokenize, splits["train"], [], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=32)
    _trainer(60, limit_val_batches=0).fit(SFT(reasoner, task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=5)), warm_start)

    problems = splits["val"]  # the problems expert iteration samples for, and is scored on
    data = ReasoningDataModule(reasoner.tokenize, problems, problems, pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=32, eval_batch_size=64)
    module = ExpertIteration(reasoner, task, reward_funcs=correct_answer(task), num_samples=4,
                             optimizer=OptimizerConfig(lr=3e-4, warmup_steps=2),
                             rollout=SamplingConfig(max_new_tokens=12, do_sample=True, temperature=0.7),
                             eval_sampling=sampling)
    rounds: list[float] = []

    class RecordAcceptance(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rounds.append(float(trainer.callback_metrics["train/acceptance_rate"]))

    before = _trainer(1).validate(module, data, verbose=False)[0]["val/accuracy"]
    _trainer(60, limit_val_batches=0, callbacks=[RecordAcceptance()]).fit(module, data)
    after = _trainer(1).validate(module, data, verbose=False)[0]["val/accuracy"]

    assert len(rounds) == 60
    first, last = sum(rounds[:10]) / 10, sum(rounds[-10:]) / 10
    assert last > first + 0.1, (first, last)
    assert after > before + 0.1, (before, after)


def _accept_all(prompts, completions, **_):
    return [1.0] * len(completions)


def test_the_policy_and_loss_follow_the_reasoner(word_tokenizer):
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    text = ExpertIteration(Reasoner(model, word_tokenizer, "cot"), reward_funcs=_accept_all)
    latent = ExpertIteration(Reasoner(model, word_tokenizer, "latent"), reward_funcs=_accept_all)
    assert isinstance(text.policy, TokenPolicy) and isinstance(text.objective, TokenLoss)
    assert isinstance(latent.policy, LatentPolicy) and isinstance(latent.objective, LatentLoss)


def test_a_latent_reasoner_samples_thoughts_and_trains_through_them_on_the_rows_it_keeps(word_tokenizer, tmp_path):
    task = AdditionChain()
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "latent",
                        latent=LatentConfig(max_stage=2, step_separator=task.step_separator))
    reasoner.stage = 0
    module = ExpertIteration(reasoner, task, reward_funcs=_accept_all, num_samples=2,
                             rollout=SamplingConfig(max_new_tokens=8, do_sample=True),
                             optimizer=OptimizerConfig(warmup_steps=0))
    seen = []
    original = module.objective.batch
    module.objective.batch = lambda examples, stages=None: seen.append(reasoner.stage) or original(examples, stages)
    before = [p.detach().clone() for p in reasoner.model.parameters()]
    problems = [task.generate(random.Random(i)) for i in range(4)]
    trainer = _trainer(2, max_epochs=2, limit_val_batches=0)
    trainer.fit(module, ReasoningDataModule(reasoner.tokenize, problems, [], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=2))
    assert trainer.global_step == 2 and reasoner.stage == reasoner.latent.final_stage  # no steps to split: final stage
    assert 0 < trainer.callback_metrics["train/acceptance_rate"] <= 1  # unfinished samples are never kept
    assert seen and set(seen) == {reasoner.latent.final_stage}
    assert any(not torch.equal(a, b) for a, b in zip(before, reasoner.model.parameters()))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2, "rollout": SamplingConfig()}, "do_sample"),
        ({"top_k": 0}, "top_k"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights"),
        ({"reward_funcs": "correct"}, "is not callable"),
    ],
)
def test_bad_options_are_named(options, match, word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    options = {"reward_funcs": lambda prompts, completions, **_: [1.0] * len(completions), **options}
    with pytest.raises(ValueError, match=match):
        ExpertIteration(reasoner, **options)
