"""Wall-time scaling of N concurrent attempts (best-of-N, one wave) with a FAKE model sleeping 200 ms a call.

Each attempt makes 4 model calls (read, edit, test, submit) and is graded. Ideal scaling keeps the time of
N attempts close to the time of one; the ratio column is time(N) / time(1).

    python bench/concurrency.py [--sizes 1 4 16] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call  # noqa: E402
from agent_selfevolve.search import Budget, SearchContext, best_of_n  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402


def make_task(root: Path) -> Task:
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    test = "from calc import add\n\n\ndef test_add():\n    assert add(1, 1) == 2\n"
    (repo / "tests" / "test_calc.py").write_text(test)
    (repo / "conftest.py").write_text("import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    return Task(instance_id="conc-1", repo_path=str(repo), base_commit=sha, problem_statement="add subtracts",
                FAIL_TO_PASS=["tests/test_calc.py::test_add"], test_files=["tests/test_calc.py"])


def responder(messages: list[dict]) -> dict:
    turn = sum(m["role"] == "assistant" for m in messages)
    plan = [bash("cat calc.py"), tool_call("str_replace", {"path": "calc.py", "old": "a - b", "new": "a + b"}),
            bash("echo tested"), tool_call("submit", {})]
    return plan[min(turn, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(Path(tmp) / "cache")
        task = make_task(Path(tmp))
        times = {}
        for n in args.sizes:
            store = TrajectoryStore(Path(tmp) / f"runs-{n}.sqlite")
            ctx = SearchContext(task=task, model=ScriptedFakeModel(responder, latency_s=args.latency), store=store,
                                budget=Budget())
            start = time.perf_counter()
            result = best_of_n(ctx, n=n, wave_size=n, max_concurrency=n, run_id=f"conc-{n}")
            times[n] = time.perf_counter() - start
            assert result.attempts == n and result.resolved
    base = times[args.sizes[0]]
    print(f"{'N':>4} {'wall s':>8} {'ratio to N=' + str(args.sizes[0]):>14} {'attempts/s':>11}")
    for n, t in times.items():
        print(f"{n:>4} {t:8.2f} {t / base:14.2f} {n / t:11.2f}")
    print(f"(model latency {args.latency * 1000:.0f} ms x 4 calls per attempt; grading runs pytest per attempt; "
          f"{os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
