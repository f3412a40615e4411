"""Test environments from SWE-bench's own per-(repo, version) specs, without Docker or conda.

A spec (see envs/swebench_harness.py) says which Python, which packages (a conda package list, the repo's
requirements file, or its conda environment.yml), which pip pins, which pre-install and install commands, and
which test command. Here each step is carried out in a virtualenv of the requested CPython, or, where it needs
what only SWE-bench's images have, is checked against the host and reported:

- conda package lists and environment.yml dependencies become pip requirements (`name=1.2` -> `name==1.2.*`);
  the ones pip cannot install are listed in ready.json, the rest of the build goes on;
- `apt-get install ...` is satisfied when dpkg says the packages are installed here, else skipped and named;
  `locale-gen` likewise when the locale exists; downloads from non-PyPI URLs (qhull) are skipped;
- everything else (`sed` on tox.ini/setup.py, `pip install -e .[test]`) runs as written, in the env's checkout.

Unpinned requirements resolve as of `SPEC_CUTOFF` (uv's --exclude-newer): today's releases would not be what
the specs were tested with. SWE-bench's specs apply to tasks marked `spec_source: "swebench"` (the SWE-bench
sources set it); a task may instead carry its own `env_spec` (same keys).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_selfevolve.envs import httpbin
from agent_selfevolve.envs.pyenv import EnvBuildError, _first_that_installs, _run
from agent_selfevolve.envs.swebench_harness import Harness, harness
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.infra import GitError, PackageDataError, cache_root, git
from agent_selfevolve.tasks import Task

SPEC_CUTOFF = "2024-07-01"
"""SWE-bench's Docker harness (with these specs) built its env images from mid-2024; resolve unpinned ones so."""
TAG_VERSIONED = frozenset({"pytest-dev/pytest", "matplotlib/matplotlib", "pydata/xarray", "astropy/astropy"})
"""Their version comes from a build (setuptools-scm), i.e. the last tag: `git describe` gives major.minor."""
_SYSTEM_STEP = re.compile(r"\b(apt-get|apt|locale-gen|wget|curl)\b|/etc/locale\.gen|^QHULL_\w+=")


_UNAVAILABLE: dict[str, str] = {}
"""cache root -> why the wheel could not be had: asked once per process, not once per grade (pip retries)."""


def _harness() -> Harness | None:
    root = str(cache_root())
    if root in _UNAVAILABLE:
        return None
    try:
        return harness()
    except PackageDataError as exc:
        _UNAVAILABLE[root] = str(exc)
        print(f"warning: SWE-bench specs unavailable ({exc}); grading with generic envs", file=sys.stderr)
        return None


def derived_version(task: Task, pool: WorktreePool, h: Harness) -> str | None:
    """SWE-bench's `version` from the checkout at the base commit (Lite ships none for 207 instances)."""
    mirror, commit = pool.mirror(task), task.base_commit or "HEAD"

    def read(path: str) -> str | None:
        out = git("show", f"{commit}:{path}", cwd=mirror, check=False)
        return out or None

    found = h.version_from_files(task.repo, read)
    if found is None and task.repo in TAG_VERSIONED:
        tag = git("describe", "--tags", "--abbrev=0", commit, cwd=mirror, check=False).strip()
        m = re.search(r"(\d+)\.(\d+)", tag)
        found = f"{m.group(1)}.{m.group(2)}" if m else None
    return found or None


def test_command_for(spec: dict[str, Any], repo: str) -> str:
    """`test_cmd` template (`{tests}` = the directives): the spec's exports, its test command, a local httpbin."""
    raw = spec["test_cmd"][-1] if isinstance(spec["test_cmd"], list) else spec["test_cmd"]
    exports = [c for c in spec.get("eval_commands", []) if c.startswith("export ")]
    if "en_us.utf8" not in _locales() and "c.utf8" in _locales():  # see classify_step
        exports = [re.sub(r"=en_US\.UTF-8\b", "=C.UTF-8", c) for c in exports]
    cmd = "; ".join([*exports, f"{raw} \0TESTS\0"])
    if repo in httpbin.REPOS:
        cmd = httpbin.with_local_httpbin(cmd)
    return cmd.replace("{", "{{").replace("}", "}}").replace("\0TESTS\0", "{tests}")


