"""Self-correction: the `check` tool and the `selfcheck` set-up (checks after every edit, revise on failure, end
when they pass), with a FAKE scripted model (not an LLM). The checks are the visible ones; hidden tests never show."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.profiles import get_profile
from agent_selfevolve.tasks import Task

MARK = "HIDDEN_SELFCHECK_MARK_71c2"
STUB = '''def words(s):
    """Split s at commas and spaces.

    words("Hi, my name") == ["Hi", "my", "name"]
    words("a,b") == ["a", "b"]
    """
    raise NotImplementedError
'''
RIGHT = STUB.replace("    raise NotImplementedError", "    return s.replace(',', ' ').split()")
WRONG = STUB.replace("    raise NotImplementedError", "    return s.split(',')")


@pytest.fixture
def task(tmp_path: Path) -> Task:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "solution.py").write_text(STUB)
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    hidden = f"from solution import words\n\n\ndef test_{MARK}():\n    assert words('x y') == ['x', 'y'], '{MARK}'\n"
    test_patch = (f"diff --git a/test_hidden.py b/test_hidden.py\nnew file mode 100644\n--- /dev/null\n"
                  f"+++ b/test_hidden.py\n@@ -0,0 +1,{len(hidden.splitlines())} @@\n"
                  + "".join(f"+{line}\n" for line in hidden.splitlines()))
    return Task(instance_id="sc__words-1", repo="local/words", repo_path=str(repo), base_commit="HEAD",
                problem_statement="Implement `words` in solution.py so that it does what its docstring says.",
                test_patch=test_patch, FAIL_TO_PASS=[f"test_hidden.py::test_{MARK}"], test_files=["test_hidden.py"])


def test_check_tool_reports_visible_failures_with_what_the_code_gave(task: Task) -> None:
    env = CodingEnvironment(task, "sc-tool", tools=["write_file", "check", "submit"])
    env.reset()
    assert "No checks found" in env.step(ToolCall("check", {})).text  # nothing edited yet
    env.step(ToolCall("write_file", {"path": "solution.py", "content": WRONG}))
    report = env.step(ToolCall("check", {}))
    assert "examples 1/2 passed" in report.text and "gave ['Hi', ' my name']" in report.text, report.text
    assert not report.info["all_passed"] and MARK not in report.text
    env.step(ToolCall("write_file", {"path": "solution.py", "content": RIGHT}))
    assert env.step(ToolCall("check", {})).info["all_passed"]
    env.close()


def test_selfcheck_attempt_revises_on_failure_and_ends_when_checks_pass(task: Task) -> None:
    profile = get_profile("selfcheck")
    seen: list[str] = []

    def respond(messages: list[dict]) -> str:
        seen.extend(str(m.get("content")) for m in messages)
        turn = sum(m["role"] == "assistant" for m in messages)
        return f"Here is the function.\n```python\n{WRONG if turn == 0 else RIGHT}```"  # as asked directly

    model = ScriptedFakeModel(respond, supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), **profile.attempt_options("swe"))
    assert traj.status == "submitted" and len(traj.steps) == 2, (traj.status, traj.exit_message)
    assert "examples 1/2 passed" in traj.steps[0]["observation"]
    assert "Every check passes: submitted." in traj.steps[1]["observation"]
    assert traj.resolved  # graded afterwards by the hidden test, which the model never saw
    assert not any(MARK in text for text in seen)
    assert "count_vowels" not in traj.messages[0]["content"]  # no worked example to copy


def test_no_visible_check_means_no_automatic_submit(task: Task, tmp_path: Path) -> None:
    env = CodingEnvironment(task, "sc-none", tools=["write_file", "submit"], check_on_write=True,
                            submit_when_checks_pass=True)
    env.reset()
    obs = env.step(ToolCall("write_file", {"path": "notes.py", "content": "X = 1\n"}))
    assert not obs.done and "No checks found" in obs.text
    env.close()
