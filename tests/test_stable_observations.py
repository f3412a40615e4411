"""Sibling attempts of one task start from byte-identical prompts: every attempt is shown its repository at the same
fixed path (/testbed), by the sandbox's mount or, unsandboxed, by the runner's view of the worktree, so no
observation names the attempt's own worktree and the dataset pairs siblings as recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.runner import bwrap_available
from agent_selfevolve.models.base import Message, ModelError, ModelReply
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
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


@pytest.mark.parametrize("setup", ["default", "small", "selfcheck"])
def test_unsandboxed_sibling_attempts_get_byte_identical_first_prompts(demo_task: Task, setup: str) -> None:
    """Without bubblewrap the commands run in the worktree itself (…/worktrees/<attempt id>), yet the first
    observation shows the same fixed working directory."""
    model = FirstRequestFakeModel(supports_tools=setup == "default")
    ids = ["run:loose:PLANTED11", "run:loose:PLANTED22"]
    for attempt_id in ids:
        run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id=attempt_id),
                    env_options={"isolate": False}, agent=setup, evaluate="none")
    assert len(model.requests) == 2 and model.requests[0] == model.requests[1]
    assert "Repository root: /testbed" in model.requests[0] and "PLANTED" not in model.requests[0]


def test_unsandboxed_commands_and_tools_work_in_the_fixed_directory(demo_task: Task) -> None:
    """The fixed path is usable, not just printed: commands and tool arguments may name it, and the real worktree
    in their output (pwd, a traceback, a tool's refusal) reads as it."""
    env = CodingEnvironment(demo_task, "run:loose:PLANTED33", isolate=False)
    try:
        shown = [env.reset().text]
        assert env.path is not None and "PLANTED33" in str(env.path)
        assert shown[0].startswith("Repository root: /testbed\n")
        shown.append(env.step(ToolCall("bash", {"command": "pwd; echo $PWD; cat /testbed/calc.py"})).text)
        assert shown[-1].startswith("/testbed\n/testbed\ndef add(a, b):")
        traceback = "cd /testbed && python -c 'import calc; calc.add(1, \"x\")'"
        shown.append(env.step(ToolCall("bash", {"command": traceback})).text)
        assert 'File "/testbed/calc.py", line 2' in shown[-1]
        edit = env.step(ToolCall("str_replace", {"path": "/testbed/calc.py", "old": "return a - b",
                                                 "new": "return a + b"}))
        shown.append(edit.text)
        assert not edit.error and "return a + b" in (env.path / "calc.py").read_text()
        shown.append(env.step(ToolCall("view", {"path": "../elsewhere.py"})).text)
        assert "outside the repository (/testbed)" in shown[-1]
        assert not any("PLANTED33" in text or str(env.path) in text for text in shown)
    finally:
        env.close()


def test_unsandboxed_siblings_pair_in_the_dataset_with_nothing_repaired(demo_task: Task) -> None:
    """FAKE models: two unsandboxed siblings run the same first command, whose output would name each one's
    worktree (pwd, a traceback through calc.py), then one fixes the bug and one does not. The DPO pair shares that
    first observation (so it was byte-identical as recorded) and no row of any kind names either attempt."""
    from agent_selfevolve.train.dataset import build_dataset

    first = bash("pwd; python -c 'import calc; calc.add(1, \"x\")'")
    fix = tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"})
    scripts = {"run:loose:PLANTEDwin": [first, fix, tool_call("submit", {})],
               "run:loose:PLANTEDloss": [first, bash("echo done"), tool_call("submit", {})]}
    trajs = [run_attempt(demo_task, ScriptedFakeModel(script), AttemptSpec(demo_task.instance_id, attempt_id=aid,
                                                                             run_id="run"),
                         env_options={"isolate": False}) for aid, script in scripts.items()]
    assert [t.resolved for t in trajs] == [True, False]
    assert trajs[0].messages[3] == trajs[1].messages[3] and "/testbed/calc.py" in trajs[0].messages[3]["content"]
    out, _ = build_dataset(trajs, kinds=("sft", "dpo", "recovery"))
    (pair,), (row,) = out["dpo"], out["recovery"]
    assert len(pair["prompt"]) == 4 and pair["prompt"][3]["role"] == "tool"  # paired after the shared observation
    assert "echo done" in json.dumps(row["messages"])
    rows = [r for kind in out.values() for r in kind]
    messages = json.dumps([{k: v for k, v in r.items() if k != "meta"} for r in rows])
    assert len(rows) == 3 and "PLANTED" not in messages and "worktrees" not in messages
