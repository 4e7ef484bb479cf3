"""Results -> CSV, markdown tables and matplotlib figures (all written atomically)."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; never ask for a display
import matplotlib.pyplot as plt  # noqa: E402

from framework.io import atomic_write_text  # noqa: E402


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


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std 0 for one value)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summary_table(
    rows: Sequence[Mapping[str, object]],
    group_by: str,
    metrics: Sequence[str],
    *,
    percent: Sequence[str] = (),
    extra_columns: Mapping[str, Mapping[object, object]] | None = None,
) -> str:
    """Markdown table of mean ± std of `metrics` per value of `group_by` (in first-seen order).

    `extra_columns` adds given values per group after the metrics (e.g. the
    published numbers beside the measured ones); a group without one shows "—".
    """
    extra_columns = extra_columns or {}
    groups: dict[object, list[Mapping[str, object]]] = defaultdict(list)
    for row in rows:
        groups[row[group_by]].append(row)
    lines = [
        "| " + " | ".join([group_by, "seeds", *metrics, *extra_columns]) + " |",
        "|" + "---|" * (len(metrics) + len(extra_columns) + 2),
    ]
    for group, members in groups.items():
        cells = [str(group), str(len(members))]
        for metric in metrics:
            mean, std = mean_std(member.get(metric) for member in members)
            scale = 100.0 if metric in percent else 1.0
            cells.append("n/a" if math.isnan(mean) else f"{mean * scale:.1f} ± {std * scale:.1f}")
        cells += [str(column.get(group, "—")) for column in extra_columns.values()]
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
