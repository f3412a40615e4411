"""Agent set-ups as data: the shipped YAML set-ups send the exact first turns the code sent before they were data,
they ship as package data, and a set-up for one task kind gives way to the shipped one for another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import load_data_module

from agent_selfevolve.setups import SETUPS_DIR, SHIPPED, AgentSetup, get_setup, load_setup, resolve_setup

DATA = Path(__file__).parent / "data"


capture = load_data_module("capture_first_prompts")
EXPECTED = json.loads((DATA / "first_prompts.json").read_text())


@pytest.mark.parametrize(("setup", "native"), capture.CASES)
def test_shipped_setup_sends_the_recorded_first_turn_byte_for_byte(setup: str, native: bool, tmp_path: Path) -> None:
    """FAKE model: system prompt, task prompt, tool schemas and stop strings of the first request, as JSON bytes
    (sandboxed or not: either way the first observation shows the repository at /testbed)."""
    got = capture.first_turn(setup, native, tmp_path)
    want = EXPECTED[f"{setup}-{'native' if native else 'text'}"]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_every_shipped_setup_is_a_file_in_the_package_data() -> None:
    assert sorted(p.stem for p in SETUPS_DIR.glob("*.yaml")) == sorted(SHIPPED)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"setups/*.yaml"' in pyproject
    for name in SHIPPED:
        assert get_setup(name) == load_setup(SETUPS_DIR / f"{name}.yaml")


def test_a_setup_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nsystem_prompt: hi\ntask_template: '{problem}'\nrepeat_retrys: 2\n")
    with pytest.raises(ValueError, match="repeat_retrys"):
        load_setup(path)
    path.write_text("name: mine\nsystem_prompt: hi\ntask_template: '{problem}'\nenvironment: {preview_chars: 10}\n")
    assert get_setup(str(path)).env_options() == {"preview_chars": 10}
    with pytest.raises(ValueError, match="unknown agent set-up 'tiny'"):
        get_setup("tiny")


def test_coding_setup_gives_web_tasks_the_web_setup_and_auto_picks_by_model() -> None:
    small = get_setup("small")
    assert resolve_setup(small, "web").name == "web" and resolve_setup(small, "swe") is small
    assert resolve_setup(None, "web").name == "web" and resolve_setup(None, "swe").name == "default"
    assert get_setup("auto", "local").name == "selfcheck" and get_setup("auto", "openai:gpt-4o").name == "default"
    assert small.model_options("local:qwen2.5-coder-1.5b") == {"tool_mode": "text", "max_tokens": 768}
    assert small.model_options("openai:gpt-4o") == {}


def test_setup_limits_are_defaults_an_explicit_limit_overrides(demo_task: Any) -> None:
    from agent_selfevolve.agent import Limits
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call

    two = get_setup("default").with_overrides(name="two", limits={"max_steps": 2})
    assert isinstance(two, AgentSetup)
    def respond(messages: list[dict[str, Any]]) -> dict[str, Any]:  # FAKE: a new command each turn
        return tool_call("bash", {"command": f"echo {len(messages)}"})

    traj = run_attempt(demo_task, ScriptedFakeModel(respond), AttemptSpec(demo_task.instance_id), agent=two,
                       evaluate="none")
    assert traj.status == "step_limit" and len([s for s in traj.steps if s.get("action")]) == 2
    traj = run_attempt(demo_task, ScriptedFakeModel(respond), AttemptSpec(demo_task.instance_id, attempt_id="one"),
                       agent=two, limits=Limits(max_steps=1), evaluate="none")
    assert traj.status == "step_limit" and len([s for s in traj.steps if s.get("action")]) == 1


def test_the_web_setup_keeps_the_browser_prompt_word_for_word() -> None:
    from agent_selfevolve.envs.web import WEB_SYSTEM_PROMPT

    assert get_setup("web").system_prompt == WEB_SYSTEM_PROMPT
