"""A recipe's run in a subprocess, for the kill-and-resume tests: start it, SIGKILL it mid-way, finish it, compare.

The tests compare a killed and resumed run with an uninterrupted one, table by
table, apart from the `*time*` columns (wall-clock seconds differ by nature).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(recipe: str, out: Path, *flags: str) -> subprocess.Popen:
    """`python -m recipes.<recipe> <flags> --out <out>`, one thread, its stderr kept for `finish`."""
    return subprocess.Popen([sys.executable, "-m", f"recipes.{recipe}", *flags, "--out", str(out)],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_at(process: subprocess.Popen, out: Path, pattern: str, timeout: float = 300) -> Path:
    """SIGKILL `process` (no clean-up runs) as soon as a file matching `pattern` under `out` exists; that file."""
    deadline = time.monotonic() + timeout
    while not (found := list(out.glob(pattern))):
        assert process.poll() is None, f"the run ended before {pattern} appeared"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.kill()
    process.wait()
    return found[0]


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=300)
    assert process.returncode == 0, errors


def timeless_rows(path: Path) -> list[dict[str, str]]:
    """A results table's rows without the `*time*` columns."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if "time" not in k} for row in csv.DictReader(f)]


def refuse_to_build(*args, **kwargs):
    """Stands in for a model builder on resume: a finished cell must be replayed, never built again."""
    raise AssertionError("a finished cell built a model again")
