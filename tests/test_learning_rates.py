"""A recipe pointed at a checkpoint trains at a pretrained rate unless one is set; a tiny model keeps its own."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from framework.errors import ConfigError
from recipes.cli import parse, run
from recipes.models import (
    PRETRAINED_LORA_LR,
    PRETRAINED_LR,
    PRETRAINED_RL_LORA_LR,
    PRETRAINED_RL_LR,
    ModelConfig,
    StageConfig,
    learning_rate,
)

SCRATCH, CHECKPOINT = ModelConfig(), ModelConfig(checkpoint="smollm2-135m-instruct")


def test_a_checkpoint_gets_a_pretrained_learning_rate_unless_one_is_set():
    assert learning_rate(SCRATCH, None, from_scratch=3e-3) == 3e-3
    assert learning_rate(CHECKPOINT, None, from_scratch=3e-3) == PRETRAINED_LR
    assert 1e-5 <= PRETRAINED_LR <= 5e-5
    lora = dataclasses.replace(CHECKPOINT, lora_rank=8)
    assert learning_rate(lora, None, from_scratch=3e-3) == PRETRAINED_LORA_LR
    assert learning_rate(CHECKPOINT, 1e-3, from_scratch=3e-3) == 1e-3  # a rate that is set wins
    # DPO and GRPO move a pretrained policy more gently than SFT (TRL's defaults: 1e-6 against 2e-5).
    assert learning_rate(CHECKPOINT, None, from_scratch=3e-4, objective="rl") == PRETRAINED_RL_LR < PRETRAINED_LR
    assert learning_rate(lora, None, from_scratch=3e-4, objective="rl") == PRETRAINED_RL_LORA_LR
    assert learning_rate(SCRATCH, None, from_scratch=3e-4, objective="rl") == 3e-4
    with pytest.raises(ConfigError, match="grpo.lr must be positive, got 0"):
        learning_rate(CHECKPOINT, 0.0, from_scratch=3e-4, name="grpo.lr")


# Every stage's rate from scratch in the smoke and cpu presets.
SCRATCH_RATES = {
    "backdoor": {"base": 1e-3, "plant": 3e-3, "persistence": 1e-3, "persistence.rl_lr": 3e-4},
    "obfuscation": {"base": 3e-3, "controls": 1e-3, "grpo": 3e-4},
    "training_order": {"base": 3e-3, "controls": 1e-3, "preference": 1e-4, "rl": 3e-4},
}
RL_STAGES = {"persistence.rl_lr", "grpo", "preference", "rl"}  # DPO and GRPO


def _rates(recipe: str, preset: str, flags: list[str]) -> dict[str, float]:
    """Each stage's resolved rate, as the recipe's `main` would train at, from its command line."""
    arguments = parse(importlib.import_module(f"recipes.{recipe}").main, recipe, ["--preset", preset, *flags])
    rates = {}
    for name, stage in arguments.items():
        if isinstance(stage, StageConfig):
            resolved = stage.resolved(arguments["model"], name)
            rates[name] = resolved.lr
            if hasattr(resolved, "rl_lr"):
                rates[f"{name}.rl_lr"] = resolved.rl_lr
    return rates


@pytest.mark.parametrize("recipe", sorted(SCRATCH_RATES))
@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_no_preset_hands_a_checkpoint_a_from_scratch_rate(recipe, preset):
    assert _rates(recipe, preset, []) == SCRATCH_RATES[recipe]
    pretrained = _rates(recipe, preset, ["--model.checkpoint", "smollm2-135m-instruct"])
    assert pretrained == {name: PRETRAINED_RL_LR if name in RL_STAGES else PRETRAINED_LR for name in pretrained}
    assert pretrained.keys() == SCRATCH_RATES[recipe].keys()
    stage = next(iter(SCRATCH_RATES[recipe]))
    assert _rates(recipe, preset, ["--model.checkpoint", "smollm2-135m-instruct", f"--{stage}.lr", "5e-5"])[stage] == 5e-5


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_the_elicitation_presets_leave_every_rate_to_the_model(preset):
    arguments = parse(importlib.import_module("recipes.elicitation").main, "elicitation", ["--preset", preset])
    assert (arguments["train"].lr, arguments["elicit"].lr, arguments["elicit"].rl_lr) == (None, None, None)


@pytest.mark.parametrize(("recipe", "stage"), [("backdoor", "persistence.rl_lr"), ("obfuscation", "grpo.lr"),
                                               ("training_order", "preference.lr"), ("training_order", "controls.lr")])
def test_a_rate_that_is_not_positive_fails_before_anything_is_written(recipe, stage, tmp_path):
    main = importlib.import_module(f"recipes.{recipe}").main
    with pytest.raises(SystemExit, match=rf"{stage} must be positive, got 0"):
        run(main, recipe, ["--preset", "smoke", "--out", str(tmp_path), f"--{stage}", "0"])
    assert not any(tmp_path.iterdir())
