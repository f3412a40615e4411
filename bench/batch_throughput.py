"""Batch throughput (tasks per minute) at workers 1/2/4 with a FAKE model sleeping 200 ms a call, and the
trajectory store's write overhead per step.

    python bench/batch_throughput.py [--tasks 8] [--workers 1 2 4] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.batch import BatchConfig, run_batch  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.trajectory import Trajectory  # noqa: E402
from bench.concurrency import make_task  # noqa: E402


def make_tasks(root: Path, n: int) -> list[Task]:
    base = make_task(root)  # the same tiny repo as bench/concurrency.py
    return [base.model_copy(update={"instance_id": f"tp-{i}", "problem_statement": f"[case] add {i}"})
            for i in range(n)]


def fake_script(path: Path, latency: float) -> str:
    def call(name: str, args: dict) -> dict:
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}

    script = [call("bash", {"command": "cat calc.py"}),
              call("str_replace", {"path": "calc.py", "old": "a - b", "new": "a + b"}),
              call("bash", {"command": "echo tested"}), call("submit", {})]
    path.write_text(json.dumps({"by_prompt": {"[case]": script}, "latency_s": latency}))
    return f"fake:{path}"


def store_overhead(tmp: Path, steps: int = 30, attempts: int = 50) -> float:
    """Seconds per step to record whole trajectories (one transaction each)."""
    store = TrajectoryStore(tmp / "overhead.sqlite")
    step = {"index": 0, "thought": "t" * 200, "action": {"name": "bash", "arguments": {"command": "ls -la"}},
            "observation": "o" * 2000, "usage": {"prompt_tokens": 1000, "completion_tokens": 50}}
    trajs = [Trajectory(attempt_id=f"a{i}", task_id="t", steps=[dict(step, index=k) for k in range(steps)],
                        messages=[{"role": "user", "content": "x" * 2000}] * (2 * steps)) for i in range(attempts)]
    start = time.perf_counter()
    for t in trajs:
        store.record(t)
    return (time.perf_counter() - start) / (steps * attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(tmp / "cache")
        tasks = make_tasks(tmp, args.tasks)
        model = fake_script(tmp / "fake.json", args.latency)
        rates = {}
        for w in args.workers:
            start = time.perf_counter()
            summary = run_batch(tasks, tmp / f"out-{w}", BatchConfig(model=model), workers=w,
                                executor="inline" if w == 1 else "process")
            took = time.perf_counter() - start
            assert summary["resolved_instances"] == args.tasks, summary
            rates[w] = args.tasks / took * 60
        per_step = store_overhead(tmp)
    base = rates[args.workers[0]]
    print(f"{'workers':>7} {'tasks/min':>10} {'ratio to ' + str(args.workers[0]):>12}")
    for w, r in rates.items():
        print(f"{w:>7} {r:10.1f} {r / base:12.2f}")
    print(f"({args.tasks} tasks, 4 model calls each at {args.latency * 1000:.0f} ms, graded with pytest; process "
          f"workers pay a spawn + import start-up; {os.cpu_count()} cores)")
    print(f"store write overhead: {per_step * 1e3:.3f} ms per step (whole trajectories, one transaction each)")


if __name__ == "__main__":
    main()
