"""The sandbox: command runner, worktrees, tools, patch application and SWE-bench-style grading."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.grading import PatchApplyError, apply_patch, grade, parse_test_output, write_report
from agent_selfevolve.envs.runner import CommandRunner, bwrap_available
from agent_selfevolve.envs.tools import ActionFormatError, load_bundles, parse_text_action, parse_tool_call
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.tasks import Task


def test_hung_command_is_killed_with_its_children(tmp_path: Path) -> None:
    runner = CommandRunner(tmp_path, timeout_s=1, isolate=False)
    start = time.monotonic()
    nap = f"sleep 300.{time.time_ns() % 10**9:09d}"  # a unique command line: no other process can match it
    result = runner.run(f"{nap} & echo started; {nap}")
    assert result.timed_out and result.returncode == -9 and "timed out after 1 s" in result.output
    assert time.monotonic() - start < 10
    assert "started" in result.output
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously: allow the group a moment to vanish
    while subprocess.run(["pgrep", "-f", nap], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "a child of the timed-out command survived"
        time.sleep(0.1)


def test_flooding_command_is_truncated_head_and_tail(tmp_path: Path) -> None:
    result = CommandRunner(tmp_path, timeout_s=30, isolate=False).run("seq 1 2000000")
    assert result.truncated and len(result.output) < 12_000
    assert result.output.startswith("1\n2\n") and result.output.rstrip().endswith("2000000")


def test_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    out = CommandRunner(tmp_path, isolate=False).run("env").output
    assert "sk-secret-123" not in out and "OPENAI_API_KEY" not in out


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot create namespaces here")
def test_bwrap_blocks_network_and_writes_outside(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runner = CommandRunner(work, isolate=True)
    out = runner.run(f"touch {tmp_path}/outside; touch inside; python3 -c \"import socket; "
                     "socket.create_connection(('127.0.0.1', 9), timeout=2)\"").output
    assert not (tmp_path / "outside").exists() and (work / "inside").exists()
    assert "Network is unreachable" in out or "Connection refused" in out or "OSError" in out


def test_worktree_leaves_the_users_checkout_alone(demo_task: Task, demo_repo: Path) -> None:
    before = subprocess.run(["git", "status", "--porcelain"], cwd=demo_repo, capture_output=True, text=True).stdout
    pool = WorktreePool()
    path = pool.create(demo_task, "a1")
    (path / "calc.py").write_text("changed\n")
    assert (demo_repo / "calc.py").read_text().startswith("def add")
    assert not (demo_repo / ".git" / "worktrees").exists()
    pool.remove(path)
    assert not path.exists()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=demo_repo, capture_output=True, text=True).stdout
    assert before == after == ""


def test_tools_view_edit_search_and_refusals(demo_task: Task) -> None:
    env = CodingEnvironment(demo_task, "tools-1", isolate=False)
    env.reset()
    view = env.step(ToolCall("view", {"path": "calc.py"}))
    assert "     2      return a - b" in view.text and not view.error
    escape = env.step(ToolCall("view", {"path": "../../../etc/passwd"}))
    assert escape.error and "outside the repository" in escape.text
    absolute = env.step(ToolCall("str_replace", {"path": "/etc/hostname", "old": "", "new": "x"}))
    assert absolute.error and "outside the repository" in absolute.text
    broken = env.step(ToolCall("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a +"}))
    assert broken.error and "would not parse" in broken.text
    assert "return a - b" in (env.path / "calc.py").read_text()  # type: ignore[operator]
    assert "calc.py:2" in env.step(ToolCall("search", {"pattern": r"a - b"})).text
    assert "tests/test_calc.py" in env.step(ToolCall("find_files", {"pattern": "test_*.py"})).text
    ambiguous = env.step(ToolCall("str_replace", {"path": "calc.py", "old": "def ", "new": "def  "}))
    assert ambiguous.error and "occurs 2 times" in ambiguous.text
    assert env.step(ToolCall("nope", {})).error
    env.close()


def test_patch_excludes_test_files_and_includes_new_files(demo_task: Task) -> None:
    env = CodingEnvironment(demo_task, "patch-1", isolate=False)
    env.reset()
    env.step(ToolCall("bash", {"command": "sed -i 's/a - b/a + b/' calc.py && echo x > new_mod.py && "
                                          "echo '# t' >> tests/test_calc.py"}))
    outcome = env.outcome()
    assert outcome["files"] == ["calc.py", "new_mod.py"] and "tests/" not in outcome["patch"]
    env.close()


def test_patch_that_does_not_apply_is_a_clear_error(demo_task: Task) -> None:
    pool = WorktreePool()
    path = pool.create(demo_task, "apply-1")
    bad = demo_task.patch.replace("return a - b", "return a * b * c")
    with pytest.raises(PatchApplyError, match="does not apply") as info:
        apply_patch(path, bad, "model patch")
    assert "git apply" in info.value.log and "patch --batch" in info.value.log
    assert "return a - b" in (path / "calc.py").read_text()  # the worktree is left clean
    report = grade(demo_task, bad, pool)
    assert not report.patch_applied and not report.resolved and "does not apply" in report.error
    pool.remove(path)


def test_grading_matches_swebench_semantics(demo_task: Task, tmp_path: Path) -> None:
    gold = grade(demo_task, demo_task.patch)
    assert gold.resolved and gold.patch_applied and gold.apply_method == "git apply"
    assert gold.tests_status["FAIL_TO_PASS"]["failure"] == []
    empty = grade(demo_task, "")
    assert not empty.resolved and set(empty.tests_status["FAIL_TO_PASS"]["failure"]) == set(demo_task.FAIL_TO_PASS)
    breaks_p2p = demo_task.patch.replace(" def mul(a, b):\n", " def mul(a, b):\n-    return a * b\n+    return a + b\n")
    breaks_p2p = breaks_p2p.replace("@@ -1,5 +1,5 @@", "@@ -1,6 +1,6 @@")
    broken = grade(demo_task, breaks_p2p)
    assert broken.patch_applied and not broken.resolved
    assert broken.tests_status["PASS_TO_PASS"]["failure"] == ["tests/test_calc.py::test_mul"]
    path = write_report(gold, tmp_path / "out")
    data = json.loads(path.read_text())
    assert data["demo__calc-1"]["resolved"] is True and "tests_status" in data["demo__calc-1"]


def test_parse_pytest_ra_lines() -> None:
    out = ("x\n>>>>> Start Test Output\nPASSED tests/a.py::test_1\nFAILED tests/a.py::test_2 - assert 0\n"
           "ERROR tests/b.py::test_3\nXFAIL tests/a.py::test_4\n>>>>> End Test Output\nPASSED tests/z.py::outside\n")
    assert parse_test_output(out) == {"tests/a.py::test_1": "PASSED", "tests/a.py::test_2": "FAILED",
                                      "tests/b.py::test_3": "ERROR", "tests/a.py::test_4": "XFAIL"}


def test_text_and_native_action_parsing() -> None:
    specs = [b.openai_schema() for b in load_bundles()]
    assert parse_text_action("Look:\n```bash\nls -la\n```", specs).arguments == {"command": "ls -la"}
    call = parse_text_action('```str_replace\n{"path": "a.py", "old": "x", "new": "y"}\n```', specs)
    assert call.name == "str_replace" and call.arguments["new"] == "y"
    for bad, msg in [("no block here", "No action found"), ("```bash\nls\n```\n```bash\npwd\n```", "exactly one"),
                     ("```view\n{not json}\n```", "not valid JSON")]:
        with pytest.raises(ActionFormatError, match=msg):
            parse_text_action(bad, specs)
    with pytest.raises(ActionFormatError, match="Unknown tool"):
        parse_tool_call({"function": {"name": "rm_rf", "arguments": "{}"}}, specs)
    with pytest.raises(ActionFormatError, match="not valid JSON"):
        parse_tool_call({"function": {"name": "bash", "arguments": "{oops"}}, specs)


def test_one_test_command_for_grader_proxy_and_bundled(demo_task: Task) -> None:
    from agent_selfevolve.envs.grading import test_command

    assert test_command(demo_task, ["tests/a b.py"], python="/py").endswith("-p no:cacheprovider 'tests/a b.py'")
    custom = demo_task.model_copy(update={"test_cmd": "{python} -m pytest -o pythonpath=src -rA {tests}"})
    assert test_command(custom, ["t.py"], python="/py") == "/py -m pytest -o pythonpath=src -rA t.py"


def test_a_failed_subtest_is_not_overwritten_by_its_passed_line() -> None:
    out = "SUBFAIL tests/a.py::test_x - bad\nPASSED tests/a.py::test_x\nPASSED tests/a.py::test_y\n"
    assert parse_test_output(out) == {"tests/a.py::test_x": "SUBFAIL", "tests/a.py::test_y": "PASSED"}


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot create namespaces here")
def test_sandboxed_argv_reaches_the_program_verbatim(tmp_path: Path) -> None:
    """Tool arguments (JSON with code in it) are passed as argv, never re-parsed by a shell inside the sandbox."""
    text = '{"new": "echo $HOME `id` \\"q\\" \'s\' \\\\n"}'
    out = CommandRunner(tmp_path, isolate=True).run([sys.executable, "-c", "import sys; print(sys.argv[1])", text])
    assert out.output == text + "\n" and out.returncode == 0
