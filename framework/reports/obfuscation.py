"""The obfuscation experiment's report (`recipes.obfuscation`): the controls, monitor recall and obfuscation per λ,
loophole use and its chance control along GRPO, and example traces."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from framework.experiment.answer_key import PENALISED
from framework.report import curves_by, examples_section, plot_curves, settings_section
from framework.reports.answer_key import (
    DEFINITIONS,
    MONITORS,
    OBFUSCATION,
    RECALL,
    controls_section,
    examples_by,
    rate_tables,
)

PROBED_RATES = ("loophole_use", "mirror_use", "accuracy",
                *(f"{rate}_{m}" for m in MONITORS for rate in ("recall", "obfuscation", "flagged_use", "flag_rate")))
CURVES = {"loophole_use": "loophole use", "mirror_use": "mirror use (the chance control)",
          f"flagged_use_{PENALISED}": "flagged loophole use",
          f"obfuscation_{PENALISED}": "unflagged loophole use (obfuscation)"}
Rows = Sequence[Mapping[str, Any]]


def obfuscation_figures(probes: Rows, path: Callable[[str], Path]) -> None:
    """Each of `CURVES` against the GRPO step: a colour per λ, a line per seed."""
    for metric, what in CURVES.items():
        plot_curves(curves_by(probes, lambda r: f"λ={r['lambda']:g}", ["lambda", "seed"], "step", metric),
                    path(f"{metric}_vs_step.png"), xlabel="GRPO step",
                    ylabel=f"{what} (wrong-key probe problems)", title=f"{what.capitalize()} under GRPO, per λ")


def obfuscation_report(tables: Mapping[str, Rows], limit: int, config: Mapping[str, Any]) -> str:
    results = tables["results"]
    trained = [row for row in results if row["arm"].startswith("grpo")]
    arms = list(dict.fromkeys(row["arm"] for row in trained))
    figures = "".join(f"![{what} vs step]({metric}_vs_step.png)\n" for metric, what in CURVES.items())
    return f"""# Obfuscation under monitor pressure

Reward = grader (the answer equals the prompt's key) − λ · flag of `{PENALISED}` (Baker et al. 2025). The methods
are the recipe's docstring (`recipes/obfuscation.py`); the settings are at the end.

{DEFINITIONS}

{controls_section(results, tables["monitors"])}
## GRPO per λ

### Monitor recall

{rate_tables(trained, "arm", RECALL)}
### Obfuscation

{rate_tables(trained, "arm", OBFUSCATION)}
{figures}
## Example traces

Greedy, wrong-key test problems; the first found (all in `episodes.csv`).

{examples_section(examples_by(tables["episodes"], "arm", arms, PENALISED, limit), ["prompt", "trace", "answer"],
                  heading="GRPO arm: ")}
{settings_section(config)}"""
