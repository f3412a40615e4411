"""One isolated working copy per attempt: a git worktree of a cached bare mirror, at the task's base commit.

The mirror is cloned once (hard links for local sources), so a new worktree costs a checkout, not a copy,
and the user's own checkout is never touched: worktrees hang off the mirror, not off the source repo.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.tasks import Task


class RepoError(RuntimeError):
    """The task's repository cannot be found, cloned or checked out."""


def cache_root() -> Path:
    return Path(os.environ.get("AGENT_SELFEVOLVE_CACHE", Path.home() / ".cache" / "agent-selfevolve"))


def git(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 300) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RepoError(f"git {' '.join(args[:3])} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def source_of(task: Task, mirror_dir: Path | None = None) -> str:
    """Where the task's code comes from: a local path, a bundled repo, a mirror directory, or a git URL."""
    if task.repo_path:
        return task.repo_path
    repo = task.repo
    if repo.startswith("bundled/"):
        from agent_selfevolve.bundled import bundled_repo

        return str(bundled_repo(repo.split("/", 1)[1]))
    if mirror_dir:
        for name in (repo.replace("/", "__"), repo.split("/")[-1], repo):
            if (Path(mirror_dir) / name).exists():
                return str(Path(mirror_dir) / name)
    if re.match(r"^(https?|ssh|git|file)://", repo) or repo.endswith(".git") or Path(repo).exists():
        return repo
    return f"https://github.com/{repo}.git"


class WorktreePool:
    """Creates and removes attempt worktrees; one bare mirror per source repository."""

    def __init__(self, root: Path | None = None, mirror_dir: Path | None = None):
        self.root = Path(root or cache_root())
        self.mirror_dir = mirror_dir

    def mirror(self, task: Task) -> Path:
        src = source_of(task, self.mirror_dir)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", task.repo or Path(src).name).strip("_") or "repo"
        key = f"{name}-{hashlib.sha1(src.encode()).hexdigest()[:8]}"  # same name, other source: other mirror
        mirror = self.root / "mirrors" / f"{key}.git"
        with file_lock(self.root / "locks" / f"{key}.lock"):
            if not mirror.exists():
                tmp = mirror.with_name(mirror.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    git("clone", "--quiet", "--mirror", src, str(tmp), timeout=1800)
                except (RepoError, subprocess.TimeoutExpired) as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise RepoError(f"cannot clone {src} for task {task.instance_id}: {exc}. Give the task a "
                                    f"'repo_path' or pass a mirror directory holding a clone.") from exc
                tmp.rename(mirror)
            if task.base_commit and not _has_commit(mirror, task.base_commit):
                git("fetch", "--quiet", src, "+refs/*:refs/*", cwd=mirror, check=False, timeout=1800)
                if not _has_commit(mirror, task.base_commit):
                    raise RepoError(f"commit {task.base_commit} of task {task.instance_id} is not in {src}")
        return mirror

    def create(self, task: Task, name: str) -> Path:
        """Check out `task.base_commit` into a fresh worktree; reuse it if it already exists (a resume)."""
        path = self.root / "worktrees" / name
        if (path / ".git").exists():
            return path
        mirror = self.mirror(task)
        if hides_history(task):
            return self._snapshot(mirror, task, path)
        with file_lock(mirror / "worktree.lock"):
            git("worktree", "prune", cwd=mirror)
            shutil.rmtree(path, ignore_errors=True)
            git("worktree", "add", "--quiet", "--force", "--detach", str(path), task.base_commit or "HEAD",
                cwd=mirror)
        return path

    def _snapshot(self, mirror: Path, task: Task, path: Path) -> Path:
        """The tree at base_commit as a fresh one-commit repository: no parents, no other refs to read."""
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", task.base_commit or "HEAD"], cwd=mirror,
                                 capture_output=True, check=True, timeout=300)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True, timeout=300)
        git("init", "-q", cwd=tmp)
        git("add", "-A", cwd=tmp)
        git("-c", "user.name=agent-selfevolve", "-c", "user.email=sandbox@agent-selfevolve.invalid", "commit", "-qm",
            "base", "--no-verify", cwd=tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path

    def remove(self, path: Path) -> None:
        path = Path(path)
        gitfile = path / ".git"
        if gitfile.is_file():
            common = gitfile.read_text().split("gitdir:", 1)[-1].strip()
            mirror = Path(common).parents[1]
            with file_lock(mirror / "worktree.lock"):
                git("worktree", "remove", "--force", str(path), cwd=mirror, check=False)
                git("worktree", "prune", cwd=mirror, check=False)
        shutil.rmtree(path, ignore_errors=True)


def hides_history(task: Task) -> bool:
    """Bundled repos are synthetic: the base commit's parent is the clean upstream, so `git diff HEAD~1` would
    show the injected bug. Their attempts get a history-free snapshot instead of a worktree."""
    return task.repo.startswith("bundled/")


def _has_commit(repo: Path, commit: str) -> bool:
    probe = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True)
    return probe.returncode == 0
