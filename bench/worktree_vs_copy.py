"""Creating an attempt sandbox: the base-only repository copied from the cached depth-1 base vs copying the repository.

Uses a real project: this repository by default, or any git checkout given with --repo (for example a bundled
PyPI project under ~/.cache/agent-selfevolve/repos/).

    python bench/worktree_vs_copy.py [--repo PATH] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.envs.worktree import WorktreePool  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    repo = args.repo.resolve()
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.count("\n")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(Path(tmp) / "cache")
        task = Task(instance_id="bench", repo_path=str(repo), base_commit=sha, problem_statement="bench")
        pool = WorktreePool()
        t0 = time.perf_counter()
        pool.remove(pool.create(task, "warm"))
        mirror_s = time.perf_counter() - t0
        wt, cp = [], []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            path = pool.create(task, f"w{i}")
            wt.append(time.perf_counter() - t0)
            pool.remove(path)
            t0 = time.perf_counter()
            dest = Path(tmp) / f"copy{i}"
            shutil.copytree(repo, dest, symlinks=True)
            cp.append(time.perf_counter() - t0)
            shutil.rmtree(dest)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"repo {repo} ({files} tracked files); one-time mirror clone {mirror_s * 1000:.0f} ms")
    print(f"worktree create (median of {args.repeats}): {med(wt) * 1000:8.1f} ms")
    print(f"copytree        (median of {args.repeats}): {med(cp) * 1000:8.1f} ms")
    print(f"ratio copy / worktree: {med(cp) / med(wt):.2f}x")


if __name__ == "__main__":
    main()