def with_env_spec(task: Task, pool: WorktreePool) -> Task:
    """The task with what its spec decides filled in (fields it sets itself win): `version` (derived when
    missing), `python`, `test_cmd`, `test_files` (SWE-bench's directives) and `log_parser` (the repo, when SWE-bench
    has a parser for it). Tasks without a spec come back unchanged."""
    extra = dict(task.model_extra or {})
    if extra.get("test_env") != "venv" or extra.get("env_spec_applied"):
        return task
    spec, version = extra.get("env_spec"), task.version
    h = _harness() if not isinstance(spec, dict) and extra.get("spec_source") == "swebench" else None
    if h is not None and task.repo in h.specs:
        try:
            version = version or derived_version(task, pool, h) or ""
        except GitError:  # no repository to read it from: the env build reports that, with its reason
            return task
        spec = h.spec(task.repo, version)
    if not isinstance(spec, dict):
        return task
    data = task.model_dump()
    data.update(env_spec=spec, env_spec_applied=True, version=version)
    data.setdefault("python", spec.get("python"))
    if not task.test_cmd and spec.get("test_cmd"):
        data["test_cmd"] = test_command_for(spec, task.repo)
        if not task.test_files:
            data["test_files"] = (h.test_directives(task.repo, task.test_patch) if h
                                  else [f for f in re.findall(r"diff --git a/.* b/(.*)", task.test_patch)])
    if h is not None and task.repo in h.parsers and not extra.get("log_parser"):
        data["log_parser"] = task.repo
    return Task.model_validate(data)


def conda_to_pip(spec: str) -> str | None:
    """A conda dependency as a pip requirement; None for what is not a package here (python itself, pip)."""
    spec = spec.strip().strip("'\"")
    name = re.split(r"[=<>!~ ]", spec, maxsplit=1)[0]
    if not name or name.lower() in ("python", "pip"):
        return None
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)=([^=<>!~,]+?)(=\S+)?", spec)  # name=1.2 or name=1.2=build
    if m:
        return f"{m.group(1)}=={m.group(2)}" if "*" in m.group(2) else f"{m.group(1)}=={m.group(2)}.*"
    return spec


def requirements_from_checkout(h: Harness, repo: str, src: Path) -> list[str]:
    """The repo's requirements file as SWE-bench reads it (first path of theirs that exists; `-r` followed; no
    `-e .`, comments or `.[test`), from the checkout instead of GitHub, with their yanked-package replacements."""
    for rel in h.requirements_paths(repo):
        path = src / rel
        if not path.is_file():
            continue
        lines: list[str] = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip().startswith("-r"):
                inc = path.parent / line.strip()[2:].strip()
                if inc.is_file():
                    lines += inc.read_text(encoding="utf-8", errors="replace").splitlines()
            else:
                lines.append(line)
        kept = [ln for ln in lines if ln.strip() and not ln.strip().startswith(("-e .", "#", ".[test"))]
        return [ln.strip() for ln in h.clean_requirements("\n".join(kept)).splitlines() if ln.strip()]
    return []


def environment_yml_requirements(h: Harness, repo: str, src: Path) -> list[str]:
    import yaml

    for rel in h.environment_yml_paths(repo):
        if (src / rel).is_file():
            data = yaml.safe_load((src / rel).read_text(encoding="utf-8")) or {}
            out: list[str] = []
            for dep in data.get("dependencies", []):
                if isinstance(dep, dict):
                    out += [str(p) for p in dep.get("pip", [])]
                elif (req := conda_to_pip(str(dep))) is not None:
                    out.append(req)
            return out
    return []


def classify_step(command: str) -> tuple[str, str]:
    """("run", "") for a step we run as written; ("satisfied" | "unsupported", why) for one needing the system."""
    if "apt-get" in command or re.search(r"\bapt\b", command):
        tail = command.split(" install ", 1)[1] if " install " in command else ""
        pkgs = [p for p in shlex.split(tail.replace("&&", " ")) if not p.startswith("-") and "=" not in p]
        missing = [p for p in pkgs if not _dpkg_installed(p)]
        if not missing:
            return "satisfied", f"apt packages already installed here: {' '.join(pkgs)}"
        return "unsupported", f"needs apt packages not installed here (no root, no Docker): {' '.join(missing)}"
    if "locale-gen" in command or "/etc/locale.gen" in command:
        have = _locales()
        if "en_us.utf8" in have:
            return "satisfied", "locale en_US.UTF-8 exists here"
        if "c.utf8" in have:  # the exports are rewritten to it (test_command_for): UTF-8 I/O, C collation
            return "satisfied", "locale en_US.UTF-8 is missing here (generating it needs root): C.UTF-8 instead"
        return "unsupported", "generates the en_US.UTF-8 locale (needs root); no UTF-8 locale here"
    if "QHULL" in command:
        return "unsupported", "downloads qhull from qhull.org (not the package index) for matplotlib's build"
    if _SYSTEM_STEP.search(command):
        return "unsupported", f"downloads outside the package index or sets up a system build: {command[:120]}"
    return "run", ""


