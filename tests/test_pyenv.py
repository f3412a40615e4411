"""Per-repo virtualenvs for grading: built once per (repo, version), deps from the index, graded code wins."""
# ruff: noqa: W293  (diff context lines in the patches below are a single space)

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import _git, index_reachable

from agent_selfevolve.envs import pyenv
from agent_selfevolve.envs.grading import DEFAULT_TEST_CMD, grade
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.tasks import Task

FIX = """diff --git a/src/demo_pkg/core.py b/src/demo_pkg/core.py
--- a/src/demo_pkg/core.py
+++ b/src/demo_pkg/core.py
@@ -1,5 +1,5 @@
 import tomli_w
 
 
 def dump(data):
-    return tomli_w.dumps(data).upper()
+    return tomli_w.dumps(data)
"""

HIDDEN = """diff --git a/tests/test_core.py b/tests/test_core.py
new file mode 100644
--- /dev/null
+++ b/tests/test_core.py
@@ -0,0 +1,11 @@
+import os
+import sys
+
+from demo_pkg import BUILT, core
+
+
+def test_dump():
+    assert core.dump({"a": 1}) == "a = 1\\n"
+    assert BUILT == int(os.environ.get("EXPECT_BUILT", "1"))  # git-ignored, made by the install
+    assert sys.prefix != sys.base_prefix  # the venv's python ran the tests
+    assert "cache" in core.__file__ and "envs" not in core.__file__  # the graded worktree, not the env's
"""

PY = f"py{sys.version_info.major}{sys.version_info.minor}"
INSTALL = ("python -m pip install -q -e . && "
           "python -c \"open('src/demo_pkg/_build_info.py', 'w').write('BUILT = 1\\n')\"")


@pytest.fixture
def pkg_task(tmp_path: Path) -> Task:
    """A src-layout package that depends on tomli-w (not installed beside us) and generates a build file."""
    repo = tmp_path / "pkgrepo"
    (repo / "src" / "demo_pkg").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "demo-pkg"\nversion = "0.1"\ndependencies = ["tomli-w>=1.0"]\n')
    (repo / ".gitignore").write_text("src/demo_pkg/_build_info.py\n*.egg-info/\n")
    (repo / "src" / "demo_pkg" / "__init__.py").write_text(
        "try:\n    from demo_pkg._build_info import BUILT\nexcept ImportError:\n    BUILT = 0\n")
    (repo / "src" / "demo_pkg" / "core.py").write_text(
        "import tomli_w\n\n\ndef dump(data):\n    return tomli_w.dumps(data).upper()\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    return Task(instance_id="demo__pkg-1", repo="local/pkg", repo_path=str(repo), version="0.1",
                base_commit=_git(repo, "rev-parse", "HEAD"), problem_statement="dump() shouts",
                patch=FIX, test_patch=HIDDEN, FAIL_TO_PASS=["tests/test_core.py::test_dump"],
                test_env="venv", install_cmd=INSTALL)




@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grading_uses_the_task_venv(pkg_task: Task, isolated_cache: Path) -> None:
    if not index_reachable("tomli-w"):
        pytest.skip("the package index is unreachable: a test env cannot be built")
    gold = grade(pkg_task, pkg_task.patch)
    assert gold.resolved, gold.error + gold.test_output[-3000:]
    envs = list((isolated_cache / "envs").iterdir())
    assert [e.name for e in envs] == [f"local_pkg-0.1-{PY}"]
    ready = json.loads((envs[0] / "ready.json").read_text())
    assert any(p.lower().startswith("tomli") for p in ready["packages"])
    empty = grade(pkg_task, "")  # the env is reused: no second build
    assert not empty.resolved and empty.tests_status["FAIL_TO_PASS"]["failure"] == ["tests/test_core.py::test_dump"]
    assert len(list((isolated_cache / "envs").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_install_resolves_as_of_the_commit_date(pkg_task: Task, isolated_cache: Path) -> None:
    """No install_cmd: uv (fetched into the cache) installs with --exclude-newer = the commit's date."""
    if not index_reachable("tomli-w"):
        pytest.skip("the package index is unreachable: a test env cannot be built")
    data = {k: v for k, v in pkg_task.model_dump().items() if k != "install_cmd"}
    task = Task.model_validate({**data, "test_cmd": "EXPECT_BUILT=0 " + DEFAULT_TEST_CMD})
    gold = grade(task, task.patch)
    assert gold.resolved, gold.error + gold.test_output[-3000:]
    ready = json.loads(next((isolated_cache / "envs").iterdir()).joinpath("ready.json").read_text())
    if ready["installer"] == "pip":
        pytest.skip("uv could not be installed from the index; the pip fallback graded correctly")
    commit_date = _git(Path(task.repo_path or ""), "show", "-s", "--format=%cI", "HEAD")
    assert ready["exclude_newer"] == commit_date and (isolated_cache / "tools" / "uv" / "bin" / "uv").exists()


def test_failed_build_is_remembered_and_reported(pkg_task: Task, isolated_cache: Path) -> None:
    task = Task.model_validate({**pkg_task.model_dump(), "install_cmd": "echo no compiler for you >&2; exit 7"})
    report = grade(task, task.patch)
    assert not report.resolved and "exited 7" in report.error
    assert "no compiler for you" in report.test_output
    with pytest.raises(pyenv.EnvBuildError, match="failed before"):
        pyenv.test_env_for(task, isolated_cache)


def test_tasks_without_the_field_keep_the_current_interpreter(demo_task: Task) -> None:
    assert pyenv.test_env_for(demo_task) is None
    assert grade(demo_task, demo_task.patch).resolved


def test_env_key_without_version_follows_dependency_files(pkg_task: Task, isolated_cache: Path) -> None:
    task = Task.model_validate({**pkg_task.model_dump(), "version": ""})
    key = pyenv.env_key(task, WorktreePool(isolated_cache))
    assert key.startswith("local_pkg-deps") and key.endswith(PY)
    other = Task.model_validate({**task.model_dump(), "pip_packages": ["six"]})
    assert pyenv.env_key(other, WorktreePool(isolated_cache)) != key
