"""Monitor penalties: the reward pressure of "task − λ · monitor" experiments (Baker et al. 2025).

Any `framework.probes.episode.Monitor` plugs in: keyword monitors, trained
trace classifiers or probes on latent thoughts. The weight λ is the penalty's
entry in `reward_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from framework.probes.episode import Episode, Monitor
from framework.rewards.base import split_completion


class MonitorPenalty:
    """Minus the monitor's suspicion of each episode, or minus 1.0 per flag when `threshold` is given.

    Episodes are built from prompt and completion (trace and answer split as
    in `split_completion`); with an `example` column the episode carries the
    example's own prompt and metadata, and a `thoughts` column (continuous
    thoughts of a latent policy, `[k, H]` each) is passed through.
    """

    __name__ = "monitor_penalty"

    def __init__(self, monitor: Monitor, *, threshold: float | None = None) -> None:
        if not isinstance(monitor, Monitor):  # bad input is a ValueError throughout the project
            raise ValueError(  # noqa: TRY004
                f"monitor {monitor!r} has no score(episodes) method (framework.probes.episode.Monitor)"
            )
        self.monitor = monitor
        self.threshold = threshold

    def episodes(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[Episode]:
        examples = columns.get("example")
        thoughts = columns.get("thoughts")
        episodes = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            parsed = split_completion(prompt, completion)
            example = examples[i] if examples is not None else None
            episodes.append(
                Episode(
                    prompt=example.prompt if example is not None else prompt,
                    trace=parsed.trace,
                    answer=parsed.answer or "",
                    thoughts=thoughts[i] if thoughts is not None else None,
                    metadata=example.metadata if example is not None else {},
                )
            )
        return episodes

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float]:
        scores = torch.as_tensor(self.monitor.score(self.episodes(prompts, completions, **columns)), dtype=torch.float32)
        if scores.shape != (len(completions),):
            raise ValueError(
                f"monitor {type(self.monitor).__name__} returned scores of shape {tuple(scores.shape)} "
                f"for {len(completions)} episodes; expected one score per episode"
            )
        if self.threshold is not None:
            scores = (scores >= self.threshold).float()
        return (-scores).tolist()
