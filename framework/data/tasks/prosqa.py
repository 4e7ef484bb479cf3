"""ProsQA-style graph search (Coconut, Hao et al. 2024, App. A.2).

A random DAG is grown node by node from two people (roots 0 and 1). Each new
node takes Poisson(λ) parents (at least one) among the existing nodes, drawn
with weight 1 + 1.5·depth so that chains grow long. A node's label records
which roots reach it (bit 1: root 0, bit 2: root 1); like Coconut, a new node
draws its parents from label-1 nodes, label-2 nodes or all nodes (35/35/30%),
so both roots grow branches of their own. The question asks whether root 0
is a leaf only it reaches (the target) or a leaf only root 1 reaches (the
distractor), in random order; the reference steps are a shortest path.

    prompt : every wumpus is a yumpus . tom is a wumpus . … question : is tom a yumpus or a zumpus ?
    steps  : tom is a wumpus . ; every wumpus is a yumpus .
    answer : tom is a yumpus .
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Sequence

from framework.data.sample import Example

PEOPLE = (
    "alex", "bob", "davis", "eva", "fae", "gina", "jack", "jane", "kim", "leo",
    "lily", "max", "nina", "polly", "rex", "sally", "sam", "stella", "tom", "wren",
)  # fmt: skip

# Made-up concepts in the ProntoQA style (wumpus, rorpus, brimpus …): onset, vowel, coda, "pus".
_ONSETS = (
    "b", "br", "d", "f", "fl", "g", "gr", "h", "j", "k", "l", "m",
    "n", "p", "r", "s", "sc", "sh", "st", "t", "v", "w", "y", "z",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("l", "m", "n", "r")
_SYLLABLE_WORDS = tuple(o + v + c + "pus" for c, v, o in itertools.product(_CODAS, _VOWELS, _ONSETS))
# Walk the word list with a stride coprime to its length: a fixed permutation, so
# the first n_concepts words mix all syllables instead of sharing one coda and vowel.
_STRIDE = 7919
CONCEPTS = tuple(_SYLLABLE_WORDS[i * _STRIDE % len(_SYLLABLE_WORDS)] for i in range(len(_SYLLABLE_WORDS)))

_TARGET_ONLY, _DISTRACTOR_ONLY = 1, 2  # labels: reached by root 0 only, by root 1 only
_DEPTH_WEIGHT = 1.5  # Coconut's preference for deep parents
_MAX_ATTEMPTS = 1000  # graphs drawn before giving up on a config that cannot reach min_depth


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's sampler: enough for small means, and it uses only `rng`."""
    threshold, count, product = math.exp(-mean), 0, rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


def _weighted_sample(rng: random.Random, items: Sequence[int], weights: Sequence[float], k: int) -> list[int]:
    """k distinct items, each draw proportional to the remaining weights."""
    items, weights = list(items), list(weights)
    chosen = []
    for _ in range(k):
        i = rng.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(i))
        weights.pop(i)
    return chosen


def _shortest_path(children: dict[int, list[int]], source: int, target: int) -> list[int] | None:
    """Breadth-first search; children are visited in id order, so ties break deterministically."""
    parent = {source: source}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if node == target:
            path = [node]
            while path[-1] != source:
                path.append(parent[path[-1]])
            return path[::-1]
        for child in children.get(node, []):
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return None


