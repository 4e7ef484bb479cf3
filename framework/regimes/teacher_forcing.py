"""Teacher-forced losses on demonstrations, for the regimes that imitate: SFT, LatentSFT and ExpertIteration.

Two objectives share one interface, so a regime that trains on whatever a
reasoner writes (ExpertIteration on its kept samples) picks the right one
from the reasoner and never branches on its format again:

- `TokenLoss`: a text-mode reasoner's sequences, right-padded, one causal-LM
  pass (`causal_lm_loss`).
- `LatentLoss`: Coconut's forward. Examples are tokenized at a curriculum
  stage, `<bot>`-aligned (`collate_latent`), and run through `latent_forward`,
  which feeds each thought's hidden state back into its slot, before
  `hidden_states_loss`. A plain teacher-forced pass would train on the
  `<latent>` embedding where evaluation feeds thoughts.

Both take `(model, batch)`, `batch(examples)` builds what they read from
plain examples, and `prepare(batch)` turns a `ReasoningDataModule` batch into
it. `StageSchedule` is Coconut's curriculum (which stage a step trains at,
stage mixing), and `latent_step_verdicts` judges a latent reasoner's written
steps as continuing the steps its thoughts replaced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from framework.data.masks import TRAIN_ON_COMPLETION, MaskStrategy
from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.data.collate import collate, collate_latent
from framework.models.latent import latent_forward
from framework.models.formats import LatentConfig
from framework.models.reasoner import Reasoner
from framework.regimes.loss import causal_lm_loss, hidden_states_loss


class TokenLoss:
    """Teacher-forced loss of a text-mode reasoner, weighted by a mask strategy over roles."""

    def __init__(self, reasoner: Reasoner, mask: MaskStrategy = TRAIN_ON_COMPLETION) -> None:
        self.reasoner = reasoner
        self.mask = mask

    def batch(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """`examples` in the reasoner's format, right-padded (`input_ids`, `attention_mask`, `roles`)."""
        return collate([self.reasoner.tokenize(example) for example in examples], self.reasoner.tokenizer.pad_token_id)

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A data module's batch is already in the reasoner's format."""
        return batch

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, loss_weights = self.mask.apply(batch["input_ids"], batch["roles"])
        return causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], labels, loss_weights)


class LatentLoss:
    """Teacher-forced loss of a latent reasoner through its continuous thoughts, at any curriculum stage.

    The thoughts go through the reasoner's projection (the module a regime
    registers as `projection`), when it has one.
    """

    def __init__(self, reasoner: Reasoner, mask: MaskStrategy = TRAIN_ON_COMPLETION) -> None:
        if reasoner.latent is None:
            raise ValueError(f"LatentLoss trains a 'latent'-mode reasoner; this one is in {reasoner.mode!r} mode")
        self.reasoner = reasoner
        self.mask = mask

    def batch(self, examples: Sequence[Example], stages: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """`examples` tokenized at their `stages` (default: the reasoner's stage), `<bot>`-aligned."""
        if stages is None:
            stages = [self.reasoner.stage] * len(examples)
        samples = [self.reasoner.tokenize(example, stage) for example, stage in zip(examples, stages)]
        return collate_latent(samples, self.reasoner.tokenizer.pad_token_id, self.reasoner.latent_start_id)

    def prepare(self, batch: dict[str, Any], stages: Sequence[int] | None = None) -> dict[str, Any]:
        """A data module's batch re-tokenized from its `examples` (its tensors are not in this stage's format)."""
        examples = batch["examples"]
        return {**self.batch(examples, stages), "examples": examples}

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, loss_weights = self.mask.apply(batch["input_ids"], batch["roles"])
        hidden = latent_forward(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            latent_token_id=self.reasoner.latent_token_id,
            projection=self.reasoner.projection,
            match_norm=self.reasoner.latent.match_norm,
        )
        return hidden_states_loss(model, hidden, labels, loss_weights)


def teacher_forcing(reasoner: Reasoner, mask: MaskStrategy = TRAIN_ON_COMPLETION) -> TokenLoss | LatentLoss:
    """The objective that imitates demonstrations in `reasoner`'s format."""
    return LatentLoss(reasoner, mask) if reasoner.latent is not None else TokenLoss(reasoner, mask)


@dataclass(frozen=True)
class StageSchedule:
    """Coconut's curriculum: the stage each optimizer step trains at, and stage mixing.

    Stages advance every `epochs_per_stage` epochs or every `steps_per_stage`
    optimizer steps, then stay at the final stage; `curriculum=False` trains
    at the final stage throughout. With probability `mix_prob` a row draws its
    own stage uniformly from 0 … its number of steps (stages past `max_stage`
    become the final one).
    """

    latent: LatentConfig
    epochs_per_stage: int | None = None
    steps_per_stage: int | None = None
    curriculum: bool = True
    mix_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.curriculum and (self.epochs_per_stage is None) == (self.steps_per_stage is None):
            raise ValueError(
                "give exactly one stage length, epochs_per_stage or steps_per_stage "
                f"(got epochs_per_stage={self.epochs_per_stage}, steps_per_stage={self.steps_per_stage})"
            )
        if not self.curriculum and (self.epochs_per_stage is not None or self.steps_per_stage is not None):
            raise ValueError("curriculum=False trains at the final stage only; epochs_per_stage/steps_per_stage must be None")
        for name, value in (("epochs_per_stage", self.epochs_per_stage), ("steps_per_stage", self.steps_per_stage)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")

    def stage(self, epoch: int, step: int) -> int:
        """The curriculum's stage after `epoch` epochs or `step` optimizer steps."""
        if not self.curriculum:
            return self.latent.final_stage
        if self.epochs_per_stage is not None:
            return min(epoch // self.epochs_per_stage, self.latent.final_stage)
        return min(step // self.steps_per_stage, self.latent.final_stage)

    def row_stage(self, example: Example, stage: int, rng: random.Random) -> int:
        """The stage one training row is tokenized at: `stage`, or a mixed draw from `rng`."""
        if self.mix_prob > 0 and rng.random() < self.mix_prob:
            drawn = rng.randint(0, len(example.steps))
            return drawn if drawn <= self.latent.max_stage else self.latent.final_stage
        return stage

    def check_examples(self, examples: Sequence[Example]) -> None:
        """Fail before training if the schedule needs what `examples` lack."""
        if not (self.curriculum or self.mix_prob > 0):
            return  # the final stage needs no steps
        for index, example in enumerate(examples):
            if example.trace and not example.steps:  # an empty trace (a weak policy's, say) has zero steps: fine
                raise ValueError(
                    f"training example {index} ({example.prompt[:40]!r}…) has a trace but no `steps`; the latent "
                    "curriculum replaces steps one stage at a time, so every trace must come split into Example.steps "
                    "(or use curriculum=False)"
                )
        longest = max(len(example.steps) for example in examples)
        if self.curriculum and self.latent.max_stage > longest:
            raise ValueError(
                f"the stage schedule does not fit the traces: max_stage={self.latent.max_stage} but the longest "
                f"training trace has {longest} steps; use max_stage <= {longest}"
            )


def latent_step_verdicts(task: Task, latent: LatentConfig, stage: int, example: Example, trace: str) -> list[bool]:
    """Judge the steps a latent reasoner wrote at `stage` as continuing the reference steps its thoughts replaced."""
    if not trace:
        return []
    replaced = example.steps if stage == latent.final_stage else example.steps[:stage]
    if not replaced:
        return task.check_steps(example, trace)
    if latent.step_separator is None:
        return []  # cannot splice the replaced steps in front: judge nothing rather than misjudge
    verdicts = task.check_steps(example, latent.step_separator.join([*replaced, trace]))
    return verdicts[len(replaced):]
