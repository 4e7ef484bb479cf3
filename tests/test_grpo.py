"""GRPO: its maths against hand-computed values, the rollout seam, a learning run, and bad input."""

from __future__ import annotations

import dataclasses
import math
import statistics

import lightning as L
import pytest
import torch
from _rounding import rounding_tolerance
from transformers import AutoModel

from framework.data.datamodule import ReasoningDataModule, generate_splits
from framework.data.sample import Example
from framework.data.tasks import AdditionChain
from framework.data.tokenizer import build_word_tokenizer
from framework.models import Reasoner, build_model, tiny_config
from framework.regimes.base import OptimizerConfig
from framework.regimes.grpo import GRPO
from framework.regimes.grpo_loss import aggregate_loss, clipped_token_loss, group_advantages, k3_kl, token_weights
from framework.regimes.loss import FusedPolicyLoss, fused_policy_loss
from framework.regimes.policy import TokenPolicy
from framework.regimes.sft import SFT
from framework.rewards import AnswerCorrectness, Rewards, reward_columns, think_format
from framework.rollout import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=8, do_sample=True)


def _trainer(max_steps: int, tmp_path=None, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs") if tmp_path else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


# -- the maths, by hand ------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    group_std = statistics.stdev([1.0, 0.0, 0.0, 1.0])  # Bessel-corrected, as TRL's nanstd
    scaled = group_advantages(rewards, 4, "group")
    expected = [0.5 / (group_std + 1e-4) * s for s in (1, -1, -1, 1)] + [0.0] * 4
    torch.testing.assert_close(scaled.advantages, torch.tensor(expected))
    assert scaled.zero_std.tolist() == [False] * 4 + [True] * 4

    torch.testing.assert_close(group_advantages(rewards, 4, "none").advantages, torch.tensor([0.5, -0.5, -0.5, 0.5] + [0.0] * 4))
    batch_std = statistics.stdev(rewards.tolist())
    torch.testing.assert_close(
        group_advantages(rewards, 4, "batch").advantages,
        torch.tensor([0.5 / (batch_std + 1e-4) * s for s in (1, -1, -1, 1)] + [0.0] * 4),
    )


def test_unscorable_completions_are_left_out_of_the_group_and_get_no_advantage():
    advantages = group_advantages(torch.tensor([1.0, math.nan, 0.0, 0.5]), 4, "none").advantages
    torch.testing.assert_close(advantages, torch.tensor([0.5, 0.0, -0.5, 0.0]))


def test_clipping_in_all_four_quadrants_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.5]])  # one completion, four tokens
    advantages = torch.tensor([1.0])
    old = torch.zeros(1, 4)
    for sign in (1.0, -1.0):
        terms = clipped_token_loss(ratios.log(), old, sign * advantages, epsilon_low=0.2, epsilon_high=0.28)
        if sign > 0:  # -min(rA, clip(r)A): the high side clips at 1.28, the low side is not clipped
            expected, low, high = [-1.28, -0.5, -0.5, -1.28], [False] * 4, [True, False, False, True]
        else:  # -min(-r, -clip(r)): the low side clips at 0.8
            expected, low, high = [1.5, 0.8, 0.8, 1.5], [False, True, True, False], [False] * 4
        torch.testing.assert_close(terms.loss, torch.tensor([expected]))
        assert terms.low_clipped.tolist() == [low] and terms.high_clipped.tolist() == [high]


def test_clipped_ratios_pass_no_gradient_and_unclipped_ones_do():
    logprobs = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    terms = clipped_token_loss(logprobs, torch.zeros(1, 2), torch.tensor([1.0]), epsilon_low=0.2, epsilon_high=0.2)
    terms.loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -1.1]]))  # d(-r)/dlogp = -r


def test_k3_kl_by_hand_and_in_the_loss():
    logprobs, ref = torch.tensor([[-1.0, -0.5]]), torch.tensor([[-2.0, -0.5]])
    torch.testing.assert_close(k3_kl(logprobs, ref), torch.tensor([[math.exp(-1.0), 0.0]]))
    terms = clipped_token_loss(logprobs, logprobs, torch.tensor([2.0]), epsilon_low=0.2, epsilon_high=0.2, beta=0.1,
                               ref_logprobs=ref)
    torch.testing.assert_close(terms.loss, torch.tensor([[-2.0 + 0.1 * math.exp(-1.0), -2.0]]))


