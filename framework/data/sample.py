"""The data contract: examples made of role-tagged text segments.

Every example is a prompt, a reasoning trace and an answer, plus metadata
(ground truth, per-step ground truth, organism flags). A `Reasoner` turns an
example into `Segment`s for its mode; tokenization maps the segments to ids and
a per-token `Role` tensor; a mask strategy turns roles into labels and weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping


class Role(IntEnum):
    """What a token is. Stored per token as an int tensor beside `input_ids`."""

    PROMPT = 0
    TRACE = 1
    ANSWER = 2
    LATENT = 3  # positions that carry compute but no text to learn: pause fillers, continuous thoughts
    PAD = 4


@dataclass(frozen=True)
class Segment:
    role: Role
    text: str


@dataclass(frozen=True)
class Example:
    """One problem with its reference reasoning and answer.

    `steps` are the trace's reasoning steps when the source knows them (the
    synthetic tasks do, a JSONL file usually does not); `trace` is their text.
    """

    prompt: str
    trace: str
    answer: str
    steps: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
