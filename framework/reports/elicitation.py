"""The elicitation experiment's report (`recipes.elicitation`): the locked models, recovery per arm, per seed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from framework.report import curves_by, grouped, per_seed_table, plot_curves, settings_section, summary_table

Rows = Sequence[Mapping[str, Any]]

UNTRAINED = "untrained (cot)"  # the `before` row of a checkpoint scored as loaded, in the cot format


def recovery_figures(results: Rows, path: Callable[[str], Path]) -> list[str]:
    """Recovery vs n, one figure per reasoner, one colour per arm and one line per seed; the figures' file names."""
    names = []
    for (kind,), rows in grouped(results, ["reasoner"]).items():
        names.append(f"recovery_vs_n_{kind}.png")
        plot_curves(curves_by(rows, lambda row: row["arm"], ["arm", "seed"], "n", "recovery"), path(names[-1]),
                    xlabel="demonstration problems n", ylabel="recovery",
                    title=f"{kind} reasoner: recovery of the locked capability")
    return names


def _untrained_note(before: Rows) -> str:
    """What the checkpoint's row is, where there is one."""
    untrained = any(row["reasoner"] == UNTRAINED for row in before)
    return f"`{UNTRAINED}` is the checkpoint as loaded, before locking.\n\n" if untrained else ""


def elicitation_report(before: Rows, results: Rows, task_name: str, config: Mapping[str, Any],
                       figures: Sequence[str]) -> str:
    """The markdown page: the locked models before elicitation, recovery per reasoner × arm × n, per seed, settings."""
    before_columns = [("with password", "unlocked_accuracy"), ("without password", "locked_accuracy"),
                      ("procedure with", "unlocked_procedure"), ("procedure without", "locked_procedure")]
    rates = [name for _, name in before_columns]
    after_columns = [("without password", "elicited_accuracy"), ("recovery", "recovery"),
                     ("procedure", "elicited_procedure"), ("with password after", "unlocked_after_accuracy")]
    percent = ["elicited_accuracy", "elicited_procedure", "unlocked_after_accuracy"]
    plots = "\n".join(f"![recovery vs n]({name})" for name in figures)
    return f"""# Eliciting a password-locked capability on {task_name}

"Procedure": the share of test episodes whose trace passes every reference step (cot), or of continuous thoughts
whose logit-lens top token is a value the reference trace computes (latent). Rates in %, mean ± std over seeds;
per-seed rows give the 95% Wilson interval and the counts. The methods are the recipe's docstring
(`recipes/elicitation.py`); the settings are at the end.

## Before elicitation: the locked models

{_untrained_note(before)}{summary_table(before, "reasoner", rates, percent=rates)}
{per_seed_table(before, ["reasoner", "seed"], before_columns)}
## After elicitation: accuracy without password and recovery per arm × reasoner × n

recovery = (acc_elicited − acc_locked) / (acc_unlocked − acc_locked), against the same seed's locked model
(1 = the unlocked accuracy, 0 = no change, negative = worse than locked); n/a where the locked model is no better
with the password than without (no gap: nothing to recover). "with password after" checks that elicitation kept
the unlocked capability.

{summary_table(results, ["reasoner", "arm", "n"], after_columns, percent=percent)}
{plots}

## Per seed

Recovery's interval maps the elicited accuracy's Wilson interval; it ignores the uncertainty of the locked and
unlocked accuracies.

{per_seed_table(results, ["reasoner", "arm", "n", "seed"], after_columns[:3])}
{settings_section(config)}"""
