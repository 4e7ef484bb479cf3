"""What every regime shares: the reasoner it trains, one optimiser configuration, and generation-based evaluation.

Regimes differ in how they compute a loss (teacher forcing, preferences,
sampled rollouts); they should not differ in how AdamW is set up, which
parameters decay, or how validation generates and scores answers. Those live
here once, in `Regime`, and each regime subclasses it directly (no regime
derives from another), declaring only its own defaults:

- `OptimizerConfig`: AdamW, the warm-up and schedule, gradient clipping. Each
  regime's constructor takes `optimizer=` with its own default (its
  `default_optimizer`); change a field with
  `dataclasses.replace(GRPO.default_optimizer, lr=1e-5)`.
- Parameter groups: only the model's matrices decay; norms, biases and a
  latent projection (which starts as the identity and must not be pulled
  towards the zero map) do not.
- Evaluation: `validation_step`/`test_step` generate every example with the
  reasoner and score it with the task's checkers (`GenerationEvaluation`);
  a regime with a teacher-forced `loss` also logs it as `{stage}/loss`. A
  latent reasoner's written steps are judged as continuing those its
  thoughts replaced.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import nn
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from framework.data.sample import Example
from framework.data.tasks.base import Task
from framework.models.reasoner import Reasoner
from framework.regimes.evaluation import GenerationEvaluation
from framework.regimes.teacher_forcing import latent_step_verdicts
from framework.rollout.sampling import SamplingConfig

Schedule = Literal["cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule: one set of fields for every regime.

    The field defaults are SFT's; a regime's own are its `default_optimizer`.

    Args:
        lr: the peak learning rate.
        betas: AdamW's moment decay rates.
        weight_decay: decoupled decay of the model's matrices (never of norms, biases or a latent projection).
        warmup_steps: linear warm-up from zero over this many optimizer steps (`cosine` caps it at half the run).
        max_grad_norm: clip the global gradient norm to this before each step; None does not clip.
        schedule: after the warm-up, `cosine` decay to zero at the end of the run, or a `constant` rate.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float | None = None
    schedule: Schedule = "cosine"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {list(SCHEDULES)}")


# Regimes keep it among their hyperparameters: let `torch.load(weights_only=True)` (Lightning's resume) read it.
torch.serialization.add_safe_globals([OptimizerConfig])


# AdamW's single-kernel implementation, measured on CPU too (issue 16: 0.03 s against 0.21 s for the for-loop and
# 0.18 s for foreach, one step of a 21M-parameter Llama, 1 thread).
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def adamw(groups: list[dict[str, Any]], *, lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with its fastest implementation for where the parameters are: `fused` on CUDA and CPU, else `foreach`.

    torch defaults to the per-parameter for-loop on CPU, which took a fifth of
    an SFT step there. The parameters' device is only known once Lightning has
    moved the module, so the choice is made here, at `configure_optimizers`
    time. All three implementations compute the same update, up to rounding
    (`tests/test_regime_base.py`).
    """
    params = [p for group in groups for p in group["params"]]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None, foreach=None if fused else True)