def test_loss_aggregations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(aggregate_loss(loss, mask, "grpo"), torch.tensor(((1 + 2) / 2 + 4 / 1) / 2))
    torch.testing.assert_close(aggregate_loss(loss, mask, "dr_grpo", max_completion_length=5), torch.tensor(7 / (2 * 5)))
    torch.testing.assert_close(aggregate_loss(loss, mask, "dapo"), torch.tensor(7 / 3))


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batch_losses_add_up_to_the_whole_batch(loss_type):
    generator = torch.Generator().manual_seed(0)
    loss = torch.randn(5, 7, generator=generator)
    mask = torch.rand(5, 7, generator=generator) > 0.3
    whole = aggregate_loss(loss, mask, loss_type, max_completion_length=7)
    parts = sum(
        aggregate_loss(loss[rows], mask[rows], loss_type, max_completion_length=7, num_sequences=5, num_tokens=mask.sum())
        for rows in (slice(0, 2), slice(2, 5))
    )
    torch.testing.assert_close(parts, whole)


# -- the rollout seam --------------------------------------------------------------------------


def test_token_policy_rescores_what_it_sampled(word_tokenizer):
    """Re-scoring a padded batch equals each row's own unpadded log-softmax (prompts of different lengths)."""
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    examples = [Example("3 + 5", "", "8"), Example("3 + 5 + 2", "", "10"), Example("1 + 1 + 1", "", "3")]
    policy = TokenPolicy(reasoner)
    torch.manual_seed(0)
    rollout = policy.rollout(examples, SAMPLING)
    logprobs = policy.logprobs(reasoner.model, rollout.inputs)
    reasoner.model.eval()
    for row, example in enumerate(examples):
        prompt = reasoner.prompt_ids(example)
        ids = torch.tensor([prompt + rollout.completion_ids[row]])
        expected = torch.log_softmax(reasoner.model(ids).logits[0, len(prompt) - 1 : -1], -1)
        expected = expected.gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        torch.testing.assert_close(logprobs[row][rollout.action_mask[row]], expected, atol=1e-5, rtol=1e-5)
    assert rollout.prompts[1] == "3 + 5 + 2<think>"
    eos = word_tokenizer.eos_token_id
    assert rollout.truncated.tolist() == [ids[-1] != eos for ids in rollout.completion_ids]


