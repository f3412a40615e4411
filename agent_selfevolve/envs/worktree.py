"""One isolated working copy per attempt: a one-commit repository holding the task's base commit and nothing else.

The source is cloned once into a cached bare mirror (hard links for local sources), so the user's own checkout is
never touched. The mirror holds the whole history, the future fix included, so an attempt never sees it: each
base commit is fetched once, depth 1, into a cached bare "base" repository, and every attempt's `.git` is a copy
of that base's pack (no hard links: an attempt must not be able to change another's objects). What the agent
finds is HEAD == base_commit, no parents, no other refs, no reflog, no remote and no alternates, and a `.git`
that does not point into the cache, which its sandbox hides.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.infra import GitError, cache_root, git, pid_alive
from agent_selfevolve.tasks import Task


class RepoError(GitError):
    """The task's repository cannot be found, cloned or checked out."""


def source_of(task: Task, mirror_dir: Path | None = None) -> str:
    """Where the task's code comes from: its `repo_path` (a clone, or a repository a task source built and
    located when it loaded the task), a mirror directory, or a git URL."""
    if task.repo_path:
        return task.repo_path
    repo = task.repo
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
                except (GitError, subprocess.TimeoutExpired) as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise RepoError(f"cannot clone {src} for task {task.instance_id}: {exc}. Give the task a "
                                    f"'repo_path' or pass a mirror directory holding a clone (tasks of a named "
                                    f"source such as bundled/... get theirs from agent_selfevolve.sources."
                                    f"locate_tasks).") from exc
                tmp.rename(mirror)
            if task.base_commit and not _has_commit(mirror, task.base_commit):
                git("fetch", "--quiet", src, "+refs/*:refs/*", cwd=mirror, check=False, timeout=1800)
                if not _has_commit(mirror, task.base_commit):
                    raise RepoError(f"commit {task.base_commit} of task {task.instance_id} is not in {src}")
        return mirror

    def create(self, task: Task, name: str, fresh: bool = False) -> Path:
        """A working copy of `task.base_commit` named `name`. An existing one is reused (an attempt resumed from its
        checkpoint goes on with its files) unless `fresh`: an attempt starting over must not find the files of a
        run killed before it was recorded."""
        path = self.root / "worktrees" / name
        if fresh and path.exists():
            self.remove(path)
        if (path / ".git").is_dir():
            return path
        mirror = self.mirror(task)
        commit = git("rev-parse", "--verify", f"{task.base_commit or 'HEAD'}^{{commit}}", cwd=mirror).strip()
        base = self._base(mirror, commit)
        if (path / ".git").is_file():  # a linked worktree of an older version: keep its files, drop the link
            self._detach_legacy(path)
            _copy_base(base, commit, path, keep_files=True)
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _copy_base(base, commit, tmp, keep_files=False)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path

    def _base(self, mirror: Path, commit: str) -> Path:
        """`<root>/bases/<mirror>/<commit>.git`: a bare repository holding `commit` alone, built once."""
        base = self.root / "bases" / mirror.name.removesuffix(".git") / f"{commit}.git"
        if base.exists():  # renamed into place once complete
            return base
        with file_lock(self.root / "locks" / f"base-{mirror.name}-{commit[:16]}.lock"):
            if base.exists():
                return base
            tmp = base.with_name(base.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            git("init", "-q", "--bare", str(tmp))
            # A commit no ref points at can only be asked for by id when upload-pack allows it. No delta search,
            # light compression: the pack is copied locally, never sent, and this is 2-3x faster on big trees.
            upload = "git -c uploadpack.allowAnySHA1InWant=true -c pack.window=0 -c pack.compression=1 upload-pack"
            git("-c", "fetch.unpackLimit=1", "fetch", "-q", "--depth=1", "--no-tags", "--no-write-fetch-head",
                "--upload-pack", upload, str(mirror), commit, cwd=tmp, timeout=1800)
            if not _has_commit(tmp, commit):
                raise RepoError(f"fetching {commit} from {mirror} left no base in {tmp}")
            shutil.rmtree(base, ignore_errors=True)
            tmp.rename(base)
        return base

    def _detach_legacy(self, path: Path) -> None:
        """Unregister a linked worktree (its `.git` file names a directory in the mirror) and delete that file."""
        gitfile = path / ".git"
        admin = Path(gitfile.read_text().split("gitdir:", 1)[-1].strip())
        gitfile.unlink()
        mirror = admin.parents[1]
        shutil.rmtree(admin, ignore_errors=True)
        if mirror.exists():
            with file_lock(mirror / "worktree.lock"):
                git("worktree", "prune", cwd=mirror, check=False)

    def remove(self, path: Path) -> None:
        """Delete a working copy. It is first renamed into `<root>/trash/<pid>-...`, so a process killed
        mid-delete leaves no half-deleted tree under its name for a rerun to take up; what such a dead process
        left in the trash is swept here (a live one's removal under way is its own)."""
        path = Path(path)
        if (path / ".git").is_file():
            self._detach_legacy(path)
        trash = self.root / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        doomed = trash / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
        try:
            path.rename(doomed)
        except FileNotFoundError:
            return
        except OSError:  # not under this pool's root (another file system): delete in place
            doomed = path
        shutil.rmtree(doomed, ignore_errors=True)
        for left in trash.iterdir():
            owner = left.name.split("-", 1)[0]
            if owner.isdigit() and not pid_alive(int(owner)):
                shutil.rmtree(left, ignore_errors=True)


def _copy_base(base: Path, commit: str, dest: Path, keep_files: bool) -> None:
    """Give `dest` a new `.git` with a copy of `base`'s objects and HEAD detached at `commit`.

    `keep_files`: the files in `dest` are an attempt's work, only the index is set to `commit`; otherwise they are
    checked out. No reflog is written, no FETCH_HEAD, no remote."""
    dest.mkdir(parents=True, exist_ok=True)
    git("init", "-q", str(dest))
    gitdir = dest / ".git"
    shutil.copytree(base / "objects", gitdir / "objects", dirs_exist_ok=True, copy_function=shutil.copyfile)
    if (base / "shallow").exists():  # absent when the base commit is a root commit: nothing was cut off
        shutil.copyfile(base / "shallow", gitdir / "shallow")
    git("config", "core.logAllRefUpdates", "false", cwd=dest)
    if keep_files:
        git("update-ref", "--no-deref", "HEAD", commit, cwd=dest)
        git("reset", "-q", cwd=dest)
    else:
        git("checkout", "-q", "--detach", commit, cwd=dest)
    shutil.rmtree(gitdir / "logs", ignore_errors=True)


def _has_commit(repo: Path, commit: str) -> bool:
    probe = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True)
    return probe.returncode == 0
