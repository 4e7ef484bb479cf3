"""Weak policies: what a password-locked model does without its password.

Greenblatt et al. (2024) lock a strong model behind a password by training it
to imitate a *weaker* model otherwise. Here the weak model is a procedure that
writes traces in the task's own layout but errs: each step fails with
probability `error_rate` and the error propagates to the answer, so the weak
policy is plausible (its traces look like the strong ones) and sometimes right
(when no step fails), which is what makes locked and unlocked accuracy differ
measurably and lets RL find rare successes.

A weak policy maps (strong example, rng) to an example with the same prompt
and metadata and the weak trace, steps and answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from framework.data.organisms.cited_fields import CitedFields, selected_problem
from framework.data.sample import Example
from framework.data.tasks import AdditionChain, Multiplication, ProsQA
from framework.data.tasks.base import Task
from framework.data.tasks.prosqa import render_fact

WeakPolicy = Callable[[Example, random.Random], Example]


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class SloppyAddition:
    """Addition chains where a failing step either skips its term or undercounts by one."""

    error_rate: float = 0.3
    skip_share: float = 0.5  # of the failing steps, the share that skip their term (the rest undercount)

    def __post_init__(self) -> None:
        _check_rate("error_rate", self.error_rate)
        _check_rate("skip_share", self.skip_share)

    def __call__(self, example: Example, rng: random.Random) -> Example:
        terms = example.metadata["terms"]
        running, steps = terms[0], []
        for term in terms[1:]:
            result = running + term
            if rng.random() < self.error_rate:
                if rng.random() < self.skip_share:
                    continue  # the term is forgotten: no step, and the sum misses it
                # Undercount (overcount from 0): a slip that keeps every running sum in the task's vocabulary.
                result = result - 1 if result > 0 else 1
            steps.append(f"{running} + {term} = {result}")
            running = result
        return replace(example, trace=AdditionChain.step_separator.join(steps), answer=str(running), steps=tuple(steps))


@dataclass(frozen=True)
class DigitMisreads:
    """Multiplication where a failing step multiplies by a misread digit of b; the sums carry it on."""

    task: Multiplication
    error_rate: float = 0.3

    def __post_init__(self) -> None:
        _check_rate("error_rate", self.error_rate)

    def __call__(self, example: Example, rng: random.Random) -> Example:
        a, b = example.metadata["a"], example.metadata["b"]
        digits = list(str(b).zfill(self.task.digits_b))
        for i, digit in enumerate(digits):
            if rng.random() < self.error_rate:
                digits[i] = rng.choice([d for d in "0123456789" if d != digit])
        misread = self.task.example(a, int("".join(digits)))  # the strong procedure run on the misread b
        return replace(example, trace=misread.trace, answer=misread.answer, steps=misread.steps)


@dataclass(frozen=True)
class ShallowSearch:
    """ProsQA where the search stops after a few hops and then guesses: wrong with probability error_rate."""

    error_rate: float = 0.3

    def __post_init__(self) -> None:
        _check_rate("error_rate", self.error_rate)

    def __call__(self, example: Example, rng: random.Random) -> Example:
        steps = example.steps[: rng.randint(1, max(1, len(example.steps) - 1))]
        meta = example.metadata
        concept = meta["distractor"] if rng.random() < self.error_rate else meta["target"]
        answer = render_fact(meta["root"], concept, subject_is_person=True)
        return replace(example, trace=ProsQA.step_separator.join(steps), answer=answer, steps=steps)


@dataclass(frozen=True)
class CitedWeak:
    """The field curriculum: the citation (and copy) stays right, the cited problem is solved by the inner weak policy.

    `step_separator` is the curriculum's (`CitedFields.step_separator`), which joins the citation and the weak steps;
    `cited_steps` the curriculum's steps before the task's (`CitedFields.cited_steps`).
    """

    inner: WeakPolicy
    step_separator: str
    cited_steps: int = 1

    def __call__(self, example: Example, rng: random.Random) -> Example:
        weak = self.inner(selected_problem(example), rng)
        steps = (*example.steps[: self.cited_steps], *weak.steps)  # the reference citation, then the weak solution
        return replace(example, trace=self.step_separator.join(steps), answer=weak.answer, steps=steps)


def weak_policy(task: Task, error_rate: float = 0.3) -> WeakPolicy:
    """The error-prone procedure for `task`, each step failing with probability `error_rate`."""
    if isinstance(task, AdditionChain):
        return SloppyAddition(error_rate)
    if isinstance(task, Multiplication):
        return DigitMisreads(task, error_rate)
    if isinstance(task, ProsQA):
        return ShallowSearch(error_rate)
    if isinstance(task, CitedFields):
        return CitedWeak(weak_policy(task.task, error_rate), task.step_separator, task.cited_steps)
    raise ValueError(
        f"no weak policy is defined for task {getattr(task, 'name', type(task).__name__)!r}; "
        "pass your own `weak` (a callable (example, rng) -> weak example)"
    )
