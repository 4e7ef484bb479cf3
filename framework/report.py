"""Results -> CSV, markdown tables and matplotlib figures (all written atomically)."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import yaml

matplotlib.use("Agg")  # figures are files; never ask for a display
import matplotlib.pyplot as plt

from framework.io import atomic_write_text
from framework.stats import separating_size


def write_csv(rows: Sequence[Mapping[str, object]], path: str | os.PathLike) -> None:
    """One row per mapping; columns in first-seen order across all rows."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def validation_curve(
    metrics_csv: str | os.PathLike, x: str = "step", y: str = "val/accuracy"
) -> list[tuple[float, float]]:
    """(x, y) at each step that logged `y` in a Lightning CSV log, in step order.

    A fit resumed from an epoch-boundary checkpoint logs again the steps it
    repeats after that checkpoint; the last value of a step is the one the
    finished fit computed.
    """
    by_step: dict[int, tuple[float, float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(y):
                by_step[int(row["step"])] = (float(row[x]), float(row[y]))
    return [by_step[step] for step in sorted(by_step)]


def logged_rows(metrics_csv: str | os.PathLike, prefix: str) -> list[dict[str, float]]:
    """One dict per step that logged keys starting with `prefix` in a Lightning CSV log: `step` and those keys, unprefixed.

    What `ProbeEvery` logged, read back from disk, so a resumed fit's probes
    are all there; as in `validation_curve`, the last row of a repeated step wins.
    """
    by_step: dict[int, dict[str, float]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            values = {key.removeprefix(prefix): float(value) for key, value in row.items()
                      if key.startswith(prefix) and value}
            if values:
                by_step.setdefault(int(row["step"]), {}).update(values)
    return [{"step": step, **by_step[step]} for step in sorted(by_step)]


def grouped(rows: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by their values at `keys`, groups in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    return groups


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std 0 for one value)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def mean_std_cell(values: Iterable[float], *, percent: bool = True, digits: int | None = None) -> str:
    """`mean ± std` of the finite values (in % when `percent`), "n/a" when there are none."""
    mean, std = mean_std(values)
    scale, digits = (100.0, 1 if digits is None else digits) if percent else (1.0, 2 if digits is None else digits)
    return "n/a" if math.isnan(mean) else f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def interval_cell(row: Mapping[str, Any], name: str) -> str:
    """`rate% [low, high] (hits/total)` from the columns `Proportion.columns(name)` wrote; "n/a (0/0)" without counts.

    A value with an interval but no counts (`name`, `name_ci_low`, `name_ci_high`, e.g. a recovery) shows as
    `value [low, high]`, not in %.
    """
    if f"{name}_total" not in row:
        value, low, high = (float(row[key]) for key in (name, f"{name}_ci_low", f"{name}_ci_high"))
        return "n/a" if math.isnan(value) else f"{value:.2f} [{low:.2f}, {high:.2f}]"
    total = int(row[f"{name}_total"])
    if not total:
        return "n/a (0/0)"
    return (f"{100 * row[name]:.1f} [{100 * row[f'{name}_ci_low']:.1f}, {100 * row[f'{name}_ci_high']:.1f}] "
            f"({int(row[f'{name}_hits'])}/{total})")


def insufficient(rows: Iterable[Mapping[str, Any]], name: str, min_totals: Mapping[str, int] | None) -> str | None:
    """"insufficient (n=…)" when a row counts `name` over fewer episodes (`name_total`) than `min_totals[name]`,
    so that a rate over a handful of episodes is never read as a number; None when every row has enough."""
    limits = min_totals or {}
    if name not in limits:
        return None
    totals = [int(row[f"{name}_total"]) for row in rows]
    minimum = limits[name]
    return f"insufficient (n={', '.join(map(str, totals))})" if any(t < minimum for t in totals) else None


def per_seed_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], columns: Sequence[tuple[str, str]], *,
                   min_totals: Mapping[str, int] | None = None) -> str:
    """Markdown table, one line per row: its `keys` (e.g. arm, seed), then `interval_cell` of each (title, name) column,
    or `insufficient` under its count in `min_totals`."""
    header = "| " + " | ".join([*keys, *(title for title, _ in columns)]) + " |\n"
    header += "|" + "---|" * (len(keys) + len(columns)) + "\n"
    return header + "".join(
        "| " + " | ".join([*(str(row[key]) for key in keys),
                           *(insufficient([row], name, min_totals) or interval_cell(row, name) for _, name in columns)])
        + " |\n"
        for row in rows
    )


def paired_table(rows: Sequence[Mapping[str, Any]], key: str, left: str, right: str, name: str, *,
                 by: str = "seed") -> str:
    """Markdown table comparing the rows whose `key` is `left` with those where it is `right`, one line per `by`
    value (a seed): both `interval_cell`s of the rate `name`, their difference in percentage points, and whether
    the intervals are disjoint, or else how many episodes per arm would make them so at these rates
    (`separating_size`)."""
    lines = [f"| {by} | {left} | {right} | {left} − {right} (points) | intervals |", "|---|---|---|---|---|"]
    for value in dict.fromkeys(row[by] for row in rows):
        found = {row[key]: row for row in rows if row[by] == value and row[key] in (left, right)}
        if len(found) == 2:
            a, b = found[left], found[right]
            difference = 100 * (float(a[name]) - float(b[name]))
            lines.append(f"| {value} | {interval_cell(a, name)} | {interval_cell(b, name)} | {difference:+.1f} "
                         f"| {_separation(a, b, name)} |")
    return "\n".join(lines) + "\n"


def _separation(a: Mapping[str, Any], b: Mapping[str, Any], name: str) -> str:
    """"disjoint" when the two rows' intervals of `name` are, else what it would take to make them so."""
    (low_a, high_a), (low_b, high_b) = ((float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"])) for row in (a, b))
    if high_a < low_b or high_b < low_a:
        return "disjoint"
    p, q = float(a[name]), float(b[name])
    if p == q or math.isnan(p) or math.isnan(q):
        return "overlap; no sample separates equal rates" if p == q else "overlap; a rate over no episodes"
    needed = separating_size(p, q)
    return f"overlap; n ≥ {needed} per arm would separate them" if needed else "overlap; beyond 10⁷ per arm"


def summary_table(
    rows: Sequence[Mapping[str, object]],
    group_by: str | Sequence[str],
    metrics: Sequence[str | tuple[str, str]],
    *,
    percent: Sequence[str] = (),
    extra_columns: Mapping[str, Mapping[object, object]] | None = None,
    min_totals: Mapping[str, int] | None = None,
) -> str:
    """Markdown table of mean ± std of `metrics` per group of rows (groups in first-seen order).

    `group_by`: one key or several (e.g. reasoner, arm, n). A metric is a
    column name or (title, column name); those in `percent` show in %.
    `extra_columns` adds given values per group after the metrics (e.g. the
    published numbers beside the measured ones); a group without one shows "—".
    A metric in `min_totals` shows `insufficient` when any member counts it
    over fewer episodes than its minimum.
    """
    keys = [group_by] if isinstance(group_by, str) else list(group_by)
    titled = [(metric, metric) if isinstance(metric, str) else metric for metric in metrics]
    extra_columns = extra_columns or {}
    lines = [
        "| " + " | ".join([*keys, "seeds", *(title for title, _ in titled), *extra_columns]) + " |",
        "|" + "---|" * (len(keys) + len(titled) + len(extra_columns) + 1),
    ]
    for group, members in grouped(rows, keys).items():
        cells = [*map(str, group), str(len(members))]
        cells += [insufficient(members, name, min_totals)
                  or mean_std_cell((member.get(name) for member in members), percent=name in percent)
                  for _, name in titled]
        cells += [str(column.get(group[0] if len(group) == 1 else group, "—")) for column in extra_columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(
    curves: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """One colour per arm, one line per seed: `curves[arm][seed] = [(x, y), ...]`."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for colour, (arm, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, curves.items()):
        for index, points in enumerate(runs):
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, color=colour, alpha=0.85, marker="o", markersize=3, label=arm if index == 0 else None)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    scratch = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(scratch)
    plt.close(figure)
    os.replace(scratch, path)


def examples_section(
    groups: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], fields: Sequence[str], *, heading: str = "",
    label: str = "where",
) -> str:
    """Markdown: per group a `### {heading}{group}`, per kind of example a bold line, then each example.

    An example is a mapping: its `label` value heads the item, its `fields`
    follow as code spans (a trace is easiest read verbatim). A kind with no
    example says so, since "none observed" is a finding too.
    """
    parts = []
    for group, kinds in groups.items():
        parts.append(f"### {heading}{group}\n")
        for kind, examples in kinds.items():
            parts.append(f"**{kind}**\n")
            if not examples:
                parts.append("_none observed_\n")
            parts += ["".join([f"- {example[label]}\n", *(f"  - {name}: `{example[name]}`\n" for name in fields)])
                      for example in examples]
    return "\n".join(parts)


def curves_by(
    rows: Iterable[Mapping[str, Any]], label: Callable[[Mapping[str, Any]], str], line: Sequence[str], x: str, y: str
) -> dict[str, list[list[tuple[float, float]]]]:
    """`plot_curves`' input from result rows: a line per distinct value of the `line` keys (e.g. arm and seed),
    coloured by `label` of its first row, its points `(row[x], row[y])` in row order."""
    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for members in grouped(rows, line).values():
        curves.setdefault(label(members[0]), []).append([(row[x], row[y]) for row in members])
    return curves


def settings_section(config: Mapping[str, Any]) -> str:
    """Markdown: the run's resolved configuration as YAML, so a report states exactly what produced it."""
    return f"## Settings\n\nAs resolved (also in `config.yaml`):\n\n```yaml\n{yaml.safe_dump(dict(config), sort_keys=False)}```\n"
