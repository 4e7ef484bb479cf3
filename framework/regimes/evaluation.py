"""Generation-based evaluation that every regime shares: generate, check with the task, report rates.

Answer accuracy comes with its counts and a Wilson interval, step validity is
pooled over generated steps, and tokens generated per episode is averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import MeanMetric

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.formats import Generation
from framework.models.reasoner import Reasoner
from framework.probes.metrics import AnswerAccuracy, StepValidity
from framework.rollout.generate import generate
from framework.rollout.sampling import SamplingConfig

_RATE_KEYS = (("rate", ""), ("hits", "_hits"), ("total", "_total"), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"))


class GenerationEvaluation(torch.nn.Module):
    """Metrics of generated answers, as a module so Lightning moves and syncs its torchmetrics.

    `update` once per evaluation batch, then `compute(stage)` for the
    `{stage}/accuracy…`, `{stage}/step_validity` and `{stage}/tokens_generated`
    values, then `reset()`. Without a task, answers must equal the reference
    up to whitespace and steps are not judged.
    """

    def __init__(self, task: Task | None = None) -> None:
        super().__init__()
        self.task = task
        self.accuracy = AnswerAccuracy()
        self.step_validity = StepValidity()
        self.tokens_generated = MeanMetric()
        self.trace_closed = AnswerAccuracy()  # share of written traces that reached `</think>`

    def update(
        self,
        reasoner: Reasoner,
        examples: Sequence[Example],
        sampling: SamplingConfig,
        *,
        step_verdicts: Callable[[Example, str], list[bool]] | None = None,
    ) -> list[Generation]:
        """Generate and score a batch. `step_verdicts(example, trace)` judges the steps (the task's
        `check_steps` by default; a latent regime judges only the steps its thoughts did not replace)."""
        generations = generate(reasoner, examples, sampling)
        self.accuracy.update([self.check_answer(e, g.answer) for e, g in zip(examples, generations)])
        if self.task is not None:
            judge = step_verdicts or self.task.check_steps
            self.step_validity.update([judge(e, g.trace) for e, g in zip(examples, generations)])
        self.tokens_generated.update(torch.tensor([float(g.num_tokens) for g in generations]))
        closed = [g.trace_closed for g in generations if g.trace_closed is not None]
        if closed:
            self.trace_closed.update(closed)
        return generations

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        accuracy = self.accuracy.compute()
        values = {f"{stage}/accuracy{suffix}": accuracy[key] for key, suffix in _RATE_KEYS}
        validity = self.step_validity.compute()
        if validity["total"] > 0:  # no-trace modes produce no steps to judge
            values[f"{stage}/step_validity"] = validity["rate"]
        if self.tokens_generated.update_count:
            values[f"{stage}/tokens_generated"] = self.tokens_generated.compute()
        closed = self.trace_closed.compute()
        if closed["total"] > 0:  # formats that write their trace: did it end, so that an answer could follow?
            values[f"{stage}/trace_closed"] = closed["rate"]
        return values

    def reset(self) -> None:
        self.accuracy.reset()
        self.step_validity.reset()
        self.tokens_generated.reset()
        self.trace_closed.reset()

    def check_answer(self, example: Example, answer: str) -> bool:
        if self.task is not None:
            return self.task.check_answer(example, answer)
        return " ".join(answer.split()) == " ".join(example.answer.split())
