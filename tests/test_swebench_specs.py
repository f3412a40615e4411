"""SWE-bench's own specs, test directives and log parsers from the pinned wheel; the Python each env asks for."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import _git

from agent_selfevolve.envs import interpreters
from agent_selfevolve.envs.grading import grade, parse_task_output
from agent_selfevolve.envs.swebench_env import classify_step, conda_to_pip, derived_version, with_env_spec
from agent_selfevolve.envs.swebench_harness import HARNESS, Harness, HarnessUnavailable, harness
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.sources.swebench import SWEBenchDataError
from agent_selfevolve.sources.swebench_coverage import instance_coverage
from agent_selfevolve.tasks import Task


@pytest.fixture(scope="module")
def wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One download of the pinned swebench wheel (~600 KB, no dependencies); skip when the index is unreachable."""
    cache = tmp_path_factory.mktemp("swebench-harness")
    try:
        harness(cache)
    except SWEBenchDataError as exc:
        pytest.skip(f"the swebench wheel cannot be downloaded here: {exc}")
    return cache


@pytest.fixture
def h(wheel_cache: Path, isolated_cache: Path) -> Harness:
    """The harness, its wheel also in this test's cache: grading (which uses the default cache) finds it there."""
    shutil.copytree(wheel_cache / "wheels", isolated_cache / "swebench" / "wheels", dirs_exist_ok=True)
    return harness(wheel_cache)


def test_specs_come_from_the_pinned_wheel(h: Harness) -> None:
    assert h.release == HARNESS[1] == "4.1.0"
    django = h.spec("django/django", "3.0")
    assert django and django["python"] == "3.6" and django["test_cmd"].startswith("./tests/runtests.py --verbosity 2")
    assert django["packages"] == "requirements.txt"
    sympy = h.spec("sympy/sympy", "1.1")
    assert sympy and "bin/test -C --verbose" in sympy["test_cmd"] and "mpmath==1.3.0" in sympy["pip_packages"]
    pytest_54 = h.spec("pytest-dev/pytest", "5.4")
    assert pytest_54 and pytest_54["python"] == "3.9" and "pluggy==0.13.1" in pytest_54["pip_packages"]
    assert h.spec("pallets/flask", "2.3")["python"] == "3.11"  # type: ignore[index]
    assert h.spec("django/django", "0.0") is None and h.spec("no/such", "1.0") is None
    assert not [m for m in sys.modules if m == "swebench" or m.startswith("swebench.")]  # loaded privately
    with pytest.raises(HarnessUnavailable):  # their GitHub download is a stand-in that refuses, never a request
        h.scripts.get_requirements_by_commit("django/django", "abc")


def test_test_directives_are_swebench_s(h: Harness) -> None:
    patch = ("diff --git a/tests/admin_views/tests.py b/tests/admin_views/tests.py\n"
             "diff --git a/tests/admin_views/fixtures/data.json b/tests/admin_views/fixtures/data.json\n")
    assert h.test_directives("django/django", patch) == ["admin_views.tests"]
    sym = "diff --git a/sympy/core/tests/test_basic.py b/sympy/core/tests/test_basic.py\n"
    assert h.test_directives("sympy/sympy", sym) == ["sympy/core/tests/test_basic.py"]


DJANGO_LOG = """>>>>> Start Test Output
Testing against Django installed in '/testbed/django'
test_changelist (admin_views.tests.AdminViewBasicTest) ... ok
test_delete_view (admin_views.tests.AdminViewBasicTest) ... FAIL
test_history_view (admin_views.tests.AdminViewBasicTest) ... ERROR
test_lang_name_present (admin_views.tests.AdminViewBasicTest) ... skipped 'no translations'
test_multiline (admin_views.tests.AdminViewBasicTest) ... Internal noise
ok
>>>>> End Test Output
"""
SYMPY_LOG = """>>>>> Start Test Output
============================= test process starts ==============================
sympy/core/tests/test_basic.py[3]
test_structure ok
test_equality F
test_matches_basic E
________________________________________________________________________________
________________ sympy/core/tests/test_basic.py:test_equality _________________
>>>>> End Test Output
"""
PYTEST_LOG = """>>>>> Start Test Output
PASSED testing/test_mark.py::test_a
FAILED testing/test_mark.py::test_b - AssertionError: boom
SKIPPED [1] testing/test_mark.py:12: no
XFAIL testing/test_mark.py::test_c
>>>>> End Test Output
"""


@pytest.mark.parametrize(("repo", "log", "expected"), [
    ("django/django", DJANGO_LOG, {
        "test_changelist (admin_views.tests.AdminViewBasicTest)": "PASSED",
        "test_delete_view (admin_views.tests.AdminViewBasicTest)": "FAILED",
        "test_history_view (admin_views.tests.AdminViewBasicTest)": "ERROR",
        "test_lang_name_present (admin_views.tests.AdminViewBasicTest)": "SKIPPED",
        "test_multiline (admin_views.tests.AdminViewBasicTest)": "PASSED"}),
    ("sympy/sympy", SYMPY_LOG, {"test_structure": "PASSED", "test_equality": "FAILED",
                                "test_matches_basic": "ERROR",
                                "sympy/core/tests/test_basic.py:test_equality": "FAILED"}),
    ("pytest-dev/pytest", PYTEST_LOG, {"testing/test_mark.py::test_a": "PASSED",
                                       "testing/test_mark.py::test_b": "FAILED",
                                       "testing/test_mark.py::test_c": "XFAIL"}),
], ids=["django-runtests", "sympy-bin-test", "pytest"])
def test_grading_parses_with_the_repo_s_own_parser(h: Harness, repo: str, log: str, expected: dict[str, str]) -> None:
    task = Task(instance_id="x", repo=repo, log_parser=repo, problem_statement="p")
    got = parse_task_output(task, "noise before\n" + log + "noise after\n")
    assert {k: got.get(k) for k in expected} == expected
    if repo != "pytest-dev/pytest":  # the pytest -rA reader alone would find none of these
        assert not set(parse_task_output(Task(instance_id="x", repo=repo, problem_statement="p"), log)) & set(expected)


