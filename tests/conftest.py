"""Shared fixtures: a tiny real git repo with a real bug, and an isolated cache for worktrees."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.tasks import Task

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # each xdist worker gets its share of the cores: llama.cpp and OpenMP slow sharply when oversubscribed
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("AGENT_SELFEVOLVE_THREADS", _SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", _SHARE)

FIX = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,5 +1,5 @@
 def add(a, b):
-    return a - b
+    return a + b
 
 
 def mul(a, b):
"""

HIDDEN_TEST = """diff --git a/tests/test_hidden.py b/tests/test_hidden.py
new file mode 100644
--- /dev/null
+++ b/tests/test_hidden.py
@@ -0,0 +1,5 @@
+from calc import add
+
+
+def test_add_hidden():
+    assert add(2, 3) == 5
"""


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(cache))
    return cache


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    return make_demo_repo(tmp_path / "demo")


def make_demo_repo(repo: Path) -> Path:
    """The demo repository (calc.py's add() subtracts; tests/test_calc.py), committed once at `repo`."""
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import add, mul\n\n\ndef test_add():\n    assert add(1, 1) == 2\n\n\n"
        "def test_mul():\n    assert mul(2, 3) == 6\n")
    (repo / "conftest.py").write_text("import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    return repo


@pytest.fixture
def demo_task(demo_repo: Path) -> Task:
    return Task(instance_id="demo__calc-1", repo="local/demo", repo_path=str(demo_repo),
                base_commit=_git(demo_repo, "rev-parse", "HEAD"), problem_statement="add() subtracts instead of adding",
                patch=FIX, test_patch=HIDDEN_TEST, FAIL_TO_PASS=["tests/test_hidden.py::test_add_hidden",
                                                                  "tests/test_calc.py::test_add"],
                PASS_TO_PASS=["tests/test_calc.py::test_mul"],
                test_files=["tests/test_calc.py", "tests/test_hidden.py"])


def solution_task(root: Path, stub: str, hidden_test: str, hidden_name: str, instance_id: str) -> Task:
    """A one-file task: `solution.py` holding `stub`, committed at `root/repo`, graded by `hidden_test` (the source
    of test_hidden.py, defining `hidden_name`), which only the grader sees."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "solution.py").write_text(stub)
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    test_patch = ("diff --git a/test_hidden.py b/test_hidden.py\nnew file mode 100644\n--- /dev/null\n"
                  f"+++ b/test_hidden.py\n@@ -0,0 +1,{len(hidden_test.splitlines())} @@\n"
                  + "".join(f"+{line}\n" for line in hidden_test.splitlines()))
    entry = re.search(r"def (\w+)\(", stub).group(1)  # type: ignore[union-attr]
    return Task(instance_id=instance_id, repo="local/words", repo_path=str(repo), base_commit="HEAD",
                problem_statement=f"Implement `{entry}` in solution.py so that it does what its docstring says.",
                test_patch=test_patch, FAIL_TO_PASS=[f"test_hidden.py::{hidden_name}"], test_files=["test_hidden.py"])


def solving_script() -> list:
    """FAKE model replies that fix demo_task: look, edit, test, submit."""
    from agent_selfevolve.models.fake import bash, tool_call

    return [bash("cat calc.py", "Let me read the code."),
            tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"}),
            bash("python -m pytest -q tests"), tool_call("submit", {})]


def kill_9_when_recorded(script: str, task: Task, store: Any, run_id: str, at_least: int, workdir: Path,
                         timeout_s: float = 90) -> dict[str, float]:
    """Run `script` (argv: task.json, store path) in a subprocess, kill -9 it once the store holds `at_least`
    attempts of `run_id`, and return those attempts' {id: created_at} (for checking nothing is re-recorded)."""
    root = Path(__file__).resolve().parents[1]
    (workdir / "task.json").write_text(task.model_dump_json())
    (workdir / "run.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    proc = subprocess.Popen([sys.executable, str(workdir / "run.py"), str(workdir / "task.json"), str(store.path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while store.count(run_id) < at_least and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    return dict(store._conn.execute("SELECT id, created_at FROM attempts WHERE run_id=?", (run_id,)).fetchall())


def _load_module(name: str, path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


def load_data_module(name: str) -> Any:
    """A script of tests/data (e.g. a capture script that records the pinned prompts) as a module."""
    return _load_module(name, Path(__file__).parent / "data" / f"{name}.py")


def load_bench_module(name: str) -> Any:
    """bench/<name>.py as the module `name`, as the bench scripts import each other."""
    return _load_module(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")


WORDS_STUB = '''def words(s):
    """Split s at commas and spaces.

    >>> words("Hi, my name")
    ['Hi', 'my', 'name']
    """
    raise NotImplementedError
'''
"""A one-function stub with a doctest, for `solution_task`; `words_with(body)` fills it in."""


def words_with(body: str) -> str:
    return WORDS_STUB.replace("    raise NotImplementedError", body)


def index_reachable(requirement: str) -> bool:
    """Whether pip can download `requirement` now (tests that build venvs skip without a package index). Into its
    own folder: another xdist worker may probe at once."""
    with tempfile.TemporaryDirectory() as into:
        probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", into, requirement],
                               capture_output=True, timeout=120)
    return probe.returncode == 0
