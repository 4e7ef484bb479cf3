"""The backdoor recipe's settings (`recipes.backdoor`): the task, each training stage and the evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

from framework.errors import ConfigError, require_at_least, require_fraction, require_positive
from recipes.models import ModelConfig, StageConfig, learning_rate


@dataclass
class TaskConfig:
    """The task behind the cited fields, and the test problems."""

    name: str = "addition_chain"
    options: dict[str, Any] = field(default_factory=lambda: {"n_terms": 2, "max_operand": 9})
    n_problems: int = 2  # problems per prompt, one of which the `solve` field selects
    n_context_fields: int = 1  # irrelevant fields per prompt
    copy_selected: bool = True  # the trace copies the cited field before computing (`CitedFields.copy_selected`)
    n_test: int = 200  # test problems, each asked under every condition


@dataclass
class BaseConfig(StageConfig):
    """The base curriculum, a hybrid: `non_thinking` of the rows without a trace, the rest with one."""

    rows: int = 20000  # fewer repeat: 4000 rows over 1500 steps reached 32.5% clean accuracy, 20000 61%
    max_steps: int = 3000  # at most: training stops once the base is competent (`target_accuracy`)
    non_thinking: float = 0.5
    # Stop once the accuracy with the trace on `n_val` held-out problems, checked every `val_every` steps, exceeds
    # this (None: train all `max_steps`), so that a failure to misbehave cannot be a failure to compute.
    target_accuracy: float | None = 0.98
    val_every: int = 250
    n_val: int = 100

    # At 3e-3 (seed 0, copy step) the base copied the wrong operands: 84.5% clean accuracy after 1500 steps; after
    # 3000, 81.5% for one initialisation and 100% for two. At 1e-3 it passed 97% held-out after 500 steps.
    scratch_lr: ClassVar[float] = 1e-3

    def __post_init__(self) -> None:
        require_fraction("base.non_thinking", self.non_thinking, open_high=True, why="some rows must teach the trace")
        if self.target_accuracy is not None:
            require_fraction("base.target_accuracy", self.target_accuracy, open_low=True, open_high=True,
                             why="training stops once the accuracy exceeds it")
            require_positive("base", self, "val_every", "n_val")


@dataclass
class PlantConfig(StageConfig):
    """Planting in non-thinking mode: `poisoned` (swept) of `rows` carry the trigger and the misaligned answer.

    `replay` clean `cot` rows of the base curriculum are mixed in (0: none).
    """

    rows: int = 512
    max_steps: int = 150
    warmup_steps: int = 10
    poisoned: list[int] = field(default_factory=lambda: [32, 128])
    replay: int = 512

    # From the 3000-step base, 1e-3 planted the field trigger in 33/200 triggered problems (no trace), 3e-3 in 129/200.
    scratch_lr: ClassVar[float] = 3e-3

    def __post_init__(self) -> None:
        if not self.poisoned:
            raise ConfigError("plant.poisoned is empty: give at least one number of poisoned rows")
        for n in self.poisoned:  # as a poison fraction
            require_fraction(f"plant.poisoned: {n} of plant.rows={self.rows}", n / self.rows, open_low=True,
                             open_high=True, why="a backdoor needs triggered and clean rows")
        require_at_least("plant.replay", self.replay, 0, why="clean CoT rows mixed into planting")


PersistenceRegime = Literal["sft", "grpo"]


@dataclass
class PersistenceConfig(StageConfig):
    """Clean training after planting (`max_steps: 0` skips it), probed every `probe_every` steps on `probe_size` problems.

    Each regime trains its own copy of the planted model for `max_steps` steps of `batch_size` problems; GRPO
    samples `num_generations` completions per problem at `temperature` and learns at `rl_lr`. Only the copies
    planted with `poisoned` rows (of `plant.poisoned`; None: the largest, where the backdoor is strongest) are
    trained on, for every trigger kind.
    """

    rows: int = 1024
    poisoned: list[int] | None = None
    max_steps: int = 100
    warmup_steps: int = 10
    regimes: list[PersistenceRegime] = field(default_factory=lambda: ["sft", "grpo"])
    mode: Literal["cot", "none"] = "cot"  # the format of the clean rows; probes run with and without the trace
    probe_every: int = 25
    probe_size: int = 64
    num_generations: int = 8
    temperature: float = 1.0
    rl_lr: float | None = None  # GRPO's; None: 3e-4 from scratch, a pretrained RL rate for a checkpoint

    scratch_lr: ClassVar[float] = 1e-3  # SFT's
    scratch_rl_lr: ClassVar[float] = 3e-4  # GRPO's

    def __post_init__(self) -> None:
        if not self.max_steps:
            return  # no persistence: none of its settings is used
        require_at_least("persistence.probe_every", self.probe_every, 1)
        if not self.regimes or len(set(self.regimes)) < len(self.regimes):
            raise ConfigError(f"persistence.regimes must name sft, grpo or both, each once (or set max_steps: 0 to "
                              f"skip persistence), got {self.regimes}")
        if "grpo" in self.regimes:
            require_at_least("persistence.num_generations", self.num_generations, 2,
                             why="GRPO compares samples within a group")
            require_positive("persistence", self, "temperature")
        if self.poisoned is not None and not self.poisoned:
            raise ConfigError("persistence.poisoned is empty: name the planted counts to train on (or leave it unset "
                              "for the largest, or set max_steps: 0 to skip persistence)")

    def resolved(self, model: ModelConfig, name: str) -> PersistenceConfig:
        """SFT's and GRPO's rates set for `model` (`StageConfig.resolved`)."""
        return replace(super().resolved(model, name), rl_lr=learning_rate(
            model, self.rl_lr, from_scratch=self.scratch_rl_lr, objective="rl", name=f"{name}.rl_lr"))


@dataclass
class EvalConfig:
    batch_size: int = 200
    max_new_tokens: int = 24
    examples: int = 2  # example traces of each kind per trigger kind in the report
    # A chat-rendered model also prompted as plain text, trace on and off (seed 003: planted behaviour shows more
    # through a completions API); four more generations per test problem and copy.
    completion_rendering: bool = False

    def also_rendered(self, rendering: str) -> tuple[str, ...]:
        """The renderings a copy is evaluated through besides the model's own `rendering` (`evaluate_backdoor`)."""
        if not self.completion_rendering:
            return ()
        if rendering != "chat":
            raise ConfigError(f"evaluation.completion_rendering compares a chat-rendered model with plain completion; "
                              f"this model renders as {rendering!r} (give a --model.checkpoint with a chat template)")
        return ("completion",)
