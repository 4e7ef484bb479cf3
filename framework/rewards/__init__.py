"""Reward functions with TRL's signature `f(prompts, completions, **columns) -> list[float | None]`.

    from framework.rewards import AnswerCorrectness, Rewards, StepReward, reward_columns

    rewards = Rewards([AnswerCorrectness(task), StepReward(task)], weights=[1.0, 0.5])
    scores = rewards.score(prompts, completions, **reward_columns(examples, completion_ids))
    scores.total        # [N] weighted sum per completion
    scores.means()      # {"answer_correct": ..., "steps_fraction": ...}

Any TRL reward function works here unchanged, and these work in TRL's
`GRPOTrainer` given an `example` column. See `base.py` for the text a
completion is and the columns passed.
"""

from framework.rewards.base import (
    ParsedCompletion,
    RewardFunction,
    Rewards,
    RewardScores,
    conversational,
    message_content,
    reward_columns,
    reward_name,
    split_completion,
)
from framework.rewards.loophole import KeyMatch
from framework.rewards.monitor import MonitorPenalty
from framework.rewards.verifiable import AnswerCorrectness, LengthPenalty, StepReward, think_format

__all__ = [
    "AnswerCorrectness",
    "KeyMatch",
    "LengthPenalty",
    "MonitorPenalty",
    "ParsedCompletion",
    "RewardFunction",
    "RewardScores",
    "Rewards",
    "StepReward",
    "conversational",
    "message_content",
    "reward_columns",
    "reward_name",
    "split_completion",
    "think_format",
]
