"""Bundled SWE-style tasks: small real PyPI projects with injected bugs, rebuilt as identical git repos anywhere.

Each project in `sandboxes/swe/<project>/` pins an sdist by sha256 (`recipe.json`) and stores one bug per task
(`bug-<n>.diff`). The repo is rebuilt from those alone with a fixed author, committer and date, so every
machine gets the same commit hashes and `tasks.jsonl` can name `base_commit` like SWE-bench does. Only the
first build needs the package registry (pip); later builds use `<cache>/sdists/`.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from agent_selfevolve.infra import Dist, cache_root, data_dir, fetch_dist, git
from agent_selfevolve.sources.build import BundledError, build_atomically, dist_dir, has_commits, locked
from agent_selfevolve.sources.check import print_table, validate_task
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import Task, load_tasks

SWE_DIR = data_dir("sandboxes") / "swe"
PREFIX = "bundled/"


def bundled_task_file() -> Path:
    return SWE_DIR / "tasks.jsonl"


def bundled_tasks(project: str | None = None) -> list[Task]:
    tasks = load_tasks(bundled_task_file())
    return [t for t in tasks if project is None or t.repo == f"{PREFIX}{project}"]


def recipe(project: str) -> dict[str, Any]:
    path = SWE_DIR / project / "recipe.json"
    if not path.is_file():
        raise BundledError(f"no bundled project '{project}' (expected {path})")
    return json.loads(path.read_text())


def bundled_repo(name: str, cache_dir: Path | None = None) -> Path:
    """A local git repo holding the project's upstream tree (branch `upstream`) and one tag per task."""
    spec, tasks = recipe(name), bundled_tasks(name)
    final = cache_root(cache_dir) / "repos" / f"bundled__{name}"
    with locked(final.name, cache_dir):
        if not has_commits(final, [spec["upstream_commit"], *(t.base_commit for t in tasks)]):
            sdist = fetch_dist(Dist.of(spec), dist_dir(cache_dir))
            build_atomically(final, lambda tmp: _build(name, spec, tasks, sdist, tmp))
    return final


def commit_upstream(name: str, spec: dict[str, Any], sdist: Path, repo: Path) -> str:
    """Unpack the sdist (its `root` folder) as `repo` and commit everything as branch `upstream`."""
    unpacked = repo.with_name("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # type: ignore
    os.rename(unpacked / spec.get("root", ""), repo)
    git("init", "--quiet", "--initial-branch=upstream", cwd=repo, hermetic=True)
    git("add", "--all", "--force", cwd=repo, hermetic=True)
    tree = git("write-tree", cwd=repo, hermetic=True).strip()
    upstream = git("commit-tree", tree, "-m", f"{name} {spec['version']} (PyPI sdist)", cwd=repo,
                   hermetic=True).strip()
    git("update-ref", "refs/heads/upstream", upstream, cwd=repo, hermetic=True)
    return upstream


def commit_bug(repo: Path, upstream: str, diff: Path, message: str) -> str:
    """The commit (child of `upstream`) whose tree is upstream with `diff` applied; the work tree is untouched."""
    index = {"GIT_INDEX_FILE": str(repo / ".git" / "task-index")}
    git("read-tree", upstream, cwd=repo, env=index, hermetic=True)
    git("apply", "--cached", str(diff), cwd=repo, env=index, hermetic=True)
    tree = git("write-tree", cwd=repo, env=index, hermetic=True).strip()
    commit = git("commit-tree", tree, "-p", upstream, "-m", message, cwd=repo, hermetic=True).strip()
    (repo / ".git" / "task-index").unlink(missing_ok=True)
    return commit


def _build(name: str, spec: dict[str, Any], tasks: list[Task], sdist: Path, repo: Path) -> None:
    upstream = commit_upstream(name, spec, sdist, repo)
    if upstream != spec["upstream_commit"]:
        raise BundledError(f"{name}: the unpacked sdist gives commit {upstream}, recipe.json expects "
                           f"{spec['upstream_commit']}")
    for task in tasks:
        diff = SWE_DIR / name / f"bug-{task.instance_id.rsplit('-', 1)[1]}.diff"
        commit = commit_bug(repo, upstream, diff, task.instance_id)
        if commit != task.base_commit:
            raise BundledError(f"{task.instance_id}: applying {diff.name} gives commit {commit}, but tasks.jsonl "
                               f"says base_commit {task.base_commit}; the bug diff or the sdist changed")
        git("tag", task.instance_id, commit, cwd=repo, hermetic=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_selfevolve.sources bundled", description=__doc__)
    parser.add_argument("command", choices=["build", "validate"])
    parser.add_argument("ids", nargs="*", help="instance ids (default: all bundled tasks)")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    tasks = load_tasks(bundled_task_file(), ids=args.ids or None)
    if args.command == "build":
        for project in sorted({t.repo.split("/", 1)[1] for t in tasks}):
            print(f"{project:20} {bundled_repo(project, args.cache_dir)}")
        return 0
    checks = [validate_task(t, args.cache_dir, args.timeout) for t in tasks]
    print_table(checks, tasks)
    return 0 if all(c.ok for c in checks) else 1


register_task_source(TaskSource(
    "bundled", bundled_task_file, "SWE-style bugs in pinned PyPI projects (sandboxes/swe/)",
    owns=lambda repo: repo.startswith(PREFIX) and (SWE_DIR / repo.removeprefix(PREFIX) / "recipe.json").is_file(),
    locate=lambda repo, cache_dir: bundled_repo(repo.removeprefix(PREFIX), cache_dir)))
