"""Framework overhead per agent step: the LangGraph agent (with and without a SQLite checkpointer) vs a bare
Python loop calling the same tools through the same environment, both driven by a zero-latency FAKE model.

    python bench/step_overhead.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer  # noqa: E402
from agent_selfevolve.envs.base import ToolCall  # noqa: E402
from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.envs.tools import parse_tool_call  # noqa: E402
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402


def make_task(root: Path) -> Task:
    repo = root / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n" * 50)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    return Task(instance_id="bench-1", repo_path=str(repo), base_commit=sha, problem_statement="bench")


def script(steps: int) -> list:
    acts = [bash("echo hi"), tool_call("view", {"path": "a.py", "start": 1, "end": 5})]
    return [acts[i % 2] for i in range(steps)] + [tool_call("submit", {})]


def bare_loop(task: Task, steps: int) -> float:
    env = CodingEnvironment(task, "bare", isolate=False)
    model = ScriptedFakeModel(script(steps))
    messages: list[dict] = [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
    specs = env.tool_specs()
    env.reset()
    start = time.perf_counter()
    for _ in range(steps + 1):
        reply = model.chat(messages, specs)
        messages.append(reply.message)
        call = parse_tool_call(reply.message["tool_calls"][0], specs)
        obs = env.step(ToolCall(call.name, call.arguments, call.id))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": obs.text})
        if obs.done:
            break
    took = time.perf_counter() - start
    env.close()
    return took


def graph_run(task: Task, steps: int, checkpoint: Path | None) -> float:
    saver = sqlite_checkpointer(checkpoint) if checkpoint else None
    model = ScriptedFakeModel(script(steps))
    env = CodingEnvironment(task, f"graph-{time.monotonic_ns()}", isolate=False)
    env.reset()  # exclude worktree creation, as in the bare loop
    start = time.perf_counter()
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), limits=Limits(max_steps=steps + 5),
                       checkpointer=saver, evaluate="none", env_factory=lambda t, n: env)
    took = time.perf_counter() - start
    assert traj.status == "submitted", traj.exit_message
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(Path(tmp) / "cache")
        task = make_task(Path(tmp))
        rows = {"bare loop": [], "graph, no checkpointer": [], "graph, SqliteSaver": []}
        for r in range(args.repeats):
            rows["bare loop"].append(bare_loop(task, args.steps))
            rows["graph, no checkpointer"].append(graph_run(task, args.steps, None))
            rows["graph, SqliteSaver"].append(graph_run(task, args.steps, Path(tmp) / f"ck{r}.sqlite"))
    base = min(rows["bare loop"]) / (args.steps + 1)
    print(f"{'variant':26s} {'ms/step (best of ' + str(args.repeats) + ')':>24s} {'ratio to bare':>14s}")
    for name, times in rows.items():
        per = min(times) / (args.steps + 1)
        print(f"{name:26s} {per * 1000:24.2f} {per / base:14.2f}x")
    print("(tool execution dominates: each step runs a real subprocess in the worktree)")


if __name__ == "__main__":
    main()
