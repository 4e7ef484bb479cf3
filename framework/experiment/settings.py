"""The configuration a run records when no command line resolved one: a recipe's `main` arguments as plain data."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any


def config_record(**settings: Any) -> dict[str, Any]:
    """`settings` by name, each settings dataclass as a dict (what `Experiment` writes to `config.yaml` and compares
    on `--resume`)."""
    return {name: asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
            for name, value in settings.items()}
