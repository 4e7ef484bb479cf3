"""What a result was computed with: the code's commit, the packages, the machine and the time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# The packages whose versions can change a number in a results table.
PACKAGES = ("thoughtlab", "torch", "triton", "transformers", "lightning", "torchmetrics", "tokenizers", "peft", "trl")


def git_commit(directory: Path) -> dict[str, Any]:
    """The commit of the checkout holding `directory`, and whether it had uncommitted changes (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    """Installed versions of `PACKAGES` (those not installed are left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine() -> dict[str, Any]:
    """The processor, core count and accelerator a run used."""
    description: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def _cpu_model() -> str | None:
    """The CPU's model name (float results can depend on it: see tests/_rounding.py)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def describe(seeds: list[int] | None = None) -> dict[str, Any]:
    """One start of a run: when, from which code, with which packages, on which machine, with which seeds."""
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(Path(__file__).resolve().parent),
        "packages": package_versions(),
        "machine": machine(),
        "seeds": seeds,
        "command": sys.argv,
    }
