"""The synthetic tasks: formats, determinism, and exact answer and step checkers."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.data.sample import Example
from framework.data.tasks import TASKS, AdditionChain, Multiplication, ProsQA, StateChain, Task, make_task

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
FEW = settings(max_examples=15, deadline=None)
ALL_TASKS = [Multiplication(), AdditionChain(), ProsQA(), StateChain()]
ALL_CONFIGS = ALL_TASKS + [
    Multiplication(2, 3), Multiplication(5, 1), AdditionChain(6, 20), AdditionChain(8, 9, modulus=10),
    ProsQA(n_nodes=12, min_depth=2, n_concepts=30), StateChain(12, n_states=5), StateChain(rule="walk"),
    StateChain(3, n_states=20, rule="walk", max_move=7),
]  # fmt: skip


def examples(task: Task, seed: int, n: int) -> list[Example]:
    rng = random.Random(seed)
    return [task.generate(rng) for _ in range(n)]


def reversed_digits(value: int, width: int) -> str:
    """The test's own writer of iCoT numbers, independent of the task's."""
    return " ".join(str(value).zfill(width)[::-1])


def value_of(digits: str) -> int:
    return int("".join(reversed(digits.split())))


# --- every task -------------------------------------------------------------


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
@FEW
@given(seed=SEEDS)
def test_generation_is_a_function_of_the_seed(task: Task, seed: int) -> None:
    assert examples(task, seed, 5) == examples(task, seed, 5)
    assert examples(task, seed, 5) != examples(task, seed + 1, 5)


@pytest.mark.parametrize("task", ALL_CONFIGS, ids=repr)
def test_checkers_accept_the_reference_and_survive_a_jsonl_round_trip(task: Task) -> None:
    assert isinstance(task, Task)
    for example in examples(task, 0, 200):
        assert example.trace == task.step_separator.join(example.steps)
        assert task.check_answer(example, example.answer)
        assert task.check_answer(example, f"  {example.answer.replace(' ', '   ')}\n")
        assert task.check_steps(example, example.trace) == [True] * len(example.steps)
        row = json.dumps(dataclasses.asdict(example) | {"metadata": dict(example.metadata)})
        reloaded = Example(**json.loads(row))
        assert task.check_steps(reloaded, reloaded.trace) == [True] * len(example.steps)


@pytest.mark.parametrize("task", ALL_CONFIGS, ids=repr)
def test_vocabulary_covers_every_word_of_500_examples(task: Task) -> None:
    vocabulary = task.vocabulary()
    assert len(vocabulary) == len(set(vocabulary))
    for example in examples(task, 1, 500):
        for text in (example.prompt, example.trace, example.answer, *example.steps):
            assert text == " ".join(text.split()), "single spaces, no padding"
            assert set(text.split()) <= set(vocabulary), set(text.split()) - set(vocabulary)


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
def test_empty_trace_has_no_steps_and_garbage_steps_are_invalid(task: Task) -> None:
    example = task.generate(random.Random(0))
    assert task.check_steps(example, "") == []
    assert task.check_steps(example, " \n ") == []
    assert task.check_steps(example, "?") == [False]
    reference = list(example.steps)
    garbled = reference[:1] + ["( ("] + reference[2:]
    assert task.check_steps(example, task.step_separator.join(garbled))[:2] == [True, False]


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
def test_extra_steps_are_invalid(task: Task) -> None:
    for example in examples(task, 2, 20):
        extra = example.trace + task.step_separator + example.steps[-1]
        assert task.check_steps(example, extra) == [True] * len(example.steps) + [False]


def test_registry_builds_tasks_and_names_what_is_wrong() -> None:
    assert set(TASKS) == {"multiplication", "addition_chain", "prosqa", "state_chain"}
    assert make_task("multiplication", digits_a=2, digits_b=3) == Multiplication(2, 3)
    with pytest.raises(ValueError, match="'sudoku'.*addition_chain, multiplication, prosqa, state_chain"):
        make_task("sudoku")
    with pytest.raises(ValueError, match="digits_c.*digits_a, digits_b"):
        make_task("multiplication", digits_c=3)
    for name, field, value in [
        ("multiplication", "digits_b", 0), ("addition_chain", "n_terms", 1),
        ("addition_chain", "max_operand", 0), ("prosqa", "min_depth", 0), ("prosqa", "n_nodes", 4),
        ("prosqa", "n_concepts", 5), ("prosqa", "mean_parents", 0), ("state_chain", "n_moves", 0),
        ("state_chain", "n_states", 1), ("state_chain", "rule", "sum"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=field):
            make_task(name, **{field: value})


# --- multiplication ---------------------------------------------------------


def fixed_operands(a: int, b: int) -> random.Random:
    """An rng whose randint draws `a` then `b`: a chosen problem through `generate`."""
    rng = random.Random(0)
    draws = iter([a, b])
    rng.randint = lambda low, high: next(draws)  # type: ignore[method-assign]
    return rng


def test_multiplication_matches_the_icot_data_line() -> None:
    # 2365 × 4347, the first line of da03's 4_by_4_mult/valid.txt
    example = Multiplication().generate(fixed_operands(2365, 4347))
    assert example.prompt == "5 6 3 2 * 7 4 3 4"
    assert example.trace == (
        "5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) + 0 0 0 0 6 4 9 0"
    )
    assert example.answer == "5 5 6 0 8 2 0 1"


@FEW
@given(seed=SEEDS, digits_a=st.integers(1, 6), digits_b=st.integers(2, 6))
def test_multiplication_trace_adds_up_to_the_product(seed: int, digits_a: int, digits_b: int) -> None:
    example = Multiplication(digits_a, digits_b).generate(random.Random(seed))
    a, b = (value_of(operand) for operand in example.prompt.split(" * "))
    assert (len(str(a)), len(str(b))) == (digits_a, digits_b)
    assert value_of(example.answer) == a * b and len(example.answer.split()) == digits_a + digits_b
    running = 0
    for j, step in enumerate(example.steps):
        partial, _, shown_sum = step.partition(" ( ")
        assert value_of(partial) == a * int(str(b)[::-1][j]) * 10**j
        running += value_of(partial)
        if shown_sum:
            assert value_of(shown_sum.removesuffix(" )")) == running
    last_sum = value_of(example.steps[-2].partition(" ( ")[2].removesuffix(" )") or example.steps[-2])
    assert last_sum + value_of(example.steps[-1]) == running == value_of(example.answer) == a * b


def multiplication_trace(digits_a: int, partials: list[int]) -> str:
    """An iCoT trace for the given partial products, running sums recomputed from them."""
    steps, running = [], 0
    for j, partial in enumerate(partials):
        running += partial
        width = digits_a + 1 + j
        step = reversed_digits(partial, width)
        if 0 < j < len(partials) - 1:
            step += f" ( {reversed_digits(running, width)} )"
        steps.append(step)
    return " + ".join(steps)


@FEW
@given(seed=SEEDS, data=st.data())
def test_multiplication_flags_a_wrong_partial_product_and_judges_later_steps_on_the_generated_sums(
    seed: int, data: st.DataObject
) -> None:
    task = Multiplication()
    example = task.generate(random.Random(seed))
    partials = list(example.metadata["partial_products"])
    k = data.draw(st.integers(0, len(partials) - 1))
    wrong = partials[:k] + [partials[k] + 10**k] + partials[k + 1 :]
    # Later sums carried forward from the wrong product are valid steps ...
    assert task.check_steps(example, multiplication_trace(4, wrong)) == [j != k for j in range(4)]
    # ... but with the reference sums after it, the first one does not follow from the trace.
    steps = multiplication_trace(4, wrong).split(" + ")[: k + 1] + list(example.steps[k + 1 :])
    expected = [j != k and not (j == k + 1 and 0 < j < 3) for j in range(4)]
    assert task.check_steps(example, " + ".join(steps)) == expected


def test_multiplication_judges_a_wrong_running_sum_and_the_wrong_answer() -> None:
    task = Multiplication()
    example = task.generate(fixed_operands(2365, 4347))
    steps = list(example.steps)
    steps[1] = "0 0 6 4 9 0 ( 6 5 1 1 1 1 )"  # 111156 instead of 111155
    assert task.check_steps(example, " + ".join(steps)) == [True, False, False, True]
    steps[2] = "0 0 5 9 0 7 0 ( 6 5 6 0 2 8 0 )"  # 111156 + 709500, carried forward
    assert task.check_steps(example, " + ".join(steps)) == [True, False, True, True]
    steps[3] = "0 0 0 0 6 4 9"  # one digit short
    assert task.check_steps(example, " + ".join(steps))[3] is False
    assert not task.check_answer(example, "5 5 6 0 8 2 0 2")
    assert not task.check_answer(example, "5 5 6 0 8 2 0")
    assert not task.check_answer(example, "")


# --- addition chain ---------------------------------------------------------


@FEW
@given(seed=SEEDS, n_terms=st.integers(2, 8), max_operand=st.integers(1, 50))
def test_addition_chain_adds_one_term_per_step(seed: int, n_terms: int, max_operand: int) -> None:
    example = AdditionChain(n_terms, max_operand).generate(random.Random(seed))
    terms = [int(word) for word in example.prompt.split(" + ")]
    assert len(terms) == n_terms and all(0 <= t <= max_operand for t in terms)
    running = terms[0]
    for step, term in zip(example.steps, terms[1:], strict=True):
        assert step == f"{running} + {term} = {running + term}"
        running += term
    assert example.answer == str(running) == str(sum(terms))


@FEW
@given(seed=SEEDS, n_terms=st.integers(2, 8), modulus=st.integers(2, 12))
def test_a_modular_chain_adds_mod_m_at_every_step(seed: int, n_terms: int, modulus: int) -> None:
    task = AdditionChain(n_terms, 9, modulus=modulus)
    example = task.generate(random.Random(seed))
    terms = [int(word) for word in example.prompt.split(" + ")]
    running = terms[0]
    for step, term in zip(example.steps, terms[1:], strict=True):
        assert step == f"{running} + {term} = {(running + term) % modulus}"
        running = (running + term) % modulus
    assert example.answer == str(sum(terms) % modulus) and task.check_steps(example, example.trace) == [True] * (n_terms - 1)
    assert set(example.trace.split()) | set(example.prompt.split()) <= set(task.vocabulary())
    if n_terms > 2 and sum(terms[:2]) >= modulus:  # the plain sum is a wrong step under the modulus
        assert task.check_steps(example, f"{terms[0]} + {terms[1]} = {terms[0] + terms[1]}")[0] is False


def test_addition_chain_judges_each_step_on_the_generated_running_value() -> None:
    task = AdditionChain()
    example = task.generate(random.Random(0))
    terms = example.metadata["terms"]
    a, b, c, d = terms
    wrong = a + b + 1
    first = f"{a} + {b} = {wrong}"
    # A wrong sum carried forward: only the wrong step is flagged.
    carried = [first, f"{wrong} + {c} = {wrong + c}", f"{wrong + c} + {d} = {wrong + c + d}"]
    assert task.check_steps(example, " ; ".join(carried)) == [False, True, True]
    # Reference steps after a wrong sum: the next one does not follow from it, the one after does.
    assert task.check_steps(example, " ; ".join([first, *example.steps[1:]])) == [False, False, True]
    # Right arithmetic on the wrong term.
    assert task.check_steps(example, f"{a} + {b + 1} = {a + b + 1}") == [False]
    assert task.check_steps(example, f"{a} + {b} = 0{a + b}") == [False]
    assert not task.check_answer(example, str(sum(terms) + 1))
    assert not task.check_answer(example, f"{sum(terms)} .")


# --- state chains -----------------------------------------------------------


@FEW
@given(seed=SEEDS, n_moves=st.integers(1, 9), n_states=st.integers(2, 15))
def test_a_distance_chain_writes_each_distance_to_the_next_number(seed: int, n_moves: int, n_states: int) -> None:
    example = StateChain(n_moves, n_states).generate(random.Random(seed))
    start, *numbers = (int(word) for word in example.prompt.split())
    assert len(numbers) == n_moves and all(0 <= n < n_states for n in [start, *numbers])
    state, written = start, []
    for number in numbers:
        state = abs(state - number)
        written.append(str(state))
    assert list(example.steps) == written and example.trace == " ".join(written) and example.answer == written[-1]


@FEW
@given(seed=SEEDS, n_moves=st.integers(1, 9), max_move=st.integers(1, 4))
def test_a_walk_stays_between_the_walls(seed: int, n_moves: int, max_move: int) -> None:
    with pytest.raises(ValueError, match="max_move"):
        StateChain(n_moves, 6, rule="walk", max_move=6)
    example = StateChain(n_moves, 6, rule="walk", max_move=max_move).generate(random.Random(seed))
    start, *moves = example.prompt.split()
    assert all(move == "0" or (move[0] in "+-" and 1 <= int(move[1:]) <= max_move) for move in moves)
    state = int(start)
    for move, step in zip(moves, example.steps, strict=True):
        state = min(5, max(0, state + int(move)))
        assert step == str(state)


def test_a_state_chain_judges_each_step_on_the_generated_state() -> None:
    task = StateChain(3, 10)
    example = Example(prompt="3 7 1 4", trace="4 3 1", answer="1", steps=("4", "3", "1"),
                      metadata={"moves": ["7", "1", "4"], "states": [3, 4, 3, 1]})
    assert task.check_steps(example, "4 3 1") == [True, True, True]
    # A wrong state carried forward: only the wrong step is flagged (|5 - 1| = 4, |4 - 4| = 0).
    assert task.check_steps(example, "5 4 0") == [False, True, True]
    # The reference after a wrong state: the next step does not follow from it.
    assert task.check_steps(example, "5 3 1") == [False, False, True]
    assert task.check_steps(example, "4 03 1") == [True, False, False]
    assert not task.check_answer(example, "4") and task.check_answer(example, " 1 ")


# --- ProsQA -----------------------------------------------------------------


def reachable(edges: list[list[str]], source: str) -> set[str]:
    children: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    seen, queue = {source}, deque([source])
    while queue:
        for child in children.get(queue.popleft(), []):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


@FEW
@given(seed=SEEDS)
def test_prosqa_has_one_reachable_option_and_a_valid_reference_path(seed: int) -> None:
    task = ProsQA()
    example = task.generate(random.Random(seed))
    meta = example.metadata
    edges = {tuple(edge) for edge in meta["edges"]}
    root, target, distractor = meta["root"], meta["target"], meta["distractor"]
    facts, question = example.prompt.split(" question : ")
    sentences = [fact.split() for fact in facts.removesuffix(" .").split(" . ")]
    # `tom is a x` and `every y is a z` both name the parent 4th from the end and the child last
    assert len(edges) == len(meta["edges"]) == len(sentences)
    assert {(words[-4], words[-1]) for words in sentences} == edges, "the prompt states exactly the graph's edges"
    assert question == f"is {root} a {meta['options'][0]} or a {meta['options'][1]} ?"
    assert sorted(meta["options"]) == sorted([target, distractor])
    assert target in reachable(meta["edges"], root) and distractor not in reachable(meta["edges"], root)
    assert example.answer == f"{root} is a {target} ."
    # The path: root → c1 → … → target along edges that the prompt states.
    concepts = [step.split()[-2] for step in example.steps]
    assert example.steps[0] == f"{root} is a {concepts[0]} ."
    assert all(step == f"every {x} is a {y} ." for step, x, y in zip(example.steps[1:], concepts, concepts[1:]))
    assert all(edge in edges for edge in zip([root] + concepts, concepts))
    assert concepts[-1] == target and len(concepts) >= task.min_depth
    for fact in [f"{root} is a {concepts[0]} ."] + list(example.steps[1:]):
        assert fact in example.prompt


def test_prosqa_option_order_does_not_give_the_answer_away() -> None:
    first = [ex.metadata["options"][0] == ex.metadata["target"] for ex in examples(ProsQA(), 3, 1000)]
    assert 0.45 < sum(first) / len(first) < 0.55


def test_prosqa_judges_each_step_on_the_concept_the_previous_step_reached() -> None:
    task = ProsQA()
    for example in examples(task, 4, 30):
        meta = example.metadata
        edges = [tuple(edge) for edge in meta["edges"]]
        root, steps = meta["root"], list(example.steps)
        concepts = [step.split()[-2] for step in steps]
        assert task.check_steps(example, f"every {root} is a {concepts[0]} .") == [False]
        assert task.check_steps(example, f"{root} is a {meta['distractor']} .") == [False]
        # Step 2 jumps to a concept with no edge from step 1's, then follows an edge from there.
        previous = concepts[0]
        people = {p for p, _ in edges} - {c for _, c in edges}
        jump, onward = next((p, c) for p, c in edges if p not in people | {previous} and (previous, p) not in edges)
        trace = " ; ".join([steps[0], f"every {previous} is a {jump} .", f"every {jump} is a {onward} ."])
        assert task.check_steps(example, trace) == [True, False, True]
        # `bob is a x` is a fact of the prompt, `every bob is a x` is not.
        (other, child), *_ = [(p, c) for p, c in edges if p in people - {root}]
        trace = " ; ".join([steps[0], f"every {previous} is a {other} .", f"every {other} is a {child} ."])
        assert task.check_steps(example, trace) == [True, False, False]
        # A true fact that does not continue from the previous step is not a step of this chain.
        if len(steps) > 2:
            assert task.check_steps(example, " ; ".join([steps[0], steps[2]])) == [True, False]
        assert not task.check_answer(example, f"{root} is a {meta['distractor']} .")
        assert not task.check_answer(example, meta["target"])
