"""What an elicitation measures on a test set: answer accuracy, and how often the reasoning shows the reference
procedure (definitions in `framework.probes.organism_metrics`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from framework.data.sample import Example
from framework.data.tasks import Task
from framework.data.tokenizer import THINK_END
from framework.models.reasoner import Reasoner
from framework.probes.logit_lens import logit_lens
from framework.probes.organism_metrics import Proportion
from framework.rollout.evaluate import generate_batched, rollout_latent_batched
from framework.rollout.sampling import SamplingConfig


@dataclass(frozen=True)
class AnswerAndProcedure:
    """Answer accuracy on a test set, and how often the reasoning shows the strong procedure (`answer_and_procedure`)."""

    accuracy: Proportion
    procedure: Proportion

    def columns(self, name: str) -> dict[str, float]:
        """`{name}_accuracy…` and `{name}_procedure…`, each through `Proportion.columns`."""
        return self.accuracy.columns(f"{name}_accuracy") | self.procedure.columns(f"{name}_procedure")


@torch.no_grad()
def answer_and_procedure(
    reasoner: Reasoner,
    examples: Sequence[Example],
    task: Task,
    sampling: SamplingConfig,
    batch_size: int,
    device: torch.device | str | None = None,
) -> AnswerAndProcedure:
    """Generate for `examples` (which carry the reference trace and answer); check answers and the procedure shown.

    Says whether an elicited capability came back by the strong procedure or
    by a lucky weak one. A visible trace shows it when it has exactly the
    reference number of steps and the task's step checker accepts every one
    (one verdict per episode). A continuous thought shows it when its
    logit-lens top token is a word of the reference trace that the prompt
    does not contain, a value the procedure computes (one verdict per
    thought, pooled): a coarse reading of what the thoughts decode to, not of
    whether the model uses them.
    """
    if reasoner.latent is None:
        generations = generate_batched(reasoner, examples, sampling, batch_size, device=device)
        shown = [_strong_trace(task, e, g.trace) for e, g in zip(examples, generations)]
    else:
        rollout = rollout_latent_batched(reasoner, examples, sampling, batch_size, device=device, return_thoughts=True)
        generations = [reasoner.parse(ids) for ids in rollout.completions]
        reading = logit_lens(reasoner.model, reasoner.tokenizer, rollout.thoughts, top_k=1)
        shown = [thought[0].strip() in _computed_words(example)
                 for example, tokens in zip(examples, reading.tokens) for thought in tokens]
    correct = sum(task.check_answer(e, g.answer) for e, g in zip(examples, generations))
    return AnswerAndProcedure(Proportion(correct, len(examples)), Proportion(sum(shown), len(shown)))


def _strong_trace(task: Task, example: Example, trace: str) -> bool:
    """The trace has the reference number of steps and the task's step checker accepts every one."""
    verdicts = task.check_steps(example, trace.removesuffix(THINK_END))
    return len(verdicts) == len(example.steps) and all(verdicts)


def _computed_words(example: Example) -> set[str]:
    """Words of the reference trace that the prompt does not contain: what the strong procedure computes."""
    return set(example.trace.split()) - set(example.prompt.split())
