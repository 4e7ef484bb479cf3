"""Reasoning formats: how an example becomes the text a model reads and writes, and how its output parses.

`FORMATS` names the built-in ones (the `mode` strings of the recipes' CLIs);
`format_for` builds one from a name and its options. A format of your own is
any `ReasoningFormat` subclass: give an instance to `Reasoner` directly.
"""

from __future__ import annotations

import inspect
from typing import Any

from framework.models.formats.base import Generation, ReasoningFormat, parse_answer_only, parse_trace_then_answer
from framework.models.formats.hybrid import Hybrid
from framework.models.formats.latent import LatentConfig, LatentFormat
from framework.models.formats.text import CoT, NoThinking, Pause

FORMATS: dict[str, type[ReasoningFormat]] = {
    format_class.name: format_class for format_class in (CoT, NoThinking, Pause, LatentFormat, Hybrid)
}


def format_for(format: str | ReasoningFormat, **options: Any) -> ReasoningFormat:
    """The format named `format` built with `options` (e.g. `pause_tokens=4`, `latent=LatentConfig(...)`).

    A format object is returned as it is, and takes no options (they would be
    silently ignored). Options set to None mean "the default", so a caller can
    pass e.g. `latent=reasoner.latent` whatever the format.
    """
    given = {key: value for key, value in options.items() if value is not None}
    if isinstance(format, ReasoningFormat):
        if given:
            raise ValueError(f"options {sorted(given)} configure a format named by string; "
                             f"this one is already built ({type(format).__name__})")
        return format
    if format not in FORMATS:
        raise ValueError(f"unknown reasoning mode {format!r}; expected one of {list(FORMATS)} or a ReasoningFormat")
    format_class = FORMATS[format]
    try:
        inspect.signature(format_class).bind(**given)
    except TypeError:
        raise ValueError(
            f"{sorted(given)} do not configure the {format!r} format (it takes "
            f"{list(inspect.signature(format_class).parameters) or 'no options'}); "
            "latent= and projection= configure the 'latent' mode, pause_tokens= the 'pause' mode"
        ) from None
    return format_class(**given)


__all__ = [
    "FORMATS",
    "CoT",
    "Generation",
    "Hybrid",
    "LatentConfig",
    "LatentFormat",
    "NoThinking",
    "Pause",
    "ReasoningFormat",
    "format_for",
    "parse_answer_only",
    "parse_trace_then_answer",
]
