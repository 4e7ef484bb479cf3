"""The command line every recipe shares: a typed `main` plus YAML presets.

Precedence, lowest first: `main`'s defaults, the preset (`--preset`, default
`cpu`), a `--config` file, then individual flags (`--train.max_steps 50`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from framework.errors import ConfigError

PRESETS = Path(__file__).parent / "presets"


def preset_path(recipe: str, preset: str) -> Path:
    path = PRESETS / recipe / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (PRESETS / recipe).glob("*.yaml"))
        raise ConfigError(f"--preset {preset}: unknown for recipe {recipe!r}; expected one of {known}")
    return path


def _preset_from(argv: Sequence[str], default: str) -> str:
    """The preset named in `argv`, the last one if several are (as the parser reads any repeated flag)."""
    preset = default
    for index, argument in enumerate(argv):
        if argument == "--preset" and index + 1 < len(argv):
            preset = argv[index + 1]
        elif argument.startswith("--preset="):
            preset = argument.split("=", 1)[1]
    return preset


def parse(
    main: Callable[..., Any], recipe: str, argv: Sequence[str] | None = None, default_preset: str = "cpu"
) -> dict[str, Any]:
    """`main`'s typed arguments from `argv` over a preset, with `resolved_config`: the whole configuration as YAML data."""
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = _preset_from(argv, default_preset)
    parser = ArgumentParser(prog=f"python -m recipes.{recipe}", description=(main.__doc__ or "").strip().splitlines()[0],
                            exit_on_error=False)
    parser.add_argument("--preset", default=default_preset, help=f"settings to start from: one of {sorted(p.stem for p in (PRESETS / recipe).glob('*.yaml'))}")
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of settings (overrides the preset)")
    parser.add_function_arguments(main, as_group=False, skip={"resolved_config"})
    path = preset_path(recipe, preset)
    settings = yaml.safe_load(path.read_text())
    try:
        parser.set_defaults(settings)
    except KeyError as error:  # jsonargparse names the key alone; say in which file and on which line
        line = _line_of(path, _unknown_key(settings, set(parser.get_defaults().keys())))
        raise ConfigError(f"{path}:{line}: {error.args[0]}") from error
    try:
        config = parser.parse_args(argv)
    except ArgumentError as error:  # jsonargparse's message spans lines (key, then reason): one line here
        raise ConfigError(" ".join(str(error).split())) from error
    resolved = yaml.safe_load(parser.dump(config, skip_unset=False))
    arguments = parser.instantiate(config).as_dict()
    for meta in ("preset", "config", "__path__"):
        arguments.pop(meta, None)
    return {**arguments, "resolved_config": resolved}


def _unknown_key(settings: dict[str, Any], known: set[str], prefix: str = "") -> str:
    """The first dotted key of `settings` that is not in `known` (the parser's dotted keys)."""
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if dotted in known:
            continue
        return _unknown_key(value, known, f"{dotted}.") if isinstance(value, dict) and value else dotted
    return ""


def _line_of(path: Path, dotted: str) -> int:
    """The 1-based line of a dotted key in a YAML file (as far down as the key is found)."""
    node, line = yaml.compose(path.read_text()), 1
    for part in dotted.split("."):
        found = [(k, v) for k, v in node.value if k.value == part] if isinstance(node, yaml.MappingNode) else []
        if not found:
            break
        key, node = found[0]
        line = key.start_mark.line + 1
    return line


def config_of(main: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """`main`'s settings as YAML-ready data from its `arguments` (its `locals()`): for a call that bypassed the CLI,
    which passes what it resolved as `resolved_config` instead."""
    names = [name for name in inspect.signature(main).parameters if name != "resolved_config"]
    return {name: asdict(arguments[name]) if is_dataclass(arguments[name]) else arguments[name] for name in names}


def run(main: Callable[..., Any], recipe: str, argv: Sequence[str] | None = None, default_preset: str = "cpu") -> Any:
    """Parse `argv` into `main`'s typed arguments and call it with the resolved config.

    A `ConfigError` (a bad flag, name or preset line) or a missing file exits
    with its message in one line; anything else is a bug and keeps its traceback.
    """
    try:
        return main(**parse(main, recipe, argv, default_preset))
    except (ConfigError, FileNotFoundError) as error:  # a missing file is a path the user gave
        raise SystemExit(f"python -m recipes.{recipe}: error: {error}") from None
