"""A bundled SWE-style task (a real PyPI project with an injected bug) resolved end to end by the FAKE model.

The scripted fake edits the file the way a model would (view, str_replace from the gold patch's hunks, run
the visible tests, submit); the grader then applies the hidden tests exactly as SWE-bench does.
"""

import re

import pytest

from agent_selfevolve.attempt import run_attempt
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.sources import locate_tasks, resolve_tasks
from agent_selfevolve.tasks import Task


def edits_from_patch(patch: str) -> list[tuple[str, str, str]]:
    """(path, old, new) replacements reconstructed from each hunk's - and + lines (with context)."""
    edits = []
    for file_block in re.split(r"^diff --git ", patch, flags=re.M)[1:]:
        path = re.search(r"^\+\+\+ b/(\S+)", file_block, re.M).group(1)
        for hunk in re.split(r"^@@[^\n]*@@[^\n]*\n", file_block, flags=re.M)[1:]:
            old, new = [], []
            for line in hunk.splitlines():
                if line.startswith("-"):
                    old.append(line[1:])
                elif line.startswith("+"):
                    new.append(line[1:])
                elif line.startswith(" ") or line == "":
                    old.append(line[1:])
                    new.append(line[1:])
            edits.append((path, "\n".join(old), "\n".join(new)))
    return edits


@pytest.fixture(scope="module")
def bundled() -> list[Task]:
    return resolve_tasks("bundled", locate=False)  # each test builds (locates) only the repository it runs


def test_bundled_tasks_are_many_real_and_hide_their_tests(bundled: list[Task]) -> None:
    assert len(bundled) >= 10 and len({t.repo for t in bundled}) >= 6
    for task in bundled:
        assert task.FAIL_TO_PASS and task.patch and task.test_patch and task.repo.startswith("bundled/")
        assert "test" not in " ".join(re.findall(r"^\+\+\+ b/(\S+)", task.patch, re.M))


def test_fake_model_resolves_a_bundled_task_end_to_end(bundled: list[Task]) -> None:
    task = locate_tasks([bundled[0]])[0]
    script = [bash("git status --short && ls", "Look around.")]
    for path, old, new in edits_from_patch(task.patch):
        script += [tool_call("view", {"path": path}), tool_call("str_replace", {"path": path, "old": old, "new": new})]
    script += [tool_call("submit", {})]
    model = ScriptedFakeModel(script)
    traj = run_attempt(task, model)
    assert traj.status == "submitted", traj.exit_message
    assert traj.resolved, traj.evaluation
    details = traj.evaluation["details"][task.instance_id]["tests_status"]
    assert details["FAIL_TO_PASS"]["failure"] == [] and details["PASS_TO_PASS"]["failure"] == []
    assert task.test_patch not in str(model.requests)


def test_empty_attempt_on_a_bundled_task_is_not_resolved(bundled: list[Task]) -> None:
    traj = run_attempt(locate_tasks([bundled[1]])[0], ScriptedFakeModel([tool_call("submit", {})]))
    assert traj.status == "submitted" and not traj.resolved


def test_bundled_sandbox_hides_the_bug_commit(bundled: list[Task]) -> None:
    from agent_selfevolve.envs.base import ToolCall
    from agent_selfevolve.envs.coding import CodingEnvironment

    env = CodingEnvironment(locate_tasks([bundled[0]])[0], "history-1")
    env.reset()
    log = env.step(ToolCall("bash", {"command": "git log --oneline --all | wc -l; git diff HEAD~1 --stat"}))
    assert log.text.split()[0] == "1" and "unknown revision" in log.text
    branches = env.step(ToolCall("bash", {"command": "git branch -a; git tag"})).text
    assert "upstream" not in branches
    env.close()
