"""State chains: a small state updated by one move per step, the main job's task.

Prompt `3 7 1 4`, steps `4 3 1`, answer `1` (rule `distance`: each step is the
distance from the state to the next number, |3 - 7| = 4, |4 - 1| = 3, |3 - 4| = 1).
Rule `walk` reads moves such as `+2` and `-3` and keeps the state in
0 … n_states - 1 (a walk between two walls): prompt `3 +2 -3 +1`, steps `5 2 3`.

Why this task separates reasoning with and without a trace (issue 15): each
step depends on the state and the next move, and each alone already tells the
model something about the next state, so a 1M-parameter model learns the step
within a few hundred updates (a modular sum, whose next state is independent
of either input alone, gave it no gradient to start from in 500). Without the
trace, the answer is a composition of every step that no sum of the inputs
gives: where addition chains let a model average its way to the answer
(93% without a trace at 8 terms), here it must run the chain in its layers.
Each step is one word and the prompt has one word per move, so step i sits a
fixed number of tokens after move i, whatever the chain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Literal

from framework.data.sample import Example


@dataclass(frozen=True)
class StateChain:
    """`n_moves` moves applied to a start state in 0 … n_states - 1 by `rule`; the answer is the last state."""

    n_moves: int = 7
    n_states: int = 10
    rule: Literal["distance", "walk"] = "distance"
    max_move: int = 3  # rule `walk`: moves are -max_move … +max_move

    name: ClassVar[str] = "state_chain"
    step_separator: ClassVar[str] = " "

    def __post_init__(self) -> None:
        if self.n_moves < 1:
            raise ValueError(f"n_moves must be >= 1, got {self.n_moves}")
        if self.n_states < 2:
            raise ValueError(f"n_states must be >= 2, got {self.n_states}")
        if self.rule not in ("distance", "walk"):
            raise ValueError(f"rule must be 'distance' or 'walk', got {self.rule!r}")
        if self.rule == "walk" and not 1 <= self.max_move < self.n_states:
            raise ValueError(f"max_move must be in 1 … n_states - 1 = {self.n_states - 1}, got {self.max_move}")

    def _moves(self) -> list[str]:
        if self.rule == "distance":
            return [str(n) for n in range(self.n_states)]
        return [f"{step:+d}" if step else "0" for step in range(-self.max_move, self.max_move + 1)]

    def apply(self, state: int, move: str) -> int:
        """The state after `move`."""
        if self.rule == "distance":
            return abs(state - int(move))
        return min(self.n_states - 1, max(0, state + int(move)))

    def generate(self, rng: random.Random) -> Example:
        start = rng.randrange(self.n_states)
        moves = [rng.choice(self._moves()) for _ in range(self.n_moves)]
        states = [start]
        for move in moves:
            states.append(self.apply(states[-1], move))
        steps = tuple(str(state) for state in states[1:])
        return Example(
            prompt=" ".join([str(start), *moves]),
            trace=self.step_separator.join(steps),
            answer=steps[-1],
            steps=steps,
            metadata={"moves": moves, "states": states},
        )

    def check_answer(self, example: Example, answer: str) -> bool:
        return " ".join(answer.split()) == example.answer

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Step i must be move i applied to the state the previous *generated* step wrote (the start for step 0)."""
        moves = example.metadata["moves"]
        verdicts: list[bool] = []
        state: int | None = example.metadata["states"][0]
        for i, word in enumerate(trace.split()):
            written = int(word) if word.isdecimal() and str(int(word)) == word else None
            verdicts.append(i < len(moves) and state is not None and written == self.apply(state, moves[i]))
            state = written
        return verdicts

    def vocabulary(self) -> list[str]:
        return sorted({str(n) for n in range(self.n_states)} | set(self._moves()))
