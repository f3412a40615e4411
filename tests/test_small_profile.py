"""The `small` agent profile: write_file, the raw fenced action form, the file preview, the text-mode stop, and
one whole attempt through it with a FAKE model (scripted replies, not an LLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent_selfevolve.action_format import TEXT_STOP
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.tools import ActionFormatError, load_bundles, parse_text_action, tools_dir
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.setups import get_setup
from agent_selfevolve.tasks import Task

SPECS = [b.openai_schema() for b in load_bundles(["write_file", "bash", "str_replace", "submit"])]


def write_file(cwd: Path, args: dict) -> subprocess.CompletedProcess[str]:
    script = tools_dir() / "write_file" / "main.py"
    return subprocess.run([sys.executable, str(script), json.dumps(args)], cwd=cwd, capture_output=True, text=True)


def test_write_file_creates_rewrites_and_refuses_bad_python(tmp_path: Path) -> None:
    assert write_file(tmp_path, {"path": "pkg/a.py", "content": "x = 1"}).returncode == 0
    assert (tmp_path / "pkg/a.py").read_text() == "x = 1\n"
    done = write_file(tmp_path, {"path": "pkg/a.py", "content": "x = 2\ny = 3\n"})
    assert done.returncode == 0 and "Rewrote pkg/a.py (2 lines)" in done.stdout
    bad = write_file(tmp_path, {"path": "pkg/a.py", "content": "def f(:\n"})
    assert bad.returncode == 2 and "would not parse" in bad.stdout
    assert (tmp_path / "pkg/a.py").read_text() == "x = 2\ny = 3\n"  # unchanged
    outside = write_file(tmp_path, {"path": "../escape.py", "content": "x = 1"})
    assert outside.returncode == 2 and "outside the repository" in outside.stdout
    assert not (tmp_path.parent / "escape.py").exists()


def test_raw_fenced_form_writes_code_as_code() -> None:
    code = 'def f(s):\n    return s.replace("\\\\", "/")  # a backslash that JSON would need escaped\n'
    call = parse_text_action(f"I write it.\n```write_file solution.py\n{code}```", SPECS)
    assert call.name == "write_file" and call.arguments == {"path": "solution.py", "content": code}
    # the JSON form still works, and bash is unchanged
    call = parse_text_action('```write_file\n{"path": "a.py", "content": "x = 1"}\n```', SPECS)
    assert call.arguments == {"path": "a.py", "content": "x = 1"}
    assert parse_text_action("```bash\nls -la\n```", SPECS).arguments == {"command": "ls -la"}


def test_raw_form_errors_name_the_fix() -> None:
    with pytest.raises(ActionFormatError, match="takes <path> after its name"):
        parse_text_action("```write_file\ndef f(): pass\n```", SPECS)
    with pytest.raises(ActionFormatError, match="```write_file <path>"):  # a python block is not an action
        parse_text_action("Here:\n```python\ndef f(): pass\n```", SPECS)
    # str_replace has three arguments: no raw form, its non-JSON body is a JSON error
    with pytest.raises(ActionFormatError, match="not valid JSON"):
        parse_text_action("```str_replace\nold\n```", SPECS)


def test_preview_shows_small_repos_whole_and_never_tests(demo_task: Task) -> None:
    env = CodingEnvironment(demo_task, "preview", preview_chars=4000, isolate=False)
    try:
        text = env.reset().text
        assert "calc.py:\n```\ndef add(a, b):\n    return a - b" in text
        assert "test_calc.py:" not in text  # test files are left out
    finally:
        env.close()
    env = CodingEnvironment(demo_task, "preview-small", preview_chars=20, isolate=False)
    try:
        assert "calc.py:" not in env.reset().text  # all or nothing: too big, so no preview at all
    finally:
        env.close()


def test_small_profile_attempt_end_to_end(demo_task: Task) -> None:
    """FAKE model in text mode: write the fixed file raw, check it, submit; resolved by the hidden tests."""
    profile = get_setup("small")
    fixed = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    model = ScriptedFakeModel([f"I write the file.\n```write_file calc.py\n{fixed}```",
                               '```bash\npython -c "from calc import add; print(add(2, 3))"\n```',
                               "It prints 5.\n```submit\n```"], supports_tools=False)
    traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id), agent=profile)
    assert traj.status == "submitted" and traj.resolved
    assert [s["action"]["name"] for s in traj.steps] == ["write_file", "bash", "submit"]
    assert traj.steps[1]["observation"].strip() == "5"
    assert all(p["stop"] == list(TEXT_STOP) for p in model.params)  # text mode stops before invented output
    first_user = model.requests[0][1]["content"]
    assert "def add(a, b):\n    return a - b" in first_user  # the file is shown up front
    assert "write_file" in model.requests[0][0]["content"] and "count_vowels" in model.requests[0][0]["content"]


def test_unknown_profile_is_named() -> None:
    with pytest.raises(ValueError, match="unknown agent set-up 'tiny'"):
        get_setup("tiny")


def test_auto_profile_picks_selfcheck_for_embedded_models_and_leaves_web_tasks_alone() -> None:
    assert get_setup("auto", "local").name == "selfcheck" and get_setup("auto", "local:qwen2.5-coder-1.5b").name \
        == "selfcheck"
    assert get_setup("auto", "openai:gpt-4o-mini").name == "default"
    small = get_setup("small")
    assert small.model_options("local") == {"tool_mode": "text", "max_tokens": 768}
    assert small.model_options("litellm:x") == {}  # API models keep native tool calls
    assert small.for_task("web").name == "web"  # the browser's own set-up
    assert small.env_options()["tools"] == ["write_file", "bash", "submit"]


def test_flat_json_actions_are_understood() -> None:
    """Small models often write {"action": "click", "id": "e4"}: unambiguous, so it is accepted."""
    call = parse_text_action('```json\n{"action": "bash", "command": "ls"}\n```', SPECS)
    assert call.name == "bash" and call.arguments == {"command": "ls"}
    call = parse_text_action('```json\n{"tool": "bash", "arguments": {"command": "ls"}}\n```', SPECS)
    assert call.arguments == {"command": "ls"}
    with pytest.raises(ActionFormatError, match="`fly` is not a tool. Tools: write_file, bash"):
        parse_text_action('```json\n{"action": "fly", "to": "moon"}\n```', SPECS)


def test_text_mode_trajectories_train_without_tool_schemas(demo_task: Task) -> None:
    """A row must be rendered as it was served: text-mode attempts never saw the tool schemas in the template."""
    from agent_selfevolve.train import build_dataset

    profile = get_setup("small")
    fixed = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
    text_model = ScriptedFakeModel([f"```write_file calc.py\n{fixed}```", "```submit\n```"], supports_tools=False)
    traj = run_attempt(demo_task, text_model, AttemptSpec(demo_task.instance_id, attempt_id="t1", run_id="r"),
                       agent=profile)
    native = run_attempt(demo_task, ScriptedFakeModel([
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "write_file", "arguments": json.dumps({"path": "calc.py", "content": fixed})}}]},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "submit", "arguments": "{}"}}]}]), AttemptSpec(demo_task.instance_id, attempt_id="n1", run_id="r2"),
        agent=profile)
    assert traj.resolved and native.resolved
    rows, _ = build_dataset([traj, native], kinds=["sft"])
    by_attempt = {r["meta"]["attempt_ids"][0]: r for r in rows["sft"]}
    assert "tools" not in by_attempt["t1"] and "tools" not in traj.to_openai_finetune()
    assert {t["function"]["name"] for t in by_attempt["n1"]["tools"]} == {"write_file", "bash", "submit"}
