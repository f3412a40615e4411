"""Local evaluation the way SWE-bench grades a prediction.

Apply the model patch (git apply, then --3way, then `patch --fuzz`), reset the test files to the base commit,
apply the hidden `test_patch`, run the tests with `-rA`, parse each test's status. Resolved means every
FAIL_TO_PASS test passes and every PASS_TO_PASS test still passes. Always in a fresh worktree, so what the
agent left behind (caches, stray files) cannot influence the grade.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.runner import CommandRunner
from agent_selfevolve.envs.worktree import WorktreePool, git
from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.infra import pid_alive
from agent_selfevolve.tasks import Task

DEFAULT_TEST_CMD = "{python} -m pytest --no-header -rA --tb=no -p no:cacheprovider {tests}"
START, END = ">>>>> Start Test Output", ">>>>> End Test Output"
# the test id is the first token after the status, as SWE-bench writes its ids
_STATUS = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS|SUBFAIL)\s+(\S+)(?:\s.*)?$")
_TEST_FILE = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|[^/]*_test\.py$|conftest\.py$)")


class PatchApplyError(RuntimeError):
    """No method could apply the patch; `log` holds what each method said."""

    def __init__(self, message: str, log: str):
        super().__init__(message)
        self.log = log


def patch_files(patch: str) -> list[str]:
    """Paths a unified diff touches (new side, or old side for deletions)."""
    files: list[str] = []
    for line in patch.splitlines():
        m = re.match(r"^diff --git a/(\S+) b/(\S+)", line)
        if m and m.group(2) not in files:
            files.append(m.group(2))
    return files


def is_test_file(path: str) -> bool:
    return bool(_TEST_FILE.search(path))


def apply_patch(worktree: Path, patch: str, name: str = "patch") -> str:
    """Apply `patch` in `worktree`, trying stricter methods first; return the one that worked."""
    if not patch.strip():
        raise PatchApplyError(f"{name} is empty", "")
    text = patch if patch.endswith("\n") else patch + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as fh:
        fh.write(text)
    log = []
    runner = CommandRunner(worktree, timeout_s=60, isolate=False)
    methods = {"git apply": f"git apply -v {fh.name}", "git apply --3way": f"git apply -v --3way {fh.name}",
               "patch --fuzz": f"patch --batch --forward --fuzz=5 -p1 -i {fh.name}"}
    try:
        for method, cmd in methods.items():
            result = runner.run(cmd)
            log.append(f"$ {cmd}\n{result.output}")
            if result.returncode == 0:
                return method
            git("checkout", "--", ".", cwd=worktree, check=False)
            git("clean", "-fdq", cwd=worktree, check=False)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    raise PatchApplyError(f"{name} does not apply ({', '.join(methods)} all failed)", "\n".join(log))


def parse_test_output(output: str) -> dict[str, str]:
    """pytest -rA short summary lines -> {test id: status}."""
    if START in output:
        output = output.split(START, 1)[1].split(END, 1)[0]
    status: dict[str, str] = {}
    for line in output.splitlines():
        m = _STATUS.match(line.strip())
        # a failed subtest is reported before its test's PASSED line: the failure stands
        if m and not (status.get(m.group(2)) in ("FAILED", "ERROR", "SUBFAIL") and m.group(1) == "PASSED"):
            status[m.group(2)] = m.group(1)
    return status


def parse_task_output(task: Task, output: str) -> dict[str, str]:
    """SWE-bench's own log parser when the task names one (`log_parser`: its repo), else pytest -rA lines."""
    parser = (task.model_extra or {}).get("log_parser")
    if parser:
        from agent_selfevolve.envs.swebench_harness import parse_log

        return parse_log(str(parser), output)
    return parse_test_output(output)


def test_command(task: Task, tests: list[str], python: str | None = None) -> str:
    """The shell command that runs `tests` for `task`: its own `test_cmd`, else pytest -rA."""
    return (task.test_cmd or DEFAULT_TEST_CMD).format(python=shlex.quote(python or sys.executable),
                                                      tests=" ".join(shlex.quote(t) for t in tests))


@dataclass
class GradeReport:
    instance_id: str
    patch_exists: bool
    patch_applied: bool
    resolved: bool
    tests_status: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    apply_method: str = ""
    error: str = ""
    test_output: str = ""

    def swebench(self) -> dict[str, Any]:
        """The per-instance report.json shape of SWE-bench's harness."""
        return {self.instance_id: {
            "patch_is_None": not self.patch_exists, "patch_exists": self.patch_exists,
            "patch_successfully_applied": self.patch_applied, "resolved": self.resolved,
            "tests_status": self.tests_status, **({"error": self.error} if self.error else {})}}


def _passed(status: str | None) -> bool:
    return status in ("PASSED", "XFAIL")


