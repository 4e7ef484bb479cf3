"""What monitors and rewards read: one finished episode, and the monitor contract.

A monitor looks at episodes (a prompt, the visible trace or the latent
thoughts, the answer) and returns one suspicion score per episode. Keyword
monitors, trained trace classifiers and linear probes on latent thoughts all
share this interface, so a reward penalty or a recall metric takes any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class Episode:
    prompt: str
    # The visible reasoning: empty in none and pause modes and for a latent reasoner at its final stage;
    # before that stage, the language steps its thoughts have not replaced yet.
    trace: str
    answer: str
    thoughts: torch.Tensor | None = None  # `[k, H]` continuous thoughts of a latent reasoner
    metadata: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Monitor(Protocol):
    def score(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """One float per episode; higher means more suspicious (a flag is `score >= threshold`)."""
        ...
