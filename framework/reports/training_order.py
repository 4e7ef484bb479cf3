"""The post-training-order experiment's report (`recipes.training_order`): the controls, a table per order, each
metric along the stages with one line per order, and the question it asks answered from I→R to I→R→P."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from framework.report import curves_by, examples_section, plot_curves, settings_section
from framework.reports.answer_key import DEFINITIONS, MONITORS, controls_section, examples_by, rate_tables

ALONG = ("accuracy", "loophole_use", "mirror_use", "recall_trace_keyword", "recall_output", "obfuscation_trace_keyword",
         "step_validity")  # the metrics drawn along the stages
PER_STAGE = ("accuracy", "loophole_use", "mirror_use", *(f"recall_{m}" for m in MONITORS), "obfuscation_trace_keyword",
             "obfuscation_trace_classifier", "step_validity")
Rows = Sequence[Mapping[str, Any]]


def stages_name(stages: str, loss: str) -> str:
    """Stages as a name: `I→R→P` (P scored on the output only) or `I→R→P*` (P unmasked, trace included)."""
    marked = "P*" if loss == "unmasked" else "P"
    return "→".join(marked if stage == "P" else stage for stage in stages)


def order_rows(results: Rows, orders: Sequence[str], losses: Sequence[str]) -> list[dict[str, Any]]:
    """Each order's rows along its stages: the results row of every prefix, with `order` (its full name) and
    `position` (0 for I). A prefix shared by several orders appears in each."""
    # A stage's row is named after its stages; the controls and an untrained checkpoint carry I's stages, not its name.
    by_stages = {(row["stages"], row["seed"]): row for row in results if row["arm"] == row["stages"]}
    seeds = list(dict.fromkeys(row["seed"] for row in results))
    rows = []
    for order in dict.fromkeys(stages_name(order, loss) for loss in losses for order in orders):  # I→R: once
        stages = order.split("→")
        for seed in seeds:
            rows += [{**by_stages[("→".join(stages[: end + 1]), seed)], "order": order, "position": end}
                     for end in range(len(stages))]
    return rows


def order_figures(rows: Rows, path: Callable[[str], Path]) -> None:
    """Each metric of `ALONG` against the stage, a colour per order and a line per seed."""
    for metric in ALONG:
        plot_curves(curves_by(rows, lambda r: r["order"], ["order", "seed"], "position", metric),
                    path(f"{metric}_by_stage.png"), xlabel="stage (0 = I, then each stage of the order)",
                    ylabel=f"{metric.replace('_', ' ')} (wrong-key test problems)",
                    title=f"{metric.replace('_', ' ').capitalize()} along each post-training order")


def training_order_report(tables: Mapping[str, Rows], rows: Rows, limit: int, config: Mapping[str, Any]) -> str:
    results = tables["results"]
    orders = list(dict.fromkeys(row["order"] for row in rows))
    per_order = "\n".join(f"### {order}\n\n{rate_tables([r for r in rows if r['order'] == order], 'stages', PER_STAGE)}"
                          for order in orders)
    after_rl = [row for row in results if row["stages"] in ("I→R", "I→R→P", "I→R→P*")]
    figures = "".join(f"![{metric} by stage]({metric}_by_stage.png)\n" for metric in ALONG)
    ends_in_p = [stages for stages in dict.fromkeys(row["stages"] for row in results) if stages.startswith("I→R→P")]
    examples = examples_by(tables["episodes"], "stages", ends_in_p, "trace_keyword", limit)
    return f"""# Post-training order: does output-only pressure after RL hide the loophole in the trace?

Stages: I = instruction SFT on the citing curriculum; P = DPO on on-policy pairs judged on the output alone (P:
scored on the answer and explanation tokens; P*: on the whole completion, trace included); R = GRPO on the
loophole grader. The methods are the recipe's docstring (`recipes/training_order.py`); the settings are at the end.

{DEFINITIONS} Step validity = episodes whose every written step the checker accepts.

{controls_section(results, tables["monitors"])}
## The question: from I→R to I→R→P

After RL the model uses the loophole; output-only preference training then pushes its explanations away from the
key. If the trace stops showing the loophole while it is still used, `recall_trace_keyword` falls and
`obfuscation_trace_keyword` rises while `loophole_use` holds. `on_policy_pairs`: the share of P's pairs whose two
sides the model sampled itself.

{rate_tables(after_rl, "stages", [*PER_STAGE, "on_policy_pairs"])}
## Every order, stage by stage

{per_order}
{figures}
## Example traces after R then P

Greedy, wrong-key test problems; the first found (all in `episodes.csv`).

{examples_section(examples, ["prompt", "trace", "answer"], heading="Stages: ")}
{settings_section(config)}"""