def test_a_group_shares_its_prompts_pass_with_each_rows_logprobs_and_gradient(word_tokenizer):
    """Completions of one prompt are re-scored after one pass of it; their log-probs and the gradient of a weighted
    sum of them are those of scoring each row alone (float64, in GPT-2, whose norms stay in float64)."""
    reasoner = Reasoner(build_model("gpt2", "1m", word_tokenizer, seed=0).double(), word_tokenizer, "cot")
    examples = [Example("3 + 5", "", "8")] * 3 + [Example("3 + 5 + 2", "", "10")] * 3
    policy = TokenPolicy(reasoner)
    torch.manual_seed(0)
    rollout = policy.rollout(examples, SAMPLING)
    weights = torch.randn(rollout.action_mask.shape, dtype=torch.float64)
    parameters = list(reasoner.model.parameters())

    def weighted_sum(logprobs: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        return logprobs.detach(), torch.autograd.grad((logprobs * weights).sum(), parameters)

    shared, shared_grads = weighted_sum(policy.logprobs(reasoner.model, rollout.inputs))
    alone, alone_grads = weighted_sum(torch.cat(
        [policy.logprobs(reasoner.model, rollout.rows(slice(row, row + 1)).inputs) for row in range(len(examples))]))
    torch.testing.assert_close(shared, alone)
    for shared_grad, alone_grad in zip(shared_grads, alone_grads):
        torch.testing.assert_close(shared_grad, alone_grad)
    assert len(set(map(tuple, rollout.completion_ids))) > 2  # the group's completions differ


def test_gradient_checkpointing_is_refused_rather_than_scoring_completions_without_their_prompt(word_tokenizer):
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    policy = TokenPolicy(reasoner)
    rollout = policy.rollout([Example("3 + 5", "", "8")] * 2, SAMPLING)
    # transformers 5.24 renamed it; the GPU machines' 5.17 knows only the old name
    enable = getattr(reasoner.model, "activation_checkpointing_enable", None) or reasoner.model.gradient_checkpointing_enable
    enable()
    reasoner.model.train()
    with pytest.raises(ValueError, match="checkpointing"):
        policy.logprobs(reasoner.model, rollout.inputs)


# -- the module ----------------------------------------------------------------------------------


def digit_share(completions, **kwargs):
    """A reward that varies even for an untrained model: the share of words that are numbers."""
    return [sum(word.isdigit() for word in c.split()) / max(len(c.split()), 1) for c in completions]


def _grpo_setup(word_tokenizer, addition_task, mode="cot", **kwargs):
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, mode)
    splits = generate_splits(addition_task, 0, n_train=8, n_val=4, n_test=0)
    data = ReasoningDataModule(reasoner.tokenize, splits["train"], splits["val"], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=2)
    defaults = {"num_generations": 4, "optimizer": dataclasses.replace(GRPO.default_optimizer, lr=1e-3),
                "sampling": SAMPLING, "eval_sampling": SamplingConfig(max_new_tokens=8)}
    rewards = [AnswerCorrectness(addition_task), think_format, digit_share]
    module = GRPO(reasoner, rewards, addition_task, **{**defaults, **kwargs})
    return reasoner, data, module


