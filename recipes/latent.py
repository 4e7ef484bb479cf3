"""The latent reasoner's settings every recipe shares: thoughts per step and Coconut's curriculum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.tasks import Task
from framework.errors import ConfigError
from framework.models import LatentConfig, Reasoner


@dataclass
class LatentCurriculum:
    """Coconut's c (thoughts per replaced step), its max latent stage and uniform_prob (`mix_prob`)."""

    thoughts_per_step: int = 1
    max_stage: int = 2  # stages 0 … max_stage, then the final stage with max_stage·c thoughts and no language
    mix_prob: float = 0.0  # probability that a row trains at another stage (Coconut's uniform_prob)
    # Feed thoughts back at the input embeddings' mean norm (LatentConfig.match_norm). Continuous thoughts only:
    # the pause_as_thought arm feeds nothing back, so it ignores this.
    match_norm: bool = False

    def steps_per_stage(self, max_steps: int) -> int:
        """Stages 0 … max_stage and the final one share the budget; the final stage also gets the remainder."""
        return max_steps // (self.max_stage + 2)

    def check(self, max_steps: int, flag: str = "train.max_steps") -> None:
        """Every stage, the final one included, must get at least one training step (`flag` names the budget)."""
        if self.steps_per_stage(max_steps) < 1:
            raise ConfigError(f"{flag}={max_steps} cannot hold the latent curriculum's {self.max_stage + 2} "
                              f"stages (latent.max_stage={self.max_stage}, plus stage 0 and the final stage)")

    def reasoner(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                 thought: Literal["continuous", "pause"] = "continuous", rendering: str = "completion") -> Reasoner:
        """A latent reasoner over `model` whose thoughts replace `task`'s steps under this curriculum."""
        config = LatentConfig(thoughts_per_step=self.thoughts_per_step, max_stage=self.max_stage,
                              step_separator=task.step_separator, thought=thought,
                              match_norm=self.match_norm and thought == "continuous")
        return Reasoner(model, tokenizer, "latent", latent=config, rendering=rendering)
