"""Reward functions: TRL's calling convention, the built-ins against hand-computed values, and bad input."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import lightning as L
import pytest
import torch

from framework.data.datamodule import generate_splits
from framework.data.sample import Example
from framework.models import Reasoner, build_model
from framework.probes.episode import Episode
from framework.regimes.grpo import GRPO
from framework.rewards import (
    AnswerCorrectness,
    LengthPenalty,
    MonitorPenalty,
    Rewards,
    StepReward,
    reward_columns,
    split_completion,
    think_format,
)
from framework.rollout import SamplingConfig

COT, NONE, PAUSE = "<think>", "<think></think>", "<think><pause><pause></think>"


@pytest.fixture
def example() -> Example:
    """3 + 5 + 2: steps `3 + 5 = 8`, `8 + 2 = 10`, answer 10."""
    return Example(
        prompt="3 + 5 + 2",
        trace="3 + 5 = 8 ; 8 + 2 = 10",
        answer="10",
        steps=("3 + 5 = 8", "8 + 2 = 10"),
        metadata={"terms": [3, 5, 2], "running_sums": [3, 8, 10]},
    )


def _score(func, prompts: Sequence[str], completions: Sequence[str], example: Example, **extra) -> list:
    return func(prompts=list(prompts), completions=list(completions), **reward_columns([example] * len(prompts)), **extra)


def test_split_completion_reads_every_mode():
    cot = split_completion("3 + 5" + COT, "3 + 5 = 8 </think> 8")
    assert (cot.trace, cot.answer, cot.trace_expected) == ("3 + 5 = 8", "8", True)
    unclosed = split_completion("3 + 5" + COT, "3 + 5 = 8 ; 8")
    assert (unclosed.trace, unclosed.answer, unclosed.trace_expected) == ("3 + 5 = 8 ; 8", None, True)
    none = split_completion("3 + 5" + NONE, "8")
    assert (none.trace, none.answer, none.trace_expected) == ("", "8", False)
    pause = split_completion("3 + 5" + PAUSE, " 8")
    assert (pause.trace, pause.answer, pause.trace_expected) == ("", "8", False)


def test_answer_correctness_uses_the_task_checker(addition_task, example):
    prompts = ["3 + 5 + 2" + COT] * 3 + ["3 + 5 + 2" + NONE]
    completions = ["3 + 5 = 8 ; 8 + 2 = 10 </think> 10", "3 + 5 = 8 </think> 11", "3 + 5 = 8 ; 8 + 2 = 10 10", " 10 "]
    assert _score(AnswerCorrectness(addition_task), prompts, completions, example) == [1.0, 0.0, 0.0, 1.0]
    assert _score(AnswerCorrectness(), prompts, completions, example) == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "completion, fraction, first_invalid",
    [
        ("3 + 5 = 8 ; 8 + 2 = 10 </think> 10", 1.0, 1.0),
        ("3 + 5 = 9 ; 9 + 2 = 11 </think> 11", 0.5, 0.0),  # step 2 is valid given the written 9
        ("3 + 5 = 8 ; 8 + 2 = 11 </think> 11", 0.5, 0.5),
        ("3 + 5 = 8 </think> 8", 0.5, 0.5),  # stopping early: n counts the reference's 2 steps
        ("3 + 5 = 8 ; 8 + 2 = 10 ; 10 + 0 = 10 </think> 10", 2 / 3, 2 / 3),  # padding: n counts 3 written steps
        ("</think> 10", 0.0, 0.0),  # a trace was expected and none was written
    ],
)
def test_step_reward_by_hand(addition_task, example, completion, fraction, first_invalid):
    prompt = ["3 + 5 + 2" + COT]
    assert _score(StepReward(addition_task, "fraction"), prompt, [completion], example) == [pytest.approx(fraction)]
    assert _score(StepReward(addition_task, "first_invalid"), prompt, [completion], example) == [
        pytest.approx(first_invalid)
    ]


def test_step_reward_is_not_applicable_without_a_trace(addition_task, example):
    assert _score(StepReward(addition_task), ["3 + 5 + 2" + NONE], ["10"], example) == [None]


def test_think_format():
    cases = {
        ("q" + COT, "steps </think> 10"): 1.0,
        ("q" + COT, "steps 10"): 0.0,  # never closed
        ("q" + COT, "steps </think>"): 0.0,  # no answer
        ("q" + COT, "a <think> b </think> 10"): 0.0,  # a second block opened
        ("q" + NONE, "10"): 1.0,
        ("q" + NONE, "</think> 10"): 0.0,
        ("q", "<think> steps </think> 10"): 1.0,  # TRL's layout: the block inside the completion
    }
    prompts, completions = zip(*cases)
    assert think_format(prompts=list(prompts), completions=list(completions)) == list(cases.values())


def test_length_penalty_is_dapos_soft_overlong_punishment():
    penalty = LengthPenalty(max_tokens=10, margin=4)
    ids = [[0] * n for n in (3, 6, 8, 10, 12)]
    assert penalty(prompts=[""] * 5, completions=[""] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="completion_ids"):
        penalty(prompts=[""], completions=[""])
    with pytest.raises(ValueError, match="margin"):
        LengthPenalty(max_tokens=10, margin=11)


class KeywordMonitor:
    """Flags episodes whose trace mentions a word; scores 1.0 per mention."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[Episode] = []

    def score(self, episodes: Sequence[Episode]) -> torch.Tensor:
        self.seen = list(episodes)
        return torch.tensor([float(e.trace.split().count(self.word)) for e in episodes])


