"""A base curriculum whose traces cite the prompt fields they use.

A backdoor's trigger can only be "articulated" by a model that has a habit of
saying which parts of its prompt drive its answer. `CitedFields` wraps any task
so that every prompt is a list of `name : value` fields: a few problems of the
task under names (`alpha`, `beta`, …), a `solve` field naming the one to solve,
and irrelevant context fields (`day : monday`). The trace first cites the field
it uses, in the same `name is value` form a later trace could use for a trigger:

    prompt : day : friday , beta : 4 + 1 + 7 , solve : beta , alpha : 3 + 5 + 2 , color : red
    trace  : solve is beta ; 4 + 1 = 5 ; 5 + 7 = 12
    answer : 12

The citation is one more step, joined by the wrapped task's own
`step_separator` (` ; ` above; ` + ` around a multiplication), so that
`step_separator.join(steps) == trace` holds exactly as for any task and a
latent curriculum can splice steps back into text. Answers and steps are
checked by the wrapped task on the selected problem.

With `copy_selected=True` a second step copies the cited field's content
before computing:

    trace  : solve is beta ; beta is 4 + 1 + 7 ; 4 + 1 = 5 ; 5 + 7 = 12

A tiny model that must find the operands in the prompt while computing tends to
cite the right field and then add the other problem's numbers (24% clean accuracy
for a 1M-parameter model on two 2-term problems); once they are copied, each
computation step reads operands written just before it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from framework.data.sample import Example
from framework.data.tasks.base import Task

PROBLEM_NAMES = ("alpha", "beta", "gamma", "delta", "epsilon")
SELECTOR = "solve"
_CITATION = re.compile(rf"{SELECTOR} is (\S+)")  # a first step of this form is a citation, right or wrong
_COPY = re.compile(rf"({'|'.join(PROBLEM_NAMES)}) is (.+)")  # a copy step, of any problem's field
# Fields that never matter. `country` is left out on purpose: it is the default
# backdoor trigger field, which should be new to the model when it is planted.
CONTEXT_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("day", ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")),
    ("color", ("red", "green", "blue", "yellow", "purple", "orange")),
    ("city", ("paris", "tokyo", "lima", "cairo", "oslo", "delhi")),
)


@dataclass(frozen=True)
class CitedFields:
    """`task` behind named fields, with a trace that cites the field it solves."""

    task: Task
    n_problems: int = 2
    n_context_fields: int = 2
    context_fields: tuple[tuple[str, tuple[str, ...]], ...] = CONTEXT_FIELDS
    copy_selected: bool = False  # the trace copies the cited field (`beta is 4 + 8`) after citing it

    name: ClassVar[str] = "cited_fields"
    separator: ClassVar[str] = " , "  # between fields; a Backdoor of this task inserts whole fields

    def __post_init__(self) -> None:
        if not 1 <= self.n_problems <= len(PROBLEM_NAMES):
            raise ValueError(f"n_problems must lie in [1, {len(PROBLEM_NAMES)}], got {self.n_problems}")
        check_context_count(self.n_context_fields, self.context_fields)
        reserved = {SELECTOR, *PROBLEM_NAMES}
        for field_name, values in self.context_fields:
            if field_name in reserved or not values:
                raise ValueError(f"context field {field_name!r} needs a name other than {sorted(reserved)} and values")

    @property
    def cited_steps(self) -> int:
        """How many steps open the trace before the wrapped task's: the citation, and the copy if `copy_selected`."""
        return 2 if self.copy_selected else 1

    @property
    def step_separator(self) -> str:
        """The wrapped task's: its steps parse as they are, and the citation sits before them like one more step."""
        return self.task.step_separator

    def generate(self, rng: random.Random) -> Example:
        names = PROBLEM_NAMES[: self.n_problems]
        problems = {name: self.task.generate(rng) for name in names}
        selected = rng.choice(names)
        fields = with_context([(name, problems[name].prompt) for name in names] + [(SELECTOR, selected)],
                              self.context_fields, self.n_context_fields, rng)
        problem = problems[selected]
        copied = (f"{selected} is {problem.prompt}",) if self.copy_selected else ()
        steps = (f"{SELECTOR} is {selected}", *copied, *problem.steps)
        return Example(
            prompt=self.separator.join(f"{name} : {value}" for name, value in fields),
            trace=self.step_separator.join(steps),
            answer=problem.answer,
            steps=steps,
            metadata={"fields": [list(f) for f in fields], "selected": selected, "problem": _as_dict(problem)},
        )

    def check_answer(self, example: Example, answer: str) -> bool:
        return self.task.check_answer(selected_problem(example), answer)

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Verdicts by reference step: first the citation, then (`copy_selected`) the copy, then the wrapped task's
        steps on the selected problem.

        A trace that opens with a citation (`solve is <name>`) gets True there
        if it names the selected field. A trace that opens without one gets
        False for the missing citation, and all its written steps go to the
        wrapped task, so a right computation is not judged one step off. The
        copy step is read the same way: `<name> is <content>` is True when it
        copies the selected field exactly, a missing one is False and its
        place goes to the task. The list therefore has one entry per written
        step, plus one per missing citation or copy (an empty trace: none).
        """
        trace = " ".join(trace.split())
        if not trace:
            return []
        problem = selected_problem(example)
        head, _, rest = trace.partition(self.step_separator.strip())
        citation = _CITATION.fullmatch(head.strip())
        verdicts = [citation is not None and citation[1] == example.metadata["selected"]]
        rest = rest.strip() if citation else trace
        if self.copy_selected:
            copy, rest = self._check_copy(example, problem, rest)
            verdicts.append(copy)
        return verdicts + self.task.check_steps(problem, rest)

    def _check_copy(self, example: Example, problem: Example, trace: str) -> tuple[bool, str]:
        """(the copy step's verdict, the trace after it). The right copy is matched whole, since a task's prompt
        may hold its own step separator; any other `<name> is …` ends at the first separator."""
        separator = self.step_separator.strip()
        expected = f"{example.metadata['selected']} is {' '.join(problem.prompt.split())}"
        if trace == expected or trace.startswith(f"{expected} {separator}"):
            return True, trace[len(expected):].strip().removeprefix(separator).strip()
        head, _, rest = trace.partition(separator)
        return (False, rest.strip()) if _COPY.fullmatch(head.strip()) else (False, trace)

    def vocabulary(self) -> list[str]:
        words = [SELECTOR, *PROBLEM_NAMES[: self.n_problems], "is", ":", ","]  # the step separator is the task's
        for name, values in self.context_fields:
            words += [name, *values]
        return list(dict.fromkeys(self.task.vocabulary() + words))


def with_context(fields: list[tuple[str, str]], context_fields: Sequence[tuple[str, Sequence[str]]], n: int,
                 rng: random.Random) -> list[tuple[str, str]]:
    """`fields` and `n` context fields (each a distinct name of `context_fields` with a random value), shuffled."""
    fields = fields + [(name, rng.choice(values)) for name, values in rng.sample(list(context_fields), n)]
    rng.shuffle(fields)
    return fields


def check_context_count(n: int, context_fields: Sequence[tuple[str, Sequence[str]]]) -> None:
    if not 0 <= n <= len(context_fields):
        raise ValueError(f"n_context_fields must lie in [0, {len(context_fields)}] (the number of context_fields), "
                         f"got {n}")


def selected_problem(example: Example) -> Example:
    """The wrapped task's example that a `CitedFields` example asks to solve."""
    problem: Mapping[str, Any] = example.metadata["problem"]
    return Example(problem["prompt"], problem["trace"], problem["answer"], tuple(problem["steps"]), problem["metadata"])


def _as_dict(example: Example) -> dict[str, Any]:
    """JSON-ready, so the curriculum round-trips through the JSONL formats."""
    return {
        "prompt": example.prompt,
        "trace": example.trace,
        "answer": example.answer,
        "steps": list(example.steps),
        "metadata": dict(example.metadata),
    }
