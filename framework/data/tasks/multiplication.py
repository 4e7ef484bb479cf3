"""Multi-digit multiplication in the iCoT layout (Deng et al., `4_by_4_mult`).

Every number is written least-significant digit first, one digit per word, so
a model produces the product in the order carries propagate. For
`5 6 3 2 * 7 4 3 4` (2365 × 4347) the trace is

    5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + 0 0 0 0 6 4 9 0

and the answer `5 5 6 0 8 2 0 1`. Step j is the partial product a × b_j × 10^j:
a × b_j padded to digits_a + 1 digits, after j shift zeros. Steps 1 … digits_b − 2
append the running sum in parentheses, padded to the same width; the last step
has none because the answer is that sum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from framework.data.sample import Example


_DIGITS = frozenset("0123456789")


def _reversed_digits(value: int, width: int) -> str:
    """`value` as `width` space-separated digits, least significant first."""
    return " ".join(str(value).zfill(width)[::-1])


def _parse_digits(words: list[str], width: int) -> int | None:
    """The value of `width` reversed digit words, or None if they are not that."""
    if len(words) != width or not all(w in _DIGITS for w in words):
        return None
    return int("".join(reversed(words)))


@dataclass(frozen=True)
class Multiplication:
    """a × b with exactly `digits_a` and `digits_b` digits (no leading zero)."""

    digits_a: int = 4
    digits_b: int = 4

    name: ClassVar[str] = "multiplication"
    step_separator: ClassVar[str] = " + "

    def __post_init__(self) -> None:
        for field in ("digits_a", "digits_b"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")

    def generate(self, rng: random.Random) -> Example:
        a = rng.randint(10 ** (self.digits_a - 1), 10**self.digits_a - 1)
        b = rng.randint(10 ** (self.digits_b - 1), 10**self.digits_b - 1)
        return self.example(a, b)

    def example(self, a: int, b: int) -> Example:
        """a × b in this layout, b read as `digits_b` digits (zero-padded, as a weak policy's misread b may need)."""
        b_digits = [int(d) for d in reversed(str(b).zfill(self.digits_b))]
        partials = [a * d * 10**j for j, d in enumerate(b_digits)]
        sums = [sum(partials[: j + 1]) for j in range(len(partials))]
        steps = tuple(self._step_text(j, partials[j], sums[j]) for j in range(self.digits_b))
        return Example(
            prompt=f"{_reversed_digits(a, self.digits_a)} * {_reversed_digits(b, self.digits_b)}",
            trace=self.step_separator.join(steps),
            answer=_reversed_digits(a * b, self.digits_a + self.digits_b),
            steps=steps,
            metadata={"a": a, "b": b, "partial_products": partials, "running_sums": sums},
        )

    def _step_text(self, j: int, partial: int, running_sum: int) -> str:
        width = self.digits_a + 1 + j
        text = _reversed_digits(partial, width)
        if _shows_sum(j, self.digits_b):
            text += f" ( {_reversed_digits(running_sum, width)} )"
        return text

    def check_answer(self, example: Example, answer: str) -> bool:
        return " ".join(answer.split()) == example.answer

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Step j is valid iff its partial product is a × b_j × 10^j and, where
        the layout shows one, its running sum adds that product to the running
        value of the previous *generated* step (a wrong earlier sum carried
        forward correctly still counts). Steps past digits_b are invalid."""
        trace = " ".join(trace.split())  # generated text may space words oddly
        if not trace:
            return []
        a, b = example.metadata["a"], example.metadata["b"]
        digits_a, digits_b = len(str(a)), len(str(b))
        b_digits = [int(d) for d in reversed(str(b))]
        verdicts: list[bool] = []
        running: int | None = None  # the previous generated step's running value
        for j, step in enumerate(trace.split(self.step_separator)):
            if j >= digits_b:
                verdicts.append(False)
                continue
            with_sum = _shows_sum(j, digits_b)
            partial, shown_sum = _parse_step(step.split(), digits_a + 1 + j, with_sum)
            valid = partial == a * b_digits[j] * 10**j
            if with_sum:
                valid = valid and running is not None and shown_sum == running + partial
            running = shown_sum if with_sum else partial
            verdicts.append(valid)
        return verdicts

    def vocabulary(self) -> list[str]:
        return [str(d) for d in range(10)] + ["*", "+", "(", ")"]


def _shows_sum(j: int, digits_b: int) -> bool:
    """iCoT writes a running sum after every partial product but the first and the last."""
    return 0 < j < digits_b - 1


def _parse_step(words: list[str], width: int, with_sum: bool) -> tuple[int | None, int | None]:
    """(partial product, running sum) of one step; None where a part does not parse."""
    if not with_sum:
        return _parse_digits(words, width), None
    if len(words) != 2 * width + 2 or words[width] != "(" or words[-1] != ")":
        return None, None
    return _parse_digits(words[:width], width), _parse_digits(words[width + 1 : -1], width)
