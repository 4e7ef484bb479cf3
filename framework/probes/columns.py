"""Several rates as results columns, and back: `Proportion.columns` over a dict of rates, and its inverse."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from framework.probes.organism_metrics import Proportion


def rate_columns(rates: Mapping[str, Proportion]) -> dict[str, float]:
    """Every rate's columns (`Proportion.columns(name)`), in the order of `rates`."""
    return {key: value for name, rate in rates.items() for key, value in rate.columns(name).items()}


def rates_from_columns(columns: Mapping[str, float], names: Iterable[str]) -> dict[str, Proportion]:
    """The rates `names` rebuilt from their `{name}_hits` and `{name}_total` columns, e.g. as a log reads them back
    (floats, in the log's own column order), so that `rate_columns` of the result is what was logged."""
    return {name: Proportion(int(columns[f"{name}_hits"]), int(columns[f"{name}_total"])) for name in names}