class Regime(L.LightningModule):
    """The base of every regime: it registers the reasoner's trainable modules, configures AdamW from an
    `OptimizerConfig`, and evaluates by generating answers.

    Subclasses pass their constructor's `optimizer` and `eval_sampling` on and
    define `loss(batch)` (teacher forcing: then the default `training_step`
    trains on it) or their own `training_step`. All constructor arguments are
    saved as hyperparameters except the reasoner, the task, `module` and the
    subclass's `runtime_arguments` (objects, not configuration).

    Args:
        reasoner: the model, its tokenizer and format; validation generates with it.
        task: its checkers score validation (exact match with the reference answer without one).
        optimizer: AdamW, its schedule and gradient clipping.
        eval_sampling: how validation and test generate.
        module: every trainable parameter, registered as `self.model` (a policy's module); by default the
            reasoner's model, with its latent projection registered beside it as `self.projection`.
    """

    default_optimizer: ClassVar[OptimizerConfig] = OptimizerConfig()
    runtime_arguments: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        reasoner: Reasoner,
        task: Task | None,
        *,
        optimizer: OptimizerConfig,
        eval_sampling: SamplingConfig,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(optimizer, OptimizerConfig):
            raise TypeError(f"optimizer must be an OptimizerConfig, got {type(optimizer).__name__}")
        # Collects the arguments of every constructor up the chain (Lightning walks the frames).
        self.save_hyperparameters(ignore=["reasoner", "task", "module", *self.runtime_arguments])
        self.reasoner = reasoner
        self.task = task
        self.optimizer_config = optimizer
        self.eval_sampling = eval_sampling
        # Registered, so Lightning moves, wraps, optimises and checkpoints them.
        self.model = reasoner.model if module is None else module
        if module is None and reasoner.projection is not None:
            self.projection = reasoner.projection
        self.evaluation = GenerationEvaluation(task)  # shared by validation and test; reset after each
        self._last_step_end: float | None = None

    # -- teacher-forced training --------------------------------------------------------------

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The teacher-forced loss of a batch of references; regimes that train on one define it."""
        raise NotImplementedError(f"{type(self).__name__} has no teacher-forced loss")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One step on `loss(batch)`, logging it and the tokens per second since the previous step."""
        loss = self.loss(batch)
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        now = time.perf_counter()
        if self._last_step_end is not None:
            tokens = batch["attention_mask"].sum()
            self.log("train/tokens_per_s", tokens / (now - self._last_step_end), batch_size=batch_size)
        self._last_step_end = now
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_step_end = None  # time between epochs is not training throughput

    def on_validation_end(self) -> None:
        self._last_step_end = None  # nor is time spent validating

    # -- the optimizer ------------------------------------------------------------------------

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW's groups: the model's matrices decay; norms, biases, a latent projection and any other trainable
        module a subclass registers do not (a projection starts as the identity, not to be pulled to zero)."""
        projection = self.reasoner.projection
        kept = {id(p) for p in projection.parameters()} if projection is not None else set()
        matrices = {id(p) for p in self.model.parameters() if p.ndim >= 2 and id(p) not in kept}
        decay, no_decay = [], []
        for parameter in self.parameters():  # the model, and any trainable module a subclass registers
            if parameter.requires_grad:
                (decay if id(parameter) in matrices else no_decay).append(parameter)
        weight_decay = self.optimizer_config.weight_decay
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def on_train_start(self) -> None:
        # `from_pretrained` returns a model in eval mode and Lightning keeps a module's mode: a loaded checkpoint
        # would otherwise train without its dropout.
        self.reasoner.model.train()

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.optimizer_config
        optimizer = adamw(self.parameter_groups(), lr=config.lr, betas=config.betas)
        if config.schedule == "constant":
            schedule = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
        else:
            total_steps = int(self.trainer.estimated_stepping_batches)
            schedule = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, total_steps // 2), total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """`max_grad_norm` clips here; a Trainer's `gradient_clip_val` still works when the config leaves it None."""
        if self.optimizer_config.max_grad_norm is None:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if gradient_clip_val is not None:
            raise ValueError(
                f"gradient clipping is set twice: the Trainer's gradient_clip_val={gradient_clip_val} and "
                f"OptimizerConfig.max_grad_norm={self.optimizer_config.max_grad_norm}; keep one"
            )
        self.clip_to_max_grad_norm(optimizer)

    def clip_to_max_grad_norm(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradients' global norm to `max_grad_norm` (if set); manual-optimisation regimes call it."""
        if self.optimizer_config.max_grad_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.optimizer_config.max_grad_norm, gradient_clip_algorithm="norm"
            )

    # -- evaluation ---------------------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Teacher-forced loss, then generate every example and score it with the task's checkers."""
        examples = batch["examples"]
        self.log(f"{stage}/loss", self.loss(batch), batch_size=len(examples), sync_dist=True)
        self.score_generations(examples)

    def score_generations(self, examples: Sequence[Example]) -> None:
        """Generate an answer for every example and add it to this evaluation's accuracy and step validity."""
        self.evaluation.update(self.reasoner, examples, self.eval_sampling, step_verdicts=self._step_verdicts)

    def _log_evaluation(self, stage: str) -> None:
        self.log_dict(self.evaluation.compute(stage))
        self.evaluation.reset()

    def _step_verdicts(self, example: Example, trace: str) -> list[bool]:
        """Validity of each generated step, by the task's step checker (a latent reasoner's written steps continue
        the ones its thoughts replaced at its current stage)."""
        if self.reasoner.latent is not None:
            return latent_step_verdicts(self.task, self.reasoner.latent, self.reasoner.stage, example, trace)
        return self.task.check_steps(example, trace)