@pytest.mark.parametrize("mode", ["cot", "none"])
def test_a_run_logs_trls_keys_and_validates(word_tokenizer, addition_task, tmp_path, mode):
    _, data, module = _grpo_setup(word_tokenizer, addition_task, mode, beta=0.04, num_iterations=2, epsilon_high=0.28)
    trainer = _trainer(4, tmp_path, val_check_interval=2, log_every_n_steps=1)
    trainer.fit(module, data)
    assert trainer.global_step == 4  # optimizer steps: two rollout batches of num_iterations=2 each
    metrics = trainer.callback_metrics
    for key in ("reward", "reward_std", "rewards/answer_correct/mean", "rewards/think_format/mean",
                "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "completions/mean_length", "rollout_s", "update_s", "loss"):
        assert f"train/{key}" in metrics, key
    assert metrics["train/kl"] >= 0 and metrics["train/entropy"] > 0
    assert 0 <= metrics["train/clip_ratio/region_mean"] <= 1
    for key in ("val/accuracy", "val/accuracy_ci_low", "val/accuracy_ci_high", "val/tokens_generated"):
        assert key in metrics, key


def test_a_plain_dataloader_of_examples_serves_the_prompts(word_tokenizer, addition_task):
    _, data, module = _grpo_setup(word_tokenizer, addition_task)
    prompts = torch.utils.data.DataLoader(data.splits["train"], batch_size=2, collate_fn=list)
    trainer = _trainer(2)
    trainer.fit(module, train_dataloaders=prompts)
    assert trainer.global_step == 2 and "train/reward" in trainer.callback_metrics


def test_the_reference_exists_only_with_a_kl_term(word_tokenizer, addition_task):
    assert _grpo_setup(word_tokenizer, addition_task)[2].reference is None
    module = _grpo_setup(word_tokenizer, addition_task, beta=0.1)[2]
    assert module.reference is not module.model
    assert not any(p.requires_grad for p in module.reference.parameters())
    module.train()
    assert not module.reference.training


def test_micro_batches_take_the_same_steps_as_the_whole_batch(word_tokenizer, addition_task):
    final = []
    for mini_batch_size in (None, 3):
        _, data, module = _grpo_setup(word_tokenizer, addition_task, mini_batch_size=mini_batch_size, beta=0.1,
                                      num_iterations=2, loss_type="grpo")
        start = torch.cat([p.detach().flatten() for p in module.model.parameters()])
        L.seed_everything(1)
        _trainer(4, limit_val_batches=0).fit(module, data)
        final.append(torch.cat([p.detach().flatten() for p in module.model.parameters()]))
    assert not torch.allclose(final[0], start)
    torch.testing.assert_close(final[0], final[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("loss_type, beta", [("grpo", 0.0), ("dr_grpo", 0.1), ("dapo", 0.1)])
def test_one_iteration_takes_its_loss_in_one_head_pass_with_autograds_gradient(word_tokenizer, addition_task,
                                                                             loss_type, beta):
    """With num_iterations=1 the head takes the loss's gradient in its forward pass; it is the gradient autograd takes
    through the log-probs, ratio and KL, within float32 rounding measured against float64."""
    _, _, module = _grpo_setup(word_tokenizer, addition_task, loss_type=loss_type, beta=beta,
                               mask_truncated_completions=True)
    examples = generate_splits(addition_task, 0, n_train=3, n_val=0, n_test=0)["train"]
    torch.manual_seed(0)
    rollout = module.policy.rollout([e for e in examples for _ in range(4)], SAMPLING)
    assert rollout.truncated.any() and not rollout.truncated.all()  # tokens that are scored but weigh 0
    advantages = torch.randn(len(rollout))
    weights = token_weights(module.loss_mask(rollout), loss_type, max_completion_length=SAMPLING.max_new_tokens)
    ref = module._logprobs_without_grad(module.reference, rollout) if beta else None

    def autograd_gradient(dtype: torch.dtype) -> torch.Tensor:
        model = module.model.to(dtype)
        model.zero_grad(set_to_none=True)
        logprobs = module.policy.logprobs(model, rollout.inputs)
        terms = clipped_token_loss(logprobs, logprobs.detach(), advantages.to(dtype), epsilon_low=0.2,
                                   epsilon_high=0.2, beta=beta, ref_logprobs=None if ref is None else ref.to(dtype))
        (terms.loss * weights.to(dtype)).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    gold, naive = autograd_gradient(torch.float64), autograd_gradient(torch.float32)
    module.model.zero_grad(set_to_none=True)
    loss, _, _ = module._micro_batch_loss(rollout.inputs, advantages, weights, None, ref)
    assert type(loss.grad_fn).__name__ == "_LinearPolicyLossBackward"
    loss.backward()
    fused = torch.cat([p.grad.flatten() for p in module.model.parameters()])
    assert (fused.double() - naive.double()).abs().max() <= rounding_tolerance(naive, gold)
    with fused_policy_loss(FusedPolicyLoss(advantages[:, None].expand_as(weights), weights)):
        module.policy.logprobs(module.model, rollout.inputs)
        with pytest.raises(RuntimeError, match="twice"):
            module.policy.logprobs(module.model, rollout.inputs)


def test_truncated_completions_can_be_left_out_of_the_loss(word_tokenizer, addition_task):
    _, _, module = _grpo_setup(word_tokenizer, addition_task, mask_truncated_completions=True)
    # An untrained policy writes EOS about once in 41 tokens: 64 rollouts of 3 tokens give some of both kinds.
    examples = generate_splits(addition_task, 0, n_train=16, n_val=0, n_test=0)["train"] * 4
    torch.manual_seed(0)
    rollout = module.policy.rollout(examples, SamplingConfig(max_new_tokens=3, do_sample=True))
    truncated = rollout.truncated
    assert truncated.any() and not truncated.all()  # both kinds, or the check below proves nothing
    mask = module.loss_mask(rollout)
    assert not mask[truncated].any()
    assert torch.equal(mask[~truncated], rollout.action_mask[~truncated])
    module.hparams.mask_truncated_completions = False
    assert torch.equal(module.loss_mask(rollout), rollout.action_mask)


def test_grpo_raises_the_reward_of_a_policy_that_hedges_between_answers():
    """A cot policy SFT'd to follow its (correct) trace with the right answer or the sum plus one, half and half,
    starts near 50% correct; GRPO on answer correctness must lift its sampled reward well above that."""
    task = AdditionChain(n_terms=2, max_operand=4)
    tokenizer = build_word_tokenizer(task.vocabulary())
    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", tokenizer), tokenizer, "cot")
    problems = generate_splits(task, 0, n_train=25, n_val=0, n_test=0)["train"]  # all 25 of them
    hedged = [x for e in problems for x in (e, dataclasses.replace(e, answer=str(int(e.answer) + 1)))]
    warm_start = SFT(reasoner, task, optimizer=OptimizerConfig(lr=3e-3, warmup_steps=10))
    _trainer(100).fit(warm_start, ReasoningDataModule(reasoner.tokenize, hedged, [], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=32))

    correctness = AnswerCorrectness(task)

    def mean_reward() -> float:
        torch.manual_seed(1234)
        rollout = TokenPolicy(reasoner).rollout([e for e in problems for _ in range(4)], SAMPLING)
        return statistics.mean(correctness(rollout.prompts, rollout.completions, **reward_columns(rollout.examples)))

    before = mean_reward()
    module = GRPO(reasoner, correctness, task, num_generations=8, optimizer=dataclasses.replace(GRPO.default_optimizer, lr=1e-4),
                  sampling=SAMPLING)
    _trainer(20).fit(module, ReasoningDataModule(reasoner.tokenize, problems, [], pad_token_id=reasoner.tokenizer.pad_token_id, batch_size=8))
    after = mean_reward()
    assert before < 0.6, before
    print(f"mean sampled reward before GRPO {before:.3f}, after {after:.3f}")
    assert after > before + 0.2, (before, after)


# -- bad input -----------------------------------------------------------------------------------


def test_a_group_of_one_is_a_clear_error(word_tokenizer, addition_task):
    with pytest.raises(ValueError, match="num_generations"):
        _grpo_setup(word_tokenizer, addition_task, num_generations=1)
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(torch.zeros(4), 1)


def test_greedy_rollouts_are_a_clear_error(word_tokenizer, addition_task):
    with pytest.raises(ValueError, match="do_sample"):
        _grpo_setup(word_tokenizer, addition_task, sampling=SamplingConfig(do_sample=False))


@pytest.mark.parametrize("faulty_output, message", [(lambda n: [1.0] * (n - 1), "rewards for"), (lambda n: ["1"] * n, "'1'")])
def test_a_faulty_reward_function_is_named(word_tokenizer, addition_task, faulty_output, message):
    def faulty_reward(completions, **kwargs):
        return faulty_output(len(completions))

    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer, seed=0), word_tokenizer, "cot")
    module = GRPO(reasoner, [think_format, faulty_reward], num_generations=2, sampling=SAMPLING)
    with pytest.raises(ValueError, match=f"faulty_reward.*{message}"):
        module.training_step({"examples": generate_splits(addition_task, 0, n_train=2, n_val=0, n_test=0)["train"]}, 0)


def test_a_policy_that_cannot_generate_is_a_clear_error(word_tokenizer):
    backbone = AutoModel.from_config(tiny_config("llama", "1m", vocab_size=len(word_tokenizer), tokenizer=word_tokenizer))
    with pytest.raises(ValueError, match="cannot generate"):
        GRPO(Reasoner(backbone, word_tokenizer, "cot"), think_format, sampling=SAMPLING)
    model = build_model("llama", "1m", word_tokenizer, seed=0)
    with pytest.raises(ValueError, match="'latent' has no token policy"):
        TokenPolicy(Reasoner(model, word_tokenizer, "latent"))
    reasoner = Reasoner(model, word_tokenizer, "cot")
    with pytest.raises(ValueError, match="Policy interface"):
        GRPO(reasoner, think_format, policy=object(), sampling=SAMPLING)
    with pytest.raises(ValueError, match="beta is 0"):
        GRPO(reasoner, think_format, reference=model, sampling=SAMPLING)
    with pytest.raises(ValueError, match="reward_weights"):
        GRPO(reasoner, Rewards(think_format), reward_weights=[1.0], sampling=SAMPLING)
