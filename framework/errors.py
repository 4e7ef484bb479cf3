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