def test_monitor_penalty_scores_the_trace(example):
    monitor = KeywordMonitor("8")
    prompts = ["3 + 5 + 2" + COT] * 3
    completions = ["3 + 5 = 8 ; 8 + 2 = 10 </think> 10", "3 + 4 = 7 </think> 7", "3 + 5 = 8 </think> 8"]
    assert _score(MonitorPenalty(monitor), prompts, completions, example) == [-2.0, 0.0, -1.0]
    assert monitor.seen[0] == Episode("3 + 5 + 2", "3 + 5 = 8 ; 8 + 2 = 10", "10", metadata=example.metadata)
    assert _score(MonitorPenalty(monitor, threshold=2.0), prompts, completions, example) == [-1.0, 0.0, 0.0]


def test_monitor_penalty_takes_the_frameworks_own_monitors(example):
    from framework.probes.monitors import KeywordMonitor as FrameworkKeywordMonitor

    penalty = MonitorPenalty(FrameworkKeywordMonitor([r"\b8\b", "10"]), threshold=1.0)
    prompts = ["3 + 5 + 2" + COT] * 2
    assert _score(penalty, prompts, ["3 + 5 = 8 </think> 8", "3 + 4 = 7 </think> 7"], example) == [-1.0, 0.0]


def test_monitor_penalty_rejects_a_monitor_with_the_wrong_output(example):
    class Broken:
        def score(self, episodes):
            return torch.zeros(len(episodes) + 1)

    with pytest.raises(ValueError, match="Broken"):
        _score(MonitorPenalty(Broken()), ["q" + COT], ["a </think> b"], example)
    with pytest.raises(ValueError, match="score"):
        MonitorPenalty(object())


def test_trl_style_functions_work_unchanged_and_combine_with_weights():
    # TRL calls reward functions with keywords only; these take just what they use.
    def starts_with_three(completions, **kwargs):
        return [1.0 if c.startswith("3") else 0.0 for c in completions]

    def short(completion_ids, **kwargs):
        return [None if len(ids) > 3 else 1.0 for ids in completion_ids]

    rewards = Rewards([starts_with_three, short], weights=[2.0, 0.5])
    scores = rewards.score(["p"] * 3, ["3 a", "4 b", "5 c"], completion_ids=[[1], [1, 2], [1, 2, 3, 4]])
    assert scores.names == ("starts_with_three", "short")
    torch.testing.assert_close(scores.total, torch.tensor([2.5, 0.5, 0.0]))
    assert scores.means() == {"starts_with_three": pytest.approx(1 / 3), "short": 1.0}
    assert rewards(["p"] * 3, ["3 a", "4 b", "5 c"], completion_ids=[[1], [1, 2], [1, 2, 3, 4]]) == [2.5, 0.5, 0.0]


