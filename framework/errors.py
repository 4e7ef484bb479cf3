"""`ConfigError`: a user's mistake in a setting, a path or a name, which the command line reports in one line."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting that cannot work, named as the user wrote it (`train.max_steps`, `--resume`, a file and line).

    Raised before any work starts where possible. `recipes.cli.run` prints
    the message alone, without a traceback; any other exception is a bug and
    keeps its traceback. A `ValueError`, so callers that catch those still do.
    """


def require_positive(prefix: str, config: Any, *fields: str) -> None:
    """Refuse a field of `config` (a settings dataclass read as `--{prefix}.{field}`) that is not a positive number."""
    for name in fields:
        value = getattr(config, name)
        if value is None or value <= 0:
            raise ConfigError(f"{prefix}.{name} must be positive, got {value}")


def require_at_least(name: str, value: float, minimum: float, why: str = "") -> None:
    """Refuse the setting `name` (as the user writes it, `plant.replay`) when its `value` is below `minimum`."""
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum:g}{f' ({why})' if why else ''}, got {value}")


def require_fraction(name: str, value: float, *, open_low: bool = False, open_high: bool = False, why: str = "") -> None:
    """Refuse a share (a setting `name`, or one computed from settings) outside [0, 1], or (0, 1) with an end open."""
    if not ((value > 0 if open_low else value >= 0) and (value < 1 if open_high else value <= 1)):
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ConfigError(f"{name} must lie in {interval}{f' ({why})' if why else ''}, got {value:g}")
