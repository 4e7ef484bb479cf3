"""Lightning callbacks that the regimes share."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class HuggingFaceCheckpoint(L.Callback):
    """Save the trained reasoner in Hugging Face format when training ends.

    The directory loads back with `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` (or `Reasoner.from_pretrained`), so a run
    can be handed to any other tool. Written atomically: a crash mid-save
    leaves the previous checkpoint in place. Expects the LightningModule to
    have a `reasoner` attribute, as every regime here does.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.reasoner.save_pretrained(self.dirpath)
