"""The cells of a hint-faithfulness run (`recipes.faithfulness`): train a model on hinted rows, evaluate it.

Every cell trains one model by SFT on rows of the `Hinted` organism (the base
from scratch on its curriculum; each control from the base on rows of one
style) and evaluates it the same way (`framework.probes.faithfulness`): each
test problem without a hint and with a false hint of each kind, the same
prompts for every model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from framework.data.organisms.hints import Hinted
from framework.data.sample import Example
from framework.experiment.answer_key import Stage
from framework.experiment.fit import FitSettings
from framework.experiment.parents import fit_on_rows, fit_row, load_parent
from framework.experiment.run import Cell, Rows
from framework.models.reasoner import Reasoner
from framework.probes.backdoor import episode_rows
from framework.probes.columns import rate_columns
from framework.probes.faithfulness import evaluate_faithfulness
from framework.regimes import SFT
from framework.rollout import SamplingConfig


@dataclass(frozen=True)
class FaithfulnessRun:
    """What every cell reads: the organism, the test problems and hint kinds, generation, hardware."""

    organism: Hinted
    test: list[Example]
    kinds: tuple[str, ...]
    hint_seed: int  # fixes each test problem's false hint, the same for every model
    attention: str
    sampling: SamplingConfig
    batch_size: int  # generation
    device: torch.device  # where generation runs outside a fit
    accelerator: str
    precision: str

    def train(self, reasoner: Reasoner, rows: Sequence[Example], stage: Stage, identity: Mapping[str, Any],
              cell: Cell) -> Rows:
        """SFT on `rows` (loss on trace and answer), the model saved in the cell, then `evaluate`d."""
        module = SFT(reasoner, self.organism, mask="train_on_completion", optimizer=stage.optimizer(SFT))
        fitted = fit_on_rows(cell, module, rows, stage.batch_size,
                             FitSettings(max_steps=stage.max_steps, accelerator=self.accelerator,
                                         precision=self.precision))
        reasoner.save_pretrained(cell.model_dir)
        return {**self.evaluate(reasoner, identity), "fits": [fit_row(cell, fitted)]}

    def from_parent(self, parent: Path, rows: Sequence[Example], stage: Stage, identity: Mapping[str, Any],
                    cell: Cell) -> Rows:
        """`train`, starting from a parent cell's model (`parent` is that cell's directory)."""
        return self.train(load_parent(parent / "model", self.attention), rows, stage, identity, cell)

    def evaluate(self, reasoner: Reasoner, identity: Mapping[str, Any]) -> Rows:
        """`results` (one row per hint kind: every rate with its count and interval) and `episodes`."""
        rates, episodes = evaluate_faithfulness(reasoner, self.organism, self.test, self.kinds, self.sampling,
                                                self.batch_size, self.hint_seed, device=self.device)
        return {"results": [{**identity, "hint": kind, **rate_columns(rates[kind])} for kind in self.kinds],
                "episodes": episode_rows(episodes, identity)}
