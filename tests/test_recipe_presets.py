"""Every preset of every recipe parses into its recipe's typed arguments (a typo fails here, not on a GPU)."""

from __future__ import annotations

import pytest
import yaml

from framework.errors import ConfigError
from recipes import backdoor, cli, elicitation, faithfulness, obfuscation, reasoning_modes, training_order
from recipes.cli import PRESETS, parse
from recipes.models import learning_rate

RECIPES = {"reasoning_modes": reasoning_modes, "elicitation": elicitation, "backdoor": backdoor,
           "obfuscation": obfuscation, "training_order": training_order, "faithfulness": faithfulness}
PRESET_FILES = sorted((recipe, path.stem) for recipe in RECIPES for path in (PRESETS / recipe).glob("*.yaml"))


def test_each_recipe_has_the_smoke_cpu_gpu_and_real_presets():
    for recipe in RECIPES:
        assert {"smoke", "cpu", "gpu", "real"} <= {preset for name, preset in PRESET_FILES if name == recipe}, recipe


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_real_preset_trains_the_pretrained_model_at_rates_for_fine_tuning(recipe):
    arguments = parse(RECIPES[recipe].main, recipe, ["--preset", "real"])
    model = arguments["model"]
    assert model.checkpoint == "smollm2-135m-instruct"
    # Every stage's rate as the recipe resolves it: at most 1e-4 for SFT and 1e-5 for preference and RL stages (the
    # presets raise TRL's defaults to move within a CPU budget), never a from-scratch rate (1e-3 and above).
    stages = [stage for stage in arguments.values() if hasattr(stage, "lr")]
    assert stages
    for stage in stages:
        objective = getattr(stage, "objective", "sft")
        assert learning_rate(model, stage.lr, from_scratch=1.0, objective=objective) <= (
            1e-4 if objective == "sft" else 1e-5), stage
        if hasattr(stage, "rl_lr"):
            assert learning_rate(model, stage.rl_lr, from_scratch=1.0, objective="rl") <= 1e-5, stage


@pytest.mark.parametrize(("recipe", "preset"), PRESET_FILES)
def test_preset_parses_into_the_recipes_arguments(recipe, preset):
    arguments = parse(RECIPES[recipe].main, recipe, ["--preset", preset])
    # Every preset value reached the arguments: the resolved config repeats the preset's own settings.
    settings = yaml.safe_load((PRESETS / recipe / f"{preset}.yaml").read_text())
    resolved = arguments["resolved_config"]
    for key, value in settings.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                assert resolved[key][inner] == inner_value, f"{recipe}/{preset}: {key}.{inner}"
        else:
            assert resolved[key] == value, f"{recipe}/{preset}: {key}"


def test_a_misspelled_field_is_an_error_in_a_preset_or_a_flag(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --train\.max_stepz 3"):
        parse(elicitation.main, "elicitation", ["--preset", "smoke", "--train.max_stepz", "3"])
    (tmp_path / "elicitation").mkdir()
    (tmp_path / "elicitation" / "typo.yaml").write_text("seeds: [0]\ntrain:\n  batch_size: 8\n  max_stepz: 3\n")
    monkeypatch.setattr(cli, "PRESETS", tmp_path)
    with pytest.raises(ConfigError, match=r"typo\.yaml:4: .*train\.max_stepz"):
        parse(elicitation.main, "elicitation", ["--preset", "typo"])
