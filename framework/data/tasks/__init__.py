"""Synthetic verifiable tasks and a registry to build them by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from framework.data.tasks.addition_chain import AdditionChain
from framework.data.tasks.base import Task
from framework.data.tasks.multiplication import Multiplication
from framework.data.tasks.prosqa import ProsQA
from framework.data.tasks.state_chain import StateChain
from framework.errors import ConfigError

__all__ = ["TASKS", "AdditionChain", "Multiplication", "ProsQA", "StateChain", "Task", "make_task"]

TASKS: dict[str, type] = {task.name: task for task in (Multiplication, AdditionChain, ProsQA, StateChain)}


def make_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, configured by `options` (its dataclass fields)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS[name]
    known = sorted(field.name for field in fields(task))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; known options: {', '.join(known)}"
        )
    return task(**options)
