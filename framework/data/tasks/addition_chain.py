"""Addition chains: one addition per step, the cheap smoke-test task.

Prompt `3 + 5 + 2 + 8`, steps `3 + 5 = 8 ; 8 + 2 = 10 ; 10 + 8 = 18`, answer `18`.
Numbers are whole words, so the vocabulary holds every possible running sum.
With a `modulus` m every sum is taken mod m (`8 + 7 = 5` for m = 10): each
step is a lookup in an m x m table, while the answer without steps depends on
every term at once, a parity-like function that small transformers learn
slowly without intermediate steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from framework.data.sample import Example


def _parse_int(word: str) -> int | None:
    """A number written the canonical way (`7`, not `07` or `+7`), else None."""
    return int(word) if word.isdecimal() and str(int(word)) == word else None


@dataclass(frozen=True)
class AdditionChain:
    """The sum of `n_terms` numbers drawn uniformly from 0 … `max_operand`, mod `modulus` if one is given."""

    n_terms: int = 4
    max_operand: int = 9
    modulus: int | None = None

    name: ClassVar[str] = "addition_chain"
    step_separator: ClassVar[str] = " ; "

    def __post_init__(self) -> None:
        if self.n_terms < 2:
            raise ValueError(f"n_terms must be >= 2 (one addition at least), got {self.n_terms}")
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {self.max_operand}")
        if self.modulus is not None and self.modulus < 2:
            raise ValueError(f"modulus must be >= 2 (or None for plain sums), got {self.modulus}")

    def _add(self, left: int, term: int) -> int:
        return left + term if self.modulus is None else (left + term) % self.modulus

    def generate(self, rng: random.Random) -> Example:
        terms = [rng.randint(0, self.max_operand) for _ in range(self.n_terms)]
        sums = [terms[0]]
        for term in terms[1:]:
            sums.append(self._add(sums[-1], term))
        steps = tuple(f"{sums[i]} + {terms[i + 1]} = {sums[i + 1]}" for i in range(self.n_terms - 1))
        return Example(
            prompt=" + ".join(map(str, terms)),
            trace=self.step_separator.join(steps),
            answer=str(sums[-1]),
            steps=steps,
            metadata={"terms": terms, "running_sums": sums},
        )

    def check_answer(self, example: Example, answer: str) -> bool:
        return " ".join(answer.split()) == example.answer

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Step i must read `x + t = x+t` where t is term i + 1 and x is the
        first term for step 0, else the result the previous *generated* step
        wrote (right or wrong). After an unparsable step nothing can follow."""
        trace = " ".join(trace.split())  # generated text may space words oddly
        if not trace:
            return []
        terms = example.metadata["terms"]
        verdicts: list[bool] = []
        running: int | None = terms[0]
        for i, step in enumerate(trace.split(self.step_separator)):
            parsed = _parse_step(step)
            verdicts.append(
                i < len(terms) - 1
                and parsed is not None
                and parsed[0] == running
                and parsed[1] == terms[i + 1]
                and parsed[2] == self._add(parsed[0], parsed[1])
            )
            running = None if parsed is None else parsed[2]
        return verdicts

    def vocabulary(self) -> list[str]:
        largest = self.n_terms * self.max_operand if self.modulus is None else max(self.modulus - 1, self.max_operand)
        return [str(n) for n in range(largest + 1)] + ["+", "=", ";"]


def _parse_step(step: str) -> tuple[int, int, int] | None:
    """(left, term, result) of `left + term = result`, or None."""
    words = step.split()
    if len(words) != 5 or words[1] != "+" or words[3] != "=":
        return None
    numbers = (_parse_int(words[0]), _parse_int(words[2]), _parse_int(words[4]))
    return None if None in numbers else numbers
