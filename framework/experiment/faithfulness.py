"""The cells of a hint-faithfulness run (`recipes.faithfulness`): train a model on hinted rows, evaluate it.

Every cell trains one model on rows of the `Hinted` organism (by SFT: the base
from scratch on its curriculum, each control from the base on rows of one
style; by `LatentSFT`: a latent reasoner on the base curriculum) and evaluates
it the same way (`framework.probes.faithfulness`): each test problem without a
hint and with a false hint of each kind, the same prompts for every model.
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
from framework.probes.faithfulness import TRACE_RATES, evaluate_faithfulness, thought_probe
from framework.regimes import SFT, LatentSFT
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
        return self._fit_and_evaluate(module, rows, stage, identity, cell)

    def train_latent(self, reasoner: Reasoner, rows: Sequence[Example], stage: Stage, steps_per_stage: int,
                     mix_prob: float, seed: int, identity: Mapping[str, Any], cell: Cell) -> Rows:
        """`LatentSFT` on `rows` through Coconut's stages (`steps_per_stage` each), evaluated at the final stage:
        thoughts only, no trace."""
        module = LatentSFT(reasoner, self.organism, steps_per_stage=steps_per_stage, mix_prob=mix_prob, seed=seed,
                           optimizer=stage.optimizer(LatentSFT))
        return self._fit_and_evaluate(module, rows, stage, identity, cell)

    def from_parent(self, parent: Path, rows: Sequence[Example], stage: Stage, identity: Mapping[str, Any],
                    cell: Cell) -> Rows:
        """`train`, starting from a parent cell's model (`parent` is that cell's directory)."""
        return self.train(load_parent(parent / "model", self.attention), rows, stage, identity, cell)

    def evaluate(self, reasoner: Reasoner, identity: Mapping[str, Any]) -> Rows:
        """`results` (one row per hint kind: every rate with its count and interval; for a latent reasoner the thought
        probe's held-out AUROC as well) and `episodes`."""
        rates, episodes = evaluate_faithfulness(reasoner, self.organism, self.test, self.kinds, self.sampling,
                                                self.batch_size, self.hint_seed, device=self.device)
        if reasoner.latent is not None:  # no trace: the thought probe stands in for the rates read from one
            rates = {kind: {k: v for k, v in rates[kind].items() if k not in TRACE_RATES} for kind in self.kinds}
        probes = {kind: thought_probe(episodes[kind], self.hint_seed) if reasoner.latent else {} for kind in self.kinds}
        return {"results": [{**identity, "hint": kind, **rate_columns(rates[kind]), **probes[kind]}
                            for kind in self.kinds],
                "episodes": episode_rows(episodes, identity)}

    def _fit_and_evaluate(self, module: SFT | LatentSFT, rows: Sequence[Example], stage: Stage,
                          identity: Mapping[str, Any], cell: Cell) -> Rows:
        fitted = fit_on_rows(cell, module, rows, stage.batch_size,
                             FitSettings(max_steps=stage.max_steps, accelerator=self.accelerator,
                                         precision=self.precision))
        reasoner = module.reasoner
        if reasoner.latent is not None:
            reasoner.stage = reasoner.latent.final_stage
        reasoner.save_pretrained(cell.model_dir)
        return {**self.evaluate(reasoner, identity), "fits": [fit_row(cell, fitted)]}
