"""Helpers the task sources share to build their repositories: where pinned downloads go, one builder at a time,
atomic builds, commit checks and throwaway worktrees. A leaf of `sources/`: it imports no source and nothing of `envs/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.infra import cache_root, git


class BundledError(RuntimeError):
    """A bundled repo cannot be fetched or built, or does not come out as `tasks.jsonl` expects."""


def dist_dir(cache_dir: Path | None = None) -> Path:
    """Where the pinned registry files the sources build from are kept (`infra.fetch_dist` fills it)."""
    return cache_root(cache_dir) / "sdists"


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