@functools.lru_cache(maxsize=1)
def _locales() -> frozenset[str]:
    """Installed locales, lowercased, `utf-8` spelled `utf8` (as `locale -a` prints them)."""
    try:
        out = subprocess.run(["locale", "-a"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(line.strip().lower().replace("utf-8", "utf8") for line in out.splitlines())


def _dpkg_installed(pkg: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "install ok installed" in out.stdout


def _conda_packages(h: Harness | None, spec: dict[str, Any], repo: str, src: Path) -> tuple[str, list[str]]:
    pkgs = spec.get("packages", "")
    if pkgs == "requirements.txt":
        return "requirements", requirements_from_checkout(h, repo, src) if h else []
    if pkgs == "environment.yml":
        return "environment.yml", environment_yml_requirements(h, repo, src) if h else []
    return "conda packages", [r for p in shlex.split(pkgs) if (r := conda_to_pip(p))]


def install_from_spec(task: Task, env: Path, py: str, uv: Path | None, version: tuple[int, int],
                      timeout_s: float, run_env: dict[str, str]) -> dict[str, Any]:
    """Carry out the task's spec in the venv at `env`; return what was done and skipped (for ready.json)."""
    spec: dict[str, Any] = (task.model_extra or {})["env_spec"]
    src, log = env / "src", env / "build.log"
    h = _harness() if task.repo else None
    use_uv = uv is not None and version >= (3, 8)
    how: dict[str, Any] = {"installer": "swebench-spec/" + ("uv" if use_uv else "pip"), "spec": spec,
                           "skipped": [], "satisfied": []}

    def install(reqs: list[str], best_effort: bool = False) -> None:
        if not reqs:
            return
        cmd = ([str(uv), "pip", "install", "-q", "--python", py, *reqs] if use_uv
               else [py, "-m", "pip", "install", "-q", *reqs])
        try:
            _first_that_installs(cmd, [SPEC_CUTOFF, None] if use_uv else [None], src, log, timeout_s, run_env)
        except EnvBuildError:
            if not best_effort:
                raise
            for req in reqs:  # one by one: keep what installs, name what does not
                try:
                    _first_that_installs(cmd[:-len(reqs)] + [req], [SPEC_CUTOFF, None] if use_uv else [None], src,
                                         log, timeout_s, run_env)
                except EnvBuildError:
                    how["skipped"].append(f"pip cannot install {req} (a conda package)")

    if not use_uv:
        _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel"], src, log, timeout_s,
             run_env)
    else:
        install(["pip", "setuptools", "wheel"])
    kind, reqs = _conda_packages(h, spec, task.repo, src)
    how["packages"] = {"from": kind, "requirements": reqs}
    install(reqs, best_effort=kind != "requirements")
    install([str(p) for p in spec.get("pip_packages", [])])
    hint = (task.model_extra or {}).get("pip_packages")  # the task's own additions, after the spec's pins
    install(shlex.split(hint) if isinstance(hint, str) else [str(p) for p in hint or []])
    for step in [*spec.get("pre_install", []), *[c for c in spec.get("eval_commands", [])
                                                 if not c.startswith("export ")]]:
        verdict, why = classify_step(step)
        if verdict == "run":
            _run(step, src, log, timeout_s, run_env)
        else:
            how["skipped" if verdict == "unsupported" else "satisfied"].append(why)
    if install_cmd := spec.get("install"):
        m = re.fullmatch(r"python -m pip install (.*)", install_cmd.strip())
        if use_uv and m and "--no-use-pep517" not in m.group(1):
            install(shlex.split(m.group(1)))
        else:
            _run(install_cmd, src, log, timeout_s, run_env)
    if task.repo in httpbin.REPOS:
        install(list(httpbin.PACKAGES), True)
    if "pytest" in str(spec.get("test_cmd", "")) and \
            subprocess.run([py, "-c", "import pytest"], capture_output=True, env=run_env).returncode != 0:
        install(["pytest"])
    (env / "spec.json").write_text(json.dumps(spec, indent=2))
    return how