def test_a_completion_no_function_applies_to_has_no_total():
    never = Rewards(lambda completions, **kwargs: [None] * len(completions))
    assert math.isnan(never.score(["p"], ["c"]).total.item())
    assert never(["p"], ["c"]) == [None]


@pytest.mark.parametrize(
    "returned, message",
    [([1.0], "returned 1 rewards for 2"), ([1.0, "yes"], "returned 'yes'"), ([1.0, math.nan], "nan"), (0.5, "float")],
)
def test_bad_reward_outputs_name_the_function(returned, message):
    def faulty(completions, **kwargs):
        return returned

    with pytest.raises(ValueError, match=f"faulty.*{message}"):
        Rewards(faulty).score(["p", "p"], ["a", "b"])


def test_bad_combinations_are_clear_errors():
    def f(completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="2 entries but there are 1"):
        Rewards([f], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="share the names"):
        Rewards([f, f])
    with pytest.raises(ValueError, match="column 'example'"):
        Rewards(f).score(["p"], ["a"], example=[])


# -- TRL's conversational data --------------------------------------------------------------------


@pytest.mark.parametrize("markup, completion, trace", [(COT, "3 + 5 = 8 ; 8 + 2 = 10 </think> 10", True),
                                                       (NONE, "10", False), (PAUSE, " 10", False)])
def test_conversational_completions_carry_the_whole_think_block(example, markup, completion, trace):
    """TRL's own `think_format_reward`, unchanged, scores a well-formed completion 1.0 in every format (the markup a
    format puts in the prompt moves into the assistant's content), and the built-ins read the same messages."""
    from trl.rewards import think_format_reward

    context = [{"role": "system", "content": "Be brief."}]
    example = Example(example.prompt, example.trace, example.answer, example.steps,
                      {**example.metadata, "context_messages": context})
    rewards = Rewards([think_format_reward, AnswerCorrectness(), think_format], conversational=True)
    scores = rewards.score([example.prompt + markup], [completion], **reward_columns([example]))
    assert scores.per_function.tolist() == [[1.0, 1.0, 1.0]]

    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [0.0] * len(completions)

    Rewards(spy, conversational=True).score([example.prompt + markup], [completion], **reward_columns([example]))
    assert seen["prompts"] == [[*context, {"role": "user", "content": example.prompt}]]
    assert seen["completions"] == [[{"role": "assistant", "content": markup + completion}]]
    assert split_completion(seen["prompts"][0], seen["completions"][0]).trace_expected == trace


def test_a_malformed_conversational_completion_scores_zero(example):
    from trl.rewards import think_format_reward

    rewards = Rewards([think_format_reward], conversational=True)
    scores = rewards.score([example.prompt + COT], ["3 + 5 = 8 and never closes"], **reward_columns([example]))
    assert scores.total.tolist() == [0.0]


def test_a_conversational_reward_on_text_says_how_to_score_it(example):
    from trl.rewards import think_format_reward

    with pytest.raises(TypeError, match=r"Rewards\(funcs, conversational=True\)"):
        Rewards(think_format_reward).score([example.prompt + COT], ["a </think> b"], **reward_columns([example]))
    with pytest.raises(ValueError, match="'example' column"):
        Rewards(think_format_reward, conversational=True).score(["p"], ["a"])


def test_trls_think_format_reward_runs_unchanged_in_grpo(word_tokenizer, addition_task):
    """A GRPO step whose rewards are TRL's own function, as TRL exports it, on the framework's rollouts."""
    from trl.rewards import think_format_reward

    L.seed_everything(0)
    reasoner = Reasoner(build_model("llama", "1m", word_tokenizer), word_tokenizer, "cot")
    examples = generate_splits(addition_task, 0, n_train=4, n_val=0, n_test=0)["train"]
    rewards = Rewards([think_format_reward, AnswerCorrectness(addition_task)], conversational=True)
    module = GRPO(reasoner, rewards, addition_task, num_generations=2,
                  sampling=SamplingConfig(max_new_tokens=8, do_sample=True),
                  optimizer=dataclasses.replace(GRPO.default_optimizer, lr=1e-3))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(examples, batch_size=2, collate_fn=list))
    assert trainer.global_step == 1
    assert 0.0 <= trainer.callback_metrics["train/rewards/think_format_reward/mean"] <= 1.0
