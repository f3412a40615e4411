"""Sibling attempts of one task start from byte-identical prompts: the sandbox shows every attempt's repository at
the same fixed path (/testbed), so the first observation never names the attempt's own worktree."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.runner import bwrap_available
from agent_selfevolve.models.base import Message, ModelError, ModelReply
from agent_selfevolve.tasks import Task


class FirstRequestFakeModel:
    """FAKE model: keeps each attempt's first request and ends the attempt."""

    name = "fake/first-request"

    def __init__(self, supports_tools: bool) -> None:
        self.supports_tools = supports_tools
        self.requests: list[str] = []

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        self.requests.append(json.dumps({"messages": messages, "tools": tools, "params": params}, sort_keys=True))
        raise ModelError("seen")


@pytest.mark.skipif(not bwrap_available(), reason="needs the bubblewrap sandbox")
@pytest.mark.parametrize("setup", ["default", "small", "selfcheck"])
def test_sibling_attempts_get_byte_identical_first_prompts(demo_task: Task, setup: str) -> None:
    model = FirstRequestFakeModel(supports_tools=setup == "default")
    ids = ["run:sibling:aaaa11", "run:sibling:bbbb22"]
    for attempt_id in ids:
        traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id=attempt_id), agent=setup,
                           evaluate="none")
        assert traj.status == "model_error"
    assert len(model.requests) == 2
    assert model.requests[0] == model.requests[1]
    assert "/testbed" in model.requests[0]
    assert not any(a in r for a in ids for r in model.requests)  # the worktree is .../worktrees/<attempt id>


def test_unsandboxed_attempts_name_their_worktree_so_the_dataset_repair_stays(demo_task: Task) -> None:
    """Without bubblewrap commands run in the worktree itself, whose path holds the attempt id (in the first
    observation and in tool output such as tracebacks): `train.dataset.seen_from` is still what pairs siblings."""
    from agent_selfevolve.train.dataset import seen_from
    from agent_selfevolve.trajectory import Trajectory

    model = FirstRequestFakeModel(supports_tools=True)
    ids = ["run:loose:aaaa11", "run:loose:bbbb22"]
    for attempt_id in ids:
        run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id=attempt_id),
                    env_options={"isolate": False}, evaluate="none")
    assert model.requests[0] != model.requests[1] and ids[0] in model.requests[0]
    f, s = (Trajectory(attempt_id=a, task_id=demo_task.instance_id, messages=json.loads(r)["messages"])
            for a, r in zip(ids, model.requests, strict=True))
    assert seen_from(f, s) == s.messages