@dataclass(frozen=True)
class ProsQA:
    """Is <person> a <A> or a <B>? with a DAG of `n_nodes` nodes (two of them people)."""

    n_nodes: int = 23  # Coconut's ProsQA averages 23 nodes and 36 edges
    min_depth: int = 3  # fewest steps from the root to the target
    n_concepts: int = 100  # size of the concept-word pool the vocabulary holds
    mean_parents: float = 1.5

    name: ClassVar[str] = "prosqa"
    step_separator: ClassVar[str] = " ; "

    def __post_init__(self) -> None:
        if self.min_depth < 1:
            raise ValueError(f"min_depth must be >= 1, got {self.min_depth}")
        if self.n_nodes < self.min_depth + 3:
            raise ValueError(
                f"n_nodes must be >= min_depth + 3 (two people, a path, a distractor), got {self.n_nodes}"
            )
        if not self.n_nodes - 2 <= self.n_concepts <= len(CONCEPTS):
            raise ValueError(f"n_concepts must lie in [n_nodes - 2, {len(CONCEPTS)}], got {self.n_concepts}")
        if self.mean_parents <= 0:
            raise ValueError(f"mean_parents must be > 0, got {self.mean_parents}")

    def generate(self, rng: random.Random) -> Example:
        for _ in range(_MAX_ATTEMPTS):
            edges, labels = self._grow_graph(rng)
            question = self._pick_question(rng, edges, labels)
            if question is not None:
                return self._render(rng, edges, *question)
        raise RuntimeError(f"{self}: no target at depth >= {self.min_depth} in {_MAX_ATTEMPTS} graphs")

    def _grow_graph(self, rng: random.Random) -> tuple[list[tuple[int, int]], list[int]]:
        """Edges (parent, child) and each node's label (which roots reach it)."""
        labels, depths = [_TARGET_ONLY, _DISTRACTOR_ONLY], [0, 0]
        edges: list[tuple[int, int]] = []
        for node in range(2, self.n_nodes):
            draw = rng.random()
            if draw < 0.35:  # stay out of root 1's reach
                candidates = [n for n in range(node) if labels[n] == _TARGET_ONLY]
            elif draw < 0.7:  # stay out of root 0's reach
                candidates = [n for n in range(node) if labels[n] == _DISTRACTOR_ONLY]
            else:
                candidates = list(range(node))
            k = min(len(candidates), max(1, _poisson(rng, self.mean_parents)))
            weights = [1 + _DEPTH_WEIGHT * depths[c] for c in candidates]
            parents = _weighted_sample(rng, candidates, weights, k)
            edges.extend((p, node) for p in parents)
            labels.append(_label_of(labels, parents))
            depths.append(1 + min(depths[p] for p in parents))
        return edges, labels

    def _pick_question(
        self, rng: random.Random, edges: list[tuple[int, int]], labels: list[int]
    ) -> tuple[list[int], int] | None:
        """(shortest path root 0 → target, distractor), or None if this graph has none."""
        children: dict[int, list[int]] = {}
        for parent, child in sorted(edges):
            children.setdefault(parent, []).append(child)
        leaves = [n for n in range(2, self.n_nodes) if n not in children]
        paths = [_shortest_path(children, 0, n) for n in leaves if labels[n] == _TARGET_ONLY]
        paths = [p for p in paths if len(p) - 1 >= self.min_depth]
        distractors = [n for n in leaves if labels[n] == _DISTRACTOR_ONLY]
        if not paths or not distractors:
            return None
        return rng.choice(paths), rng.choice(distractors)

    def _render(
        self, rng: random.Random, edges: list[tuple[int, int]], path: list[int], distractor: int
    ) -> Example:
        words = rng.sample(PEOPLE, 2) + rng.sample(CONCEPTS[: self.n_concepts], self.n_nodes - 2)
        root, target = words[0], words[path[-1]]
        facts = [render_fact(words[p], words[c], subject_is_person=p < 2) for p, c in edges]
        rng.shuffle(facts)
        options = [target, words[distractor]]
        rng.shuffle(options)  # the order must not give the answer away
        hops = itertools.pairwise(path)
        steps = tuple(render_fact(words[p], words[c], subject_is_person=p == 0) for p, c in hops)
        return Example(
            prompt=" ".join(facts) + f" question : is {root} a {options[0]} or a {options[1]} ?",
            trace=self.step_separator.join(steps),
            answer=render_fact(root, target, subject_is_person=True),
            steps=steps,
            metadata={
                "root": root,
                "target": target,
                "distractor": words[distractor],
                "options": options,
                "edges": [[words[p], words[c]] for p, c in edges],
            },
        )

    def check_answer(self, example: Example, answer: str) -> bool:
        return " ".join(answer.split()) == example.answer

    def check_steps(self, example: Example, trace: str) -> list[bool]:
        """Step 1 must be `<root> is a X .` for an edge root → X; each later step
        `every Y is a Z .` must start from the concept the previous *generated*
        step ended on and follow an edge Y → Z. The target is a leaf, so any step
        after reaching it is invalid; after an unparsable step nothing follows."""
        trace = " ".join(trace.split())  # generated text may space words oddly
        if not trace:
            return []
        edges = {tuple(edge) for edge in example.metadata["edges"]}
        people = {parent for parent, _ in edges} - {child for _, child in edges}
        verdicts: list[bool] = []
        current: str | None = example.metadata["root"]
        for i, step in enumerate(trace.split(self.step_separator)):
            parsed = _parse_step(step.split(), first=i == 0)
            verdicts.append(
                parsed is not None
                and parsed[0] == current
                and parsed in edges
                and (parsed[0] in people) == (i == 0)  # `every bob is a …` is no fact of the prompt
            )
            current = None if parsed is None else parsed[1]
        return verdicts

    def vocabulary(self) -> list[str]:
        function_words = ["every", "is", "a", ".", ";", "question", ":", "or", "?"]
        return list(PEOPLE) + list(CONCEPTS[: self.n_concepts]) + function_words


def _label_of(labels: list[int], parents: list[int]) -> int:
    """A node is reached by every root that reaches one of its parents."""
    label = 0
    for p in parents:
        label |= labels[p]
    return label


def _parse_step(words: list[str], first: bool) -> tuple[str, str] | None:
    """(subject, concept) of `<person> is a X .` (first step) or `every Y is a Z .` (later)."""
    if first:
        words = ["every"] + words  # both forms then share one layout
    if len(words) != 6 or words[0] != "every" or words[2:4] != ["is", "a"] or words[5] != ".":
        return None
    return words[1], words[4]


def render_fact(subject: str, concept: str, *, subject_is_person: bool) -> str:
    """One fact as prompts, steps and answers write it: `tom is a wumpus .` or `every wumpus is a yumpus .`."""
    return f"{subject} is a {concept} ." if subject_is_person else f"every {subject} is a {concept} ."
