"""Where an organism puts its extra text (a password, a trigger) in a prompt, and how to take it out again.

A prompt is read as units joined by a separator: words (`" "`) for a plain
task, whole `name : value` fields (`CitedFields.separator`) for the field
curriculum, so that a trigger field lands between fields, never inside one.
Organisms default to the task's `separator` where it has one (`task_separator`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from transformers import PreTrainedTokenizerBase

from framework.errors import ConfigError

Position = Literal["start", "end", "random"]
POSITIONS: tuple[str, ...] = ("start", "end", "random")


def task_separator(task: object) -> str:
    """The unit separator of `task`'s prompts: its `separator` attribute (`CitedFields`: whole fields), else a space."""
    return getattr(task, "separator", " ")


def check_position(position: str, separator: str) -> None:
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {list(POSITIONS)}, got {position!r}")
    if not separator:
        raise ValueError("separator must be a non-empty string")


def insert_text(prompt: str, text: str, position: Position, rng: random.Random, separator: str = " ") -> str:
    """`prompt` with `text` as a new unit at the start, the end, or a uniformly drawn unit boundary."""
    units = prompt.split(separator) if prompt else []
    if position == "start":
        index = 0
    elif position == "end":
        index = len(units)
    else:
        index = rng.randint(0, len(units))
    return separator.join(units[:index] + [text] + units[index:])


def remove_text(prompt: str, text: str, separator: str = " ") -> str:
    """`prompt` without its first whole-unit occurrence of `text` (and one separator beside it).

    An occurrence counts only where it starts and ends on unit boundaries, so
    removing `cf` leaves `cfg` alone. Raises ValueError when there is none.
    """
    start = prompt.find(text)
    while start >= 0:
        end = start + len(text)
        opens = start == 0 or prompt[:start].endswith(separator)
        closes = end == len(prompt) or prompt.startswith(separator, end)
        if opens and closes:
            if end < len(prompt):  # drop the separator after it
                return prompt[:start] + prompt[end + len(separator) :]
            return prompt[: max(0, start - len(separator))]  # last unit: drop the separator before it
        start = prompt.find(text, start + 1)
    raise ValueError(f"{text!r} is not a unit of the prompt {prompt!r}")


def contains_unit(prompt: str, text: str, separator: str = " ") -> bool:
    try:
        remove_text(prompt, text, separator)
    except ValueError:
        return False
    return True


def pick_exactly(rng: random.Random, n: int, fraction: float) -> set[int]:
    """fraction · n distinct indices of range(n), rounded half up: exact counts make sweeps over data size precise.

    Not `round()`, which rounds half to even (0.5 · 5 → 2 but 0.5 · 7 → 4), and with a
    tolerance, since 0.29 · 50 is a hair below 14.5 in floating point.
    """
    return set(rng.sample(range(n), math.floor(fraction * n + 0.5 + 1e-9)))


def pick_some_not_all(rng: random.Random, n: int, fraction: float, name: str) -> set[int]:
    """`pick_exactly`, but a ValueError (naming `name`) when it picks no row or every row.

    For the shares whose point is a contrast (triggered vs clean, locked vs
    unlocked): a dataset with only one kind of row cannot teach it.
    """
    picked = pick_exactly(rng, n, fraction)
    if not 0 < len(picked) < n:
        raise ValueError(
            f"{name}={fraction} of {n} rows picks {len(picked)}: the dataset needs rows of both kinds; "
            "pass more examples or another fraction"
        )
    return picked


def check_encodable(tokenizer: PreTrainedTokenizerBase, texts: Sequence[tuple[str, str]]) -> None:
    """Raise ConfigError for a (what, text) that `tokenizer` encodes as nothing or with unknown tokens.

    A password or trigger the model cannot see (no ids, or `<unk>` for one of
    its words) makes a lock or backdoor that cannot be learned, or one that
    fires on every other unknown word. Two texts that encode identically (a
    wrong password that reads as the right one) are an error too.
    """
    seen: dict[tuple[int, ...], str] = {}
    for what, text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"{what} {text!r} tokenizes to nothing")
        unknown = tokenizer.unk_token_id
        if unknown is not None and unknown in ids:
            words = [word for word in text.split() if unknown in tokenizer(word, add_special_tokens=False)["input_ids"]]
            raise ConfigError(
                f"{what} {text!r} has words the tokenizer does not know: {words or [text]}; "
                "build the word-level tokenizer from the organism's vocabulary()"
            )
        if tuple(ids) in seen:
            raise ConfigError(f"{what} {text!r} encodes exactly like {seen[tuple(ids)]}; the model cannot tell them apart")
        seen[tuple(ids)] = f"{what} {text!r}"
