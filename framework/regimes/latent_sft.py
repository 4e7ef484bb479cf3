"""Coconut's curriculum: SFT of a latent reasoner whose thoughts replace its language steps stage by stage.

At stage 0 the reasoner learns the full chain of thought; at stage
`1 <= s <= max_stage` the first `s` steps are replaced by `s * c` continuous
thoughts; at the final stage `max_stage + 1` no language step is left (see
`framework.models.formats.latent` for the format). The loss covers only what the
model writes: the remaining language steps, `</think>` and the answer.

Choices, following Coconut (Hao et al. 2024) and its code:

- Stages advance every `epochs_per_stage` epochs or every `steps_per_stage`
  optimizer steps, then stay at the final stage. `curriculum=False` trains at
  the final stage from the start (Coconut's "w/o curriculum" ablation).
- With probability `mix_prob` a training row draws its own stage uniformly from
  0 … its number of steps (Coconut's `uniform_prob`; stages past `max_stage`
  become the final one). The draws come from the module's own generator
  (`seed`), saved in and restored from Lightning checkpoints, so a resumed run
  mixes as the uninterrupted one would.
- The optimizer's state is cleared when the stage changes (Coconut builds a
  new optimizer per stage); the learning-rate schedule runs on.
- Batches are re-tokenized from their `examples` at the stage in effect, in
  `on_before_batch_transfer` (on the host, before the device copy), with each
  row's `<bot>` aligned so the thought loop is as short as the longest row's.
- Validation, test and `framework.rollout.generate` use the stage of the last training
  batch (this module keeps the reasoner's `stage` in step), so validation
  accuracy follows the curriculum as Coconut's does and `val/stage` says which
  stage it measured; once the curriculum is done that is the final stage, a
  fresh reasoner's default for inference.
- "Pause as thought" is a reasoner option (`LatentConfig(thought="pause")`):
  the same curriculum with learned `<pause>` embeddings in the slots.
- A `LatentProjection` owned by the reasoner is registered (by `Regime`), so Lightning
  moves, optimises and checkpoints it; `Reasoner.save_pretrained` writes it
  beside the Hugging Face files.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.base import OptimizerConfig, Regime
from framework.regimes.teacher_forcing import LatentLoss, StageSchedule
from framework.rollout.sampling import SamplingConfig

_MIXING_RNG_KEY = "latent_sft_mixing_rng"
_STAGE_KEY = "latent_sft_stage_in_effect"


class LatentSFT(Regime):
    """SFT through continuous thoughts, on Coconut's stage curriculum.

    Args:
        reasoner: a `latent`-mode reasoner; its `LatentConfig` sets the thoughts
            per step (c), `max_stage`, the step separator and the thought kind.
        task: answer and step checkers for validation.
        epochs_per_stage, steps_per_stage: the stage length, in epochs or in
            optimizer steps (exactly one, unless `curriculum=False`).
        mix_prob: probability that a training row draws a random stage instead.
        seed: seeds the generator of those draws (independent of the global `random`).
        curriculum: False trains at the final stage from the first step.
        optimizer: AdamW with linear warm-up, then cosine decay to zero over the run (as for `SFT`).
        eval_sampling: how validation generates (greedy by default).

    Training batches must carry their `examples` (`ReasoningDataModule`'s do).
    """

    default_optimizer = OptimizerConfig()

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None = None,
        *,
        epochs_per_stage: int | None = None,
        steps_per_stage: int | None = None,
        mix_prob: float = 0.0,
        curriculum: bool = True,
        seed: int = 0,
        optimizer: OptimizerConfig = default_optimizer,
        eval_sampling: SamplingConfig = SamplingConfig(),
    ) -> None:
        if reasoner.latent is None:
            raise ValueError(f"LatentSFT trains a 'latent'-mode reasoner; this one is in {reasoner.mode!r} mode")
        schedule = StageSchedule(reasoner.latent, epochs_per_stage, steps_per_stage, curriculum, mix_prob)
        super().__init__(reasoner, task, optimizer=optimizer, eval_sampling=eval_sampling)
        self.schedule = schedule
        self.objective = LatentLoss(reasoner)  # the remaining language steps, `</think>` and the answer
        self._stage_in_effect: int | None = None
        self._rng = random.Random(seed)  # stage mixing only; its state travels with checkpoints

    def _current_stage(self) -> int:
        return self.schedule.stage(self.trainer.current_epoch, self.trainer.global_step)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.objective(self.model, batch)

    # -- Lightning hooks ----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        train = getattr(getattr(self.trainer, "datamodule", None), "splits", {}).get("train")
        if train:
            self.schedule.check_examples(train)
        self.reasoner.stage = self._current_stage()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "examples" not in batch:
            if self.trainer.training:
                raise ValueError("LatentSFT needs training batches with their `examples` to tokenize at each stage")
            return batch
        if not self.trainer.training:
            return self.objective.prepare(batch)  # at the reasoner's stage
        stage = self._current_stage()
        return self.objective.prepare(batch, [self.schedule.row_stage(e, stage, self._rng) for e in batch["examples"]])

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        stage = self._current_stage()
        if self._stage_in_effect is not None and stage != self._stage_in_effect:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()  # Coconut starts every stage with a fresh optimizer
        self._stage_in_effect = stage
        self.reasoner.stage = stage
        self.log("train/stage", float(stage), batch_size=len(batch["examples"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[_MIXING_RNG_KEY] = self._rng.getstate()
        # Without it a resumed fit would not see a stage change on its first batch, nor clear the optimizer there.
        checkpoint[_STAGE_KEY] = self._stage_in_effect

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if _MIXING_RNG_KEY in checkpoint:
            self._rng.setstate(checkpoint[_MIXING_RNG_KEY])
        self._stage_in_effect = checkpoint.get(_STAGE_KEY)

    def on_validation_epoch_end(self) -> None:
        self.log("val/stage", float(self.reasoner.stage))
        super().on_validation_epoch_end()