def test_files_of(task: Task) -> list[str]:
    """The task's test files, else the Python files its test_patch touches (not data such as a .toml fixture,
    which pytest refuses as an argument: "found no collectors", and nothing runs)."""
    return task.test_files or [f for f in patch_files(task.test_patch) if f.endswith(".py")]


SCRATCH = ".scratch-"


def scratch_checkout(task: Task, pool: WorktreePool, prefix: str) -> Path:
    """A throwaway checkout (grading, proxy reward) named with its owner's pid. Those whose owner is gone (killed
    mid-grading: its `finally` never ran) are removed first, so a crash never leaves one in the cache for good."""
    root = pool.root / "worktrees"
    for stale in root.glob(f"*{SCRATCH}*") if root.exists() else []:
        owner = stale.name.rsplit(SCRATCH, 1)[1].split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            pool.remove(stale)
    return pool.create(task, f"{prefix}{SCRATCH}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _apply_hidden_tests(path: Path, test_patch: str) -> None:
    """Apply the hidden test patch; the hidden tests win over whatever the model wrote at those paths."""
    touched = patch_files(test_patch)
    at_base = set(git("ls-tree", "-r", "--name-only", "HEAD", "--", *touched, cwd=path).split())
    for f in touched:
        if f in at_base:
            git("checkout", "HEAD", "--", f, cwd=path)
        else:
            (path / f).unlink(missing_ok=True)
    apply_patch(path, test_patch, "test_patch")


def _buckets(task: Task, status: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """SWE-bench's tests_status: which FAIL_TO_PASS and PASS_TO_PASS tests passed."""
    buckets: dict[str, dict[str, list[str]]] = {}
    for group, expected in (("FAIL_TO_PASS", task.FAIL_TO_PASS), ("PASS_TO_PASS", task.PASS_TO_PASS)):
        ok = [t for t in expected if _passed(status.get(t))]
        buckets[group] = {"success": ok, "failure": [t for t in expected if t not in ok]}
    buckets["FAIL_TO_FAIL"] = {"success": [], "failure": []}
    buckets["PASS_TO_FAIL"] = {"success": [], "failure": []}
    return buckets


def grade(task: Task, model_patch: str, pool: WorktreePool | None = None, timeout_s: float = 600,
          with_test_patch: bool = True, python: str | None = None) -> GradeReport:
    """Grade `model_patch` against the task's hidden tests in a fresh worktree.

    `python` formats `{python}` in the test command (default: this interpreter, or the task's own venv when
    the task has `test_env: "venv"`, see envs/pyenv.py).
    """
    from agent_selfevolve.envs import pyenv

    timeout_s = task.timeout_within(timeout_s)

    pool = pool or WorktreePool()
    report = GradeReport(task.instance_id, bool(model_patch.strip()), False, False)
    env_dir: Path | None = None
    if python is None and pyenv.wants_test_env(task):
        try:
            task = pyenv.with_env_spec(task, pool)  # SWE-bench's spec: its Python, test command, parser
            env_dir = pyenv.test_env_for(task, pool.root, pool)
        except pyenv.EnvBuildError as exc:
            report.error = str(exc).splitlines()[0][:500]
            report.test_output = str(exc)
            return report
        python = str(pyenv.venv_python(env_dir)) if env_dir else None
    path = scratch_checkout(task, pool, f"grade-{task.instance_id}")
    try:
        if report.patch_exists:
            try:
                report.apply_method = apply_patch(path, model_patch, "model patch")
                report.patch_applied = True
            except PatchApplyError as exc:
                report.error, report.test_output = str(exc), exc.log
                return report
        tests = test_files_of(task)
        if with_test_patch and task.test_patch:
            _apply_hidden_tests(path, task.test_patch)
        cmd = test_command(task, tests, python)
        run_env = None
        if env_dir is not None:  # the sandbox binds the env's venv read-only, wherever the cache lies
            pyenv.overlay_build_outputs(env_dir, path)
            run_env = pyenv.runner_env(env_dir, path)
        result = CommandRunner(path, timeout_s=timeout_s, max_output_chars=2_000_000, env=run_env).run(
            f"echo '{START}'; {cmd}; echo '{END}'")
        report.test_output = result.output
        status = parse_task_output(task, result.output)
        if result.timed_out:
            report.error = f"tests timed out after {timeout_s:g} s"
        report.tests_status = buckets = _buckets(task, status)
        report.resolved = (report.patch_exists or not task.FAIL_TO_PASS) and not buckets["FAIL_TO_PASS"]["failure"] \
            and not buckets["PASS_TO_PASS"]["failure"] and not result.timed_out
        return report
    finally:
        pool.remove(path)


def write_report(report: GradeReport, out_dir: Path) -> Path:
    """`<out_dir>/<instance_id>/report.json`, written atomically."""
    return write_json_atomic(Path(out_dir) / report.instance_id / "report.json", report.swebench())