def test_spec_fills_python_test_command_and_parser(h: Harness, tmp_path: Path) -> None:
    patch = "diff --git a/tests/test_requests.py b/tests/test_requests.py\n"
    task = Task(instance_id="psf__requests-1", repo="psf/requests", version="2.0", test_patch=patch, test_env="venv",
                problem_statement="p", spec_source="swebench")
    spec = with_env_spec(task, WorktreePool(tmp_path))
    extra = spec.model_extra or {}
    assert extra["python"] == "3.9" and extra["log_parser"] == "psf/requests" and extra["env_spec"]["python"] == "3.9"
    assert spec.test_files == ["tests/test_requests.py"]
    cmd = spec.test_cmd or ""
    assert "HTTPBIN_URL" in cmd and "127.0.0.1" in cmd and "pytest -rA {tests}" in cmd
    assert cmd.format(python="p", tests="T").count("pytest -rA T") == 1
    plain = Task(instance_id="y", repo="local/x", test_env="venv", problem_statement="p", spec_source="swebench")
    assert with_env_spec(plain, WorktreePool(tmp_path)).test_cmd is None  # no spec: left as it was
    unmarked = Task.model_validate({**task.model_dump(), "spec_source": None})  # not from a SWE-bench source
    assert with_env_spec(unmarked, WorktreePool(tmp_path)).test_cmd is None


def test_version_is_derived_from_the_checkout(h: Harness, tmp_path: Path) -> None:
    """Lite ships no version for 207 instances: SWE-bench's version files and patterns, or the last tag."""
    dj = tmp_path / "django"
    (dj / "django").mkdir(parents=True)
    (dj / "django" / "__init__.py").write_text("from x import y\n\nVERSION = (3, 0, 0, 'alpha', 0)\n")
    _git(dj, "init", "-q")
    _git(dj, "add", "-A")
    _git(dj, "commit", "-qm", "base")
    task = Task(instance_id="django__django-1", repo="django/django", repo_path=str(dj),
                base_commit=_git(dj, "rev-parse", "HEAD"), test_env="venv", problem_statement="p",
                spec_source="swebench")
    assert derived_version(task, WorktreePool(tmp_path / "c1"), h) == "3.0"
    assert (with_env_spec(task, WorktreePool(tmp_path / "c1")).model_extra or {})["python"] == "3.6"
    pt = tmp_path / "pytest"
    pt.mkdir()
    (pt / "setup.py").write_text("")
    _git(pt, "init", "-q")
    _git(pt, "add", "-A")
    _git(pt, "commit", "-qm", "base")
    _git(pt, "tag", "5.4.3")
    (pt / "x.py").write_text("")
    _git(pt, "add", "-A")
    _git(pt, "commit", "-qm", "later")
    task = Task(instance_id="pytest-dev__pytest-1", repo="pytest-dev/pytest", repo_path=str(pt),
                base_commit=_git(pt, "rev-parse", "HEAD"), test_env="venv", problem_statement="p",
                spec_source="swebench")
    assert derived_version(task, WorktreePool(tmp_path / "c2"), h) == "5.4"


def test_system_steps_are_checked_not_run() -> None:
    assert classify_step("sed -i 's/pytest/pytest -rA/' tox.ini") == ("run", "")
    verdict, why = classify_step("apt-get update && apt-get install -y no-such-package-zz9")
    assert verdict == "unsupported" and "no-such-package-zz9" in why
    assert classify_step('wget -O "$QHULL_TAR" "$QHULL_URL"')[0] == "unsupported"
    assert conda_to_pip("numpy=1.19") == "numpy==1.19.*" and conda_to_pip("python=3.9") is None
    assert conda_to_pip("'numpy==1.19.2'") == "numpy==1.19.2" and conda_to_pip("pandas<2.0.0") == "pandas<2.0.0"


def test_present_interpreter_is_found() -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = interpreters.find_python(version)
    assert found is not None
    out = subprocess.run([str(found), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True).stdout.strip()
    assert out == version


def test_missing_interpreter_marks_the_instance_invalid_with_how_to_get_it(demo_task: Task, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_selfevolve.validate import validate_one

    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "no-uv"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(interpreters.MissingInterpreter, match=r"pyenv install 3\.4"):
        interpreters.require_python("3.4")
    task = Task.model_validate({**demo_task.model_dump(), "test_env": "venv", "python": "3.4"})
    report = grade(task, task.patch)
    assert not report.resolved and "Python 3.4 is not installed" in report.error
    rec = validate_one(task.model_dump())
    assert not rec["valid"] and "Python 3.4" in rec["reason"] and "uv python install 3.4" in rec["reason"]


def test_static_coverage_names_what_blocks_an_instance(h: Harness) -> None:
    pythons = {"3.6": True, "3.9": True, "3.11": True}
    assert all(instance_coverage(h, "sympy/sympy", "1.1", pythons)[k] for k in ("spec", "python", "parser", "steps"))
    mpl = instance_coverage(h, "matplotlib/matplotlib", "3.5", pythons)
    assert mpl["spec"] and not mpl["steps"] and any("qhull" in p for p in mpl["problems"])
    missing = instance_coverage(h, "django/django", "3.0", {"3.6": False})
    assert not missing["python"] and "Python 3.6 not installed" in missing["problems"]
    assert not instance_coverage(h, "pallets/flask", "", pythons)["spec"]  # no version: not counted
