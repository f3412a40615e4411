"""Environments: where an attempt acts. `make_environment` picks the one a task needs."""

from __future__ import annotations

from typing import Any

from agent_selfevolve.envs.base import Environment, Evaluation, Observation, ToolCall
from agent_selfevolve.tasks import Task

__all__ = ["Environment", "Evaluation", "Observation", "ToolCall", "make_environment"]


def make_environment(task: Task, name: str, **options: Any) -> Environment:
    """A fresh environment for one attempt named `name` (a resumed attempt passes the same name)."""
    if task.kind == "web":
        from agent_selfevolve.browsergym_tasks import is_browsergym_task

        if is_browsergym_task(task):
            from agent_selfevolve.envs.browsergym_env import BrowserGymEnvironment

            return BrowserGymEnvironment(task, name, **options)
        from agent_selfevolve.envs.web import BrowserEnvironment

        return BrowserEnvironment(task, name, **options)
    from agent_selfevolve.envs.coding import CodingEnvironment

    return CodingEnvironment(task, name, **options)
