"""Coconut's curriculum: SFT of a latent reasoner whose thoughts replace its language steps stage by stage.

At stage 0 the reasoner learns the full chain of thought; at stage
`1 <= s <= max_stage` the first `s` steps are replaced by `s * c` continuous
thoughts; at the final stage `max_stage + 1` no language step is left (see
`framework.models.latent` for the format). The loss covers only what the
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
- Validation, test and `reasoner.generate` use the stage of the last training
  batch (this module keeps the reasoner's `stage` in step), so validation
  accuracy follows the curriculum as Coconut's does and `val/stage` says which
  stage it measured; once the curriculum is done that is the final stage, a
  fresh reasoner's default for inference.
- "Pause as thought" is a reasoner option (`LatentConfig(thought="pause")`):
  the same curriculum with learned `<pause>` embeddings in the slots.
- A `LatentProjection` owned by the reasoner is registered here, so Lightning
  moves, optimises and checkpoints it; `Reasoner.save_pretrained` writes it
  beside the Hugging Face files.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from framework.data.collate import collate_latent
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.latent import latent_forward
from framework.models.reasoner import Reasoner
from framework.regimes.loss import hidden_states_loss
from framework.regimes.sft import SFT

_MIXING_RNG_KEY = "latent_sft_mixing_rng"


class LatentSFT(SFT):
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
        **sft_options: `lr`, `weight_decay`, `betas`, `warmup_steps`, `sampling`, as for `SFT`.

    Training batches must carry their `examples` (`ReasoningDataModule`'s do).
    """

    trains_latent_reasoners = True

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
        **sft_options: Any,
    ) -> None:
        if reasoner.latent is None:
            raise ValueError(f"LatentSFT trains a 'latent'-mode reasoner; this one is in {reasoner.mode!r} mode")
        if "mask" in sft_options:
            raise ValueError("LatentSFT always trains on the remaining language steps and the answer; drop mask=")
        if curriculum and (epochs_per_stage is None) == (steps_per_stage is None):
            raise ValueError(
                "give exactly one stage length, epochs_per_stage or steps_per_stage "
                f"(got epochs_per_stage={epochs_per_stage}, steps_per_stage={steps_per_stage})"
            )
        if not curriculum and (epochs_per_stage is not None or steps_per_stage is not None):
            raise ValueError("curriculum=False trains at the final stage only; epochs_per_stage/steps_per_stage must be None")
        for name, value in (("epochs_per_stage", epochs_per_stage), ("steps_per_stage", steps_per_stage)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {mix_prob}")
        super().__init__(reasoner, task, mask="train_on_completion", **sft_options)
        self.latent = reasoner.latent
        self.projection = reasoner.projection  # registered: moved, optimised and checkpointed with the model
        self._stage_in_effect: int | None = None
        self._rng = random.Random(seed)  # stage mixing only; its state travels with checkpoints

    # -- the schedule -------------------------------------------------------------------------

    def scheduled_stage(self, epoch: int, step: int) -> int:
        """The curriculum's stage after `epoch` epochs or `step` optimizer steps."""
        if not self.hparams.curriculum:
            return self.latent.final_stage
        if self.hparams.epochs_per_stage is not None:
            return min(epoch // self.hparams.epochs_per_stage, self.latent.final_stage)
        return min(step // self.hparams.steps_per_stage, self.latent.final_stage)

    def _current_stage(self) -> int:
        return self.scheduled_stage(self.trainer.current_epoch, self.trainer.global_step)

    def _row_stage(self, example: Example, stage: int) -> int:
        if self.hparams.mix_prob > 0 and self._rng.random() < self.hparams.mix_prob:
            drawn = self._rng.randint(0, len(example.steps))
            return drawn if drawn <= self.latent.max_stage else self.latent.final_stage
        return stage

    def check_examples(self, examples: Sequence[Example]) -> None:
        """Fail before training if the schedule needs what `examples` lack."""
        if not (self.hparams.curriculum or self.hparams.mix_prob > 0):
            return  # the final stage needs no steps
        for index, example in enumerate(examples):
            if example.trace and not example.steps:  # an empty trace (a weak policy's, say) has zero steps: fine
                raise ValueError(
                    f"training example {index} ({example.prompt[:40]!r}…) has a trace but no `steps`; the latent "
                    "curriculum replaces steps one stage at a time, so every trace must come split into Example.steps "
                    "(or use curriculum=False)"
                )
        longest = max(len(example.steps) for example in examples)
        if self.hparams.curriculum and self.latent.max_stage > longest:
            raise ValueError(
                f"the stage schedule does not fit the traces: max_stage={self.latent.max_stage} but the longest "
                f"training trace has {longest} steps; use max_stage <= {longest}"
            )

    # -- batches ------------------------------------------------------------------------------

    def staged_batch(self, examples: Sequence[Example], stages: Sequence[int]) -> dict[str, torch.Tensor]:
        """`examples` tokenized at their `stages`, `<bot>`-aligned (`input_ids`, `attention_mask`, `roles`)."""
        samples = [self.reasoner.tokenize(example, stage) for example, stage in zip(examples, stages)]
        return collate_latent(samples, self.reasoner.tokenizer.pad_token_id, self.reasoner.latent_start_id)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels, loss_weights = self.mask.apply(batch["input_ids"], batch["roles"])
        hidden = latent_forward(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            latent_token_id=self.reasoner.latent_token_id,
            projection=self.projection,
        )
        return hidden_states_loss(self.model, hidden, labels, loss_weights)

    # -- Lightning hooks ----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        train = getattr(getattr(self.trainer, "datamodule", None), "splits", {}).get("train")
        if train:
            self.check_examples(train)
        self.reasoner.stage = self._current_stage()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "examples" not in batch:
            if self.trainer.training:
                raise ValueError("LatentSFT needs training batches with their `examples` to tokenize at each stage")
            return batch
        examples = batch["examples"]
        if self.trainer.training:
            stage = self._current_stage()
            stages = [self._row_stage(example, stage) for example in examples]
        else:
            stages = [self.reasoner.stage] * len(examples)
        return {**self.staged_batch(examples, stages), "examples": examples}

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if _MIXING_RNG_KEY in checkpoint:
            self._rng.setstate(checkpoint[_MIXING_RNG_KEY])

    def on_validation_epoch_end(self) -> None:
        self.log("val/stage", float(self.reasoner.stage))
        super().on_validation_epoch_end()

    def _step_verdicts(self, example: Example, trace: str) -> list[bool]:
        """Judge the written steps as continuing the reference steps that the thoughts replaced."""
        if not trace:
            return []
        stage = self.reasoner.stage
        replaced = example.steps if stage == self.latent.final_stage else example.steps[:stage]
        if not replaced:
            return self.task.check_steps(example, trace)
        if self.latent.step_separator is None:
            return []  # cannot splice the replaced steps in front: judge nothing rather than misjudge
        verdicts = self.task.check_steps(example, self.latent.step_separator.join([*replaced, trace]))
        return verdicts[len(replaced):]
