"""Per-repository test environments without Docker: one virtualenv per (repo, version), built once, cached.

SWE-bench grades each instance in a Docker image with the repo's dependencies installed. Here the closest
thing that needs no Docker: `python -m venv` from the running interpreter and an editable install of a checkout
owned by the env (at `environment_setup_commit`, else the task's base commit). Unpinned dependencies resolve
as of the commit's date (uv's `--exclude-newer`; today's Werkzeug breaks 2021's Flask), falling back to newer
cutoffs when that fails; pytest and build requirements are no older than the running Python. Without uv
(it is pip-installed into the cache on first use) it is plain `pip install -e .`.

Grading then runs the tests in its own fresh worktree with that venv's python, the worktree first on
PYTHONPATH (the code under test is the graded one, not the env's checkout), and ignored build outputs of the
env's checkout (generated `_version.py`, built `.so` files) copied in where the worktree lacks them.

A task asks for this with the field `test_env: "venv"`; optional hints: `pip_packages` (list or string,
installed first, as given) and `install_cmd` (shell, run in the checkout with the venv first on PATH; replaces
the default install). Builds need the package index; tests later run without network. A failed build is
remembered (`failed.json`) so a batch does not rebuild the same broken env for every instance; delete it
to retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_selfevolve.envs import interpreters
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.fileio import file_lock
from agent_selfevolve.infra import GitError, cache_root, git
from agent_selfevolve.tasks import Task

DEP_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "requirements.txt", "requirements", "requirements-dev.txt",
             "test-requirements.txt", "tox.ini", "environment.yml")
"""Files whose content decides the dependencies: tasks without a `version` share an env when these match."""
TEST_REQUIREMENT_FILES = ("requirements/tests.in", "requirements/tests.txt", "requirements/test.in",
                          "requirements/test.txt", "requirements/testing.txt", "requirements-test.txt",
                          "requirements-tests.txt", "requirements_test.txt", "test-requirements.txt",
                          "requirements/dev.txt", "requirements-dev.txt", "requirements.txt")
"""Where repos list what their tests need (python-dotenv for Flask's CLI tests): installed best effort."""
NOT_TEST_REQUIREMENTS = frozenset({"py", "pip", "setuptools", "wheel"})
"""Never taken from those files: `py` (an old copy shadows the `py` shim of today's pytest), packaging tools."""
BUILD_OUTPUT_SUFFIXES = (".so", ".pyd", ".py")
SKIP_OUTPUT_DIRS = ("build/", "dist/", ".eggs/", ".tox/", ".nox/", "node_modules/", ".git/")
DEFAULT_INSTALL = "python -m pip install -e ."
INSTALLER_ENV = "AGENT_SELFEVOLVE_ENV_INSTALLER"
"""`auto` (uv when it can be had, else pip), or `pip`."""
PYTHON_RELEASED = {(3, 6): "2016-12-23", (3, 7): "2018-06-27", (3, 8): "2019-10-14", (3, 9): "2020-10-05",
                   (3, 10): "2021-10-04", (3, 11): "2022-10-24", (3, 12): "2023-10-02", (3, 13): "2024-10-07",
                   (3, 14): "2025-10-07"}
"""Release dates: tools (pytest, build deps) older than the running Python mostly do not run on it."""


class EnvBuildError(RuntimeError):
    """The task's test environment could not be built; the message ends with the failing command's output."""


def wants_test_env(task: Task) -> bool:
    return (task.model_extra or {}).get("test_env") == "venv"


def _hint(task: Task, name: str) -> Any:
    return (task.model_extra or {}).get(name)


def target_python(task: Task) -> str:
    """The CPython X.Y the task's env uses: its `python` field (from its SWE-bench spec), else the running one."""
    return str(_hint(task, "python") or f"{sys.version_info.major}.{sys.version_info.minor}")


def env_key(task: Task, pool: WorktreePool) -> str:
    """`<repo>-<version>-py39` (the env's Python); without a version, a hash of the dependency files at the base
    commit and of the task's install hints."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", task.repo or Path(task.repo_path or "repo").name).strip("_")
    py = "py" + target_python(task).replace(".", "")
    if task.version:
        return f"{slug}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', task.version)}-{py}"
    listing = git("ls-tree", task.base_commit or "HEAD", "--", *DEP_FILES, cwd=pool.mirror(task))
    hints = json.dumps([_hint(task, "pip_packages"), _hint(task, "install_cmd"), _hint(task, "env_spec")],
                       sort_keys=True)
    return f"{slug}-deps{hashlib.sha1((listing + hints).encode()).hexdigest()[:10]}-{py}"


def venv_python(env: Path) -> Path:
    return Path(env) / "venv" / "bin" / "python"


def test_env_for(task: Task, cache_dir: str | Path | None = None, pool: WorktreePool | None = None,
                 timeout_s: float = 1800) -> Path | None:
    """The env directory for the task (built on first use), or None when the task does not ask for one."""
    if not wants_test_env(task):
        return None
    from agent_selfevolve.envs.swebench_env import with_env_spec

    root = cache_root(cache_dir)
    pool = pool or WorktreePool(root)
    try:
        task = with_env_spec(task, pool)
        key = env_key(task, pool)
    except GitError as exc:  # RepoError included
        raise EnvBuildError(f"test env for {task.instance_id}: {exc}") from exc
    env = root / "envs" / key
    if (env / "ready.json").exists():
        return env
    with file_lock(root / "locks" / f"env-{key}.lock"):
        if (env / "ready.json").exists():
            return env
        failed = env / "failed.json"
        if failed.exists():
            reason = json.loads(failed.read_text(encoding="utf-8")).get("reason", "unknown")
            raise EnvBuildError(f"test env {key} failed before (delete {failed} to retry): {reason}")
        try:  # a missing Python is the host's to fix, not remembered as a failed build
            python = interpreters.require_python(target_python(task))
        except interpreters.MissingInterpreter as exc:
            raise EnvBuildError(f"test env for {task.instance_id}: {exc}") from exc
        _build(task, env, pool, timeout_s, python)
    return env


def _run(argv: list[str] | str, cwd: Path, log: Path, timeout_s: float, env: dict[str, str]) -> None:
    shown = argv if isinstance(argv, str) else shlex.join(argv)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shown}\n")
        fh.flush()
        try:
            proc = subprocess.run(argv, cwd=cwd, shell=isinstance(argv, str), stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as exc:
            raise EnvBuildError(f"`{shown}` timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise EnvBuildError(f"`{shown}` exited {proc.returncode}:\n{tail}")


def uv_binary(root: Path) -> Path | None:
    """uv, installed once into `<cache>/tools/uv` with `pip install --target` (no change to this environment)."""
    binary = root / "tools" / "uv" / "bin" / "uv"
    if not binary.exists():
        with file_lock(root / "locks" / "uv.lock"):
            if not binary.exists():
                tmp = binary.parents[1].with_name("uv.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                       "--target", str(tmp), "uv"], capture_output=True, timeout=600)
                if proc.returncode == 0 and (tmp / "bin" / "uv").exists():
                    tmp.rename(binary.parents[1])
                shutil.rmtree(tmp, ignore_errors=True)
    if binary.exists():
        return binary
    found = shutil.which("uv")
    return Path(found) if found else None


def build_requires(src: Path) -> list[str]:
    """`[build-system].requires` of the checkout: builds run without isolation, so they go into the venv."""
    import tomllib

    try:
        data = tomllib.loads((src / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(r) for r in data.get("build-system", {}).get("requires", [])]


def test_requirements(src: Path) -> list[str]:
    """Names (with extras and markers, without version pins) from the first test requirements file found.

    Pins are dropped: a 2021 pin of pytest does not run on Python 3.11; the date cutoff picks versions instead.
    """
    for rel in TEST_REQUIREMENT_FILES:
        path = src / rel
        if not path.is_file():
            continue
        names: list[str] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.split(" #", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?[^;]*(;.*)?$", line)
            if m and not line.startswith(("-", "#", ".", "/")) and "://" not in line and "@" not in line \
                    and m.group(1).lower() not in NOT_TEST_REQUIREMENTS:
                names.append(f"{m.group(1)}{m.group(2) or ''}{' ' + m.group(3) if m.group(3) else ''}")
        return names
    return []


def _first_that_installs(cmd: list[str], cutoffs: list[str | None], cwd: Path, log: Path, timeout_s: float,
                         env: dict[str, str]) -> str | None:
    """Try `cmd` with each `--exclude-newer` cutoff in turn (None: no cutoff); return the one that worked."""
    error: EnvBuildError | None = None
    for cutoff in dict.fromkeys(cutoffs):
        try:
            _run([*cmd, *(["--exclude-newer", cutoff] if cutoff else [])], cwd, log, timeout_s, env)
            return cutoff
        except EnvBuildError as exc:
            error = exc
    assert error is not None
    raise error


def _distributions(py: str, env: dict[str, str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    proc = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _pytest_starts(py: str, env: dict[str, str]) -> str:
    """'' when pytest starts with every installed plugin loaded, else its last error line."""
    with tempfile.TemporaryDirectory() as empty:
        proc = subprocess.run([py, "-m", "pytest", "-q", "--co", "-p", "no:cacheprovider"], cwd=empty,
                              capture_output=True, text=True, env={**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": ""},
                              timeout=300)
    if proc.returncode in (0, 5):  # 5: no tests collected, as expected in an empty directory
        return ""
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _add_test_requirements(uv: Path, py: str, names: list[str], cutoffs: list[str | None], env_dir: Path,
                           timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    """Best effort: install them; undo it if that fails or leaves pytest unable to start (a rotted plugin).

    Mostly pytest plugins, so they must work with the pytest installed before: its cutoff comes first.
    """
    uvi = [str(uv), "pip", "install", "-q", "--python", py]
    before = _distributions(py, env)
    try:
        _first_that_installs([*uvi, *names], cutoffs, env_dir / "src", env_dir / "build.log", timeout_s, env)
    except EnvBuildError as exc:
        return {"test_requirements_error": str(exc).splitlines()[0]}
    problem = _pytest_starts(py, env)
    if not problem:
        return {"test_requirements": names}
    after = _distributions(py, env)
    added = sorted(set(after) - set(before))
    changed = [f"{n}=={v}" for n, v in before.items() if n in after and after[n] != v]
    log, src = env_dir / "build.log", env_dir / "src"
    if added:
        _run([str(uv), "pip", "uninstall", "-q", "--python", py, *added], src, log, timeout_s, env)
    if changed:
        _run([*uvi, "--no-build-isolation", *changed], src, log, timeout_s, env)
    return {"test_requirements_error": f"pytest did not start with them, removed again: {problem[:300]}"}


def _install(task: Task, env: Path, commit_date: str, timeout_s: float, run_env: dict[str, str]) -> dict[str, Any]:
    """Install into the venv (by the task's SWE-bench spec when it has one); return how (recorded in ready.json)."""
    src, log, py = env / "src", env / "build.log", str(venv_python(env))
    extra = _hint(task, "pip_packages")
    packages = shlex.split(extra) if isinstance(extra, str) else list(extra or [])
    choice = os.environ.get(INSTALLER_ENV, "auto")
    uv = uv_binary(env.parents[1]) if choice != "pip" and not _hint(task, "install_cmd") else None
    target = tuple(int(x) for x in target_python(task).split("."))
    if isinstance(_hint(task, "env_spec"), dict):
        from agent_selfevolve.envs.swebench_env import install_from_spec

        return install_from_spec(task, env, py, uv, (target[0], target[1]), timeout_s, run_env)
    if uv is None:
        pip = [py, "-m", "pip", "install", "-q"]
        if packages:
            _run([*pip, *packages], src, log, timeout_s, run_env)
        _run(str(_hint(task, "install_cmd") or DEFAULT_INSTALL), src, log, timeout_s, run_env)
        how: dict[str, Any] = {"installer": "pip"}
    else:
        # Unpinned dependencies resolve as of the commit's date (what its CI saw); tools (build deps, pytest)
        # no older than this Python, whose oldest releases do not run on it.
        floor = PYTHON_RELEASED.get((target[0], target[1]), "")
        tool_cutoff = floor if floor > commit_date[:10] else commit_date
        uvi = [str(uv), "pip", "install", "-q", "--python", py]
        _run([*uvi, "wheel"], src, log, timeout_s, run_env)
        if requires := build_requires(src):
            _first_that_installs([*uvi, *requires], [tool_cutoff, None], src, log, timeout_s, run_env)
        _first_that_installs([*uvi, "pytest"], [tool_cutoff, None], src, log, timeout_s, run_env)
        if packages:
            _run([*uvi, *packages], src, log, timeout_s, run_env)
        used = _first_that_installs([*uvi, "--no-build-isolation", "-e", "."], [commit_date, tool_cutoff, None],
                                    src, log, timeout_s, run_env)
        how = {"installer": "uv", "exclude_newer": used, "commit_date": commit_date}
        if extra_tests := test_requirements(src):
            how.update(_add_test_requirements(uv, py, extra_tests, [tool_cutoff, used], env, timeout_s, run_env))
    if subprocess.run([py, "-c", "import pytest"], capture_output=True, env=run_env).returncode != 0:
        _run([py, "-m", "pip", "install", "-q", "pytest"], src, log, timeout_s, run_env)
    return how


def _build(task: Task, env: Path, pool: WorktreePool, timeout_s: float, python: Path) -> None:
    mirror = pool.mirror(task)
    _remove_env(env, mirror)
    env.mkdir(parents=True)
    commit = task.base_commit or "HEAD"
    if task.environment_setup_commit and git("cat-file", "-t", task.environment_setup_commit, cwd=mirror,
                                             check=False).strip() == "commit":
        commit = task.environment_setup_commit
    start = time.monotonic()
    bin_dir = venv_python(env).parent
    run_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
               "VIRTUAL_ENV": str(env / "venv"), "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run_env.pop("PYTHONPATH", None)
    run_env.pop("PYTHONHOME", None)
    try:
        commit_date = git("show", "-s", "--format=%cI", commit, cwd=mirror).strip()
        with file_lock(mirror / "worktree.lock"):
            git("worktree", "add", "--quiet", "--force", "--detach", str(env / "src"), commit, cwd=mirror)
        _run([str(python), "-m", "venv", str(env / "venv")], env, env / "build.log", 300, run_env)
        how = _install(task, env, commit_date, timeout_s, run_env)
    except (EnvBuildError, GitError) as exc:
        reason = f"{exc} (log: {env / 'build.log'})"
        (env / "failed.json").write_text(json.dumps({"reason": reason, "commit": commit,
                                                     "elapsed_s": round(time.monotonic() - start, 1)}, indent=2))
        raise EnvBuildError(f"test env for {task.instance_id}: {reason}") from exc
    freeze = subprocess.run([str(venv_python(env)), "-m", "pip", "freeze"], capture_output=True, text=True,
                            env=run_env).stdout.split()
    (env / "ready.json").write_text(json.dumps({"python": str(venv_python(env)), "base_python": str(python),
                                                "python_version": target_python(task), "commit": commit,
                                                "repo": task.repo, "version": task.version, **how,
                                                "packages": freeze, "elapsed_s": round(time.monotonic() - start, 1)},
                                               indent=2))


def _remove_env(env: Path, mirror: Path) -> None:
    """Clear a half-built env (a crash mid-build) and its worktree registration."""
    if env.exists():
        shutil.rmtree(env, ignore_errors=True)
        with file_lock(mirror / "worktree.lock"):
            git("worktree", "prune", cwd=mirror, check=False)


def overlay_build_outputs(env: Path, worktree: Path) -> int:
    """Copy git-ignored build outputs of the env's checkout (`_version.py`, `.so`) that `worktree` lacks."""
    src = Path(env) / "src"
    if not src.exists():
        return 0
    listed = git("ls-files", "--others", "--ignored", "--exclude-standard", "-z", cwd=src, check=False)
    copied = 0
    for rel in filter(None, listed.split("\0")):
        if not rel.endswith(BUILD_OUTPUT_SUFFIXES) or rel.startswith(SKIP_OUTPUT_DIRS) or "__pycache__" in rel \
                or ".egg-info/" in rel:
            continue
        target = Path(worktree) / rel
        if not target.exists() and target.parent.is_dir():
            shutil.copy2(src / rel, target)
            copied += 1
    return copied


def runner_env(env: Path, worktree: Path) -> dict[str, str]:
    """Variables for running the tests: the venv first on PATH, the graded worktree first on PYTHONPATH.

    The sandbox (envs/runner.py) binds the VIRTUAL_ENV given here read-only, wherever the cache lies (/tmp too);
    the env's own checkout stays hidden: the graded code is the worktree's, build outputs are copied in."""
    worktree = Path(worktree)
    roots = [str(worktree / "src")] if (worktree / "src").is_dir() else []
    roots.append(str(worktree))
    # A per-repo venv holds exactly the repo's pytest plugins, which its tests may need: let them load.
    return {"PATH": f"{venv_python(env).parent}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(Path(env) / "venv"),
            "PYTHONPATH": os.pathsep.join(roots), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": ""}


test_env_for.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name


def with_env_spec(task: Task, pool: WorktreePool) -> Task:
    """The task with its SWE-bench spec applied (see envs/swebench_env.py); unchanged without one."""
    from agent_selfevolve.envs.swebench_env import with_env_spec as apply

    return apply(task, pool)
