"""What every verifiable task provides."""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

from framework.data.sample import Example


@runtime_checkable
class Task(Protocol):
    """A verifiable task: a seeded generator plus exact answer and step checkers.

    Texts are sequences of space-separated words drawn from `vocabulary()`, so
    the word-level tokenizer of the synthetic experiments covers them exactly.
    """

    name: str
    step_separator: str  # joins `Example.steps` into the trace text

    def generate(self, rng: random.Random) -> Example:
        """One problem, a deterministic function of the rng state."""
        ...

    def check_answer(self, example: Example, answer: str) -> bool:
        """Whether a generated answer is correct for `example`."""
        ...

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Validity of each step of a generated trace (empty trace: no steps)."""
        ...

    def vocabulary(self) -> list[str]:
        """Every word any prompt, trace or answer of this task can contain."""
        ...
