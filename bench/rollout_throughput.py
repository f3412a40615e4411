"""Rollout throughput on the embedded model: today's path vs the batch engine with prefix KV reuse.

The same attempts (HumanEval repo tasks, `small` profile, greedy, `--max-steps` steps each) run on
- `today@N`: `LlamaCppModel(engine="simple")`, llama-cpp-python's chat completion behind a lock, N attempts at
  once (what best-of-N does with one model: interleaved attempts re-read their whole history every step);
- `new@N`: `LlamaCppModel(engine="batched")`, N attempts decoded together, each step resuming from cached KV.
Concurrency is driven as the searches drive it: N threads, each running `run_attempt` on one shared model.
Arms are interleaved in rounds of tasks (order reversed every round) so a busy machine slows them alike.
Per arm: attempts per hour, wall time per step, model-call latency, prompt tokens sent vs prefill tokens
computed, and whether its greedy replies are identical to `new@1` (the same engine, one attempt at a time) and to
`today@1`. Writes bench/results/rollout_throughput.json.

    python bench/rollout_throughput.py                      # 8 tasks x 1 attempt, max 4 steps, 5 arms
    python bench/rollout_throughput.py --tasks 0:4 --arms today@4,new@4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt  # noqa: E402
from agent_selfevolve.models.base import Message, ModelReply  # noqa: E402
from agent_selfevolve.models.llama_cpp import LlamaCppModel  # noqa: E402
from agent_selfevolve.setups import get_setup  # noqa: E402
from agent_selfevolve.sources import locate_tasks  # noqa: E402
from agent_selfevolve.sources.humaneval import humaneval_tasks  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class TimedModel:
    """Delegates to a model and keeps each call's latency (thread-safe: list.append)."""

    def __init__(self, model: LlamaCppModel):
        self.model, self.name, self.supports_tools = model, model.name, model.supports_tools
        self.latencies: list[float] = []

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        start = time.monotonic()
        reply = self.model.chat(messages, tools, **params)
        self.latencies.append(time.monotonic() - start)
        return reply


def run_arm(arm: str, model: TimedModel, tasks: list[Task], max_steps: int) -> dict[str, Any]:
    concurrency = int(arm.split("@")[1])

    def one(task: Task) -> dict[str, Any]:
        spec = AttemptSpec(task.instance_id, attempt_id=f"rt:{arm}:{task.instance_id}")
        traj = run_attempt(task, model, spec, limits=Limits(max_steps=max_steps), select_with="proxy", agent="small")
        replies = [m.get("content") or "" for m in traj.messages if m.get("role") == "assistant"]
        return {"task_id": task.instance_id, "steps": len(traj.steps), "status": traj.status,
                "resolved": bool(traj.resolved), "replies": replies, "exit": (traj.exit_message or "")[:300]}

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        rows = list(pool.map(one, tasks))
    broken = [r for r in rows if r["status"] in ("error", "env_error")]
    if broken:
        raise SystemExit(f"{arm}: attempts failed to run ({broken[0]['status']}): {broken[0]['exit']}")
    return {"wall_s": time.monotonic() - start, "rows": rows}


def summarize(arm: str, parts: list[dict[str, Any]], model: TimedModel) -> dict[str, Any]:
    rows = [r for p in parts for r in p["rows"]]
    wall = sum(p["wall_s"] for p in parts)
    steps = sum(r["steps"] for r in rows)
    stats = model.model.stats()
    return {"arm": arm, "attempts": len(rows), "wall_s": round(wall, 1),
            "attempts_per_hour": round(len(rows) / wall * 3600, 1), "steps": steps,
            "wall_s_per_step": round(wall / max(1, steps), 2),
            "model_call_s_mean": round(sum(model.latencies) / max(1, len(model.latencies)), 2),
            "prompt_tokens_sent": stats["prompt_tokens"], "prefill_tokens_computed": stats["prefill_tokens"],
            "prefill_saved": stats["prefill_saved"], "resolved": sum(r["resolved"] for r in rows),
            "engine_stats": stats, "replies": {r["task_id"]: r["replies"] for r in rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="0:8", help="slice of the 164 HumanEval tasks")
    parser.add_argument("--arms", default="today@1,today@4,new@1,new@2,new@4")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--out", type=Path, default=RESULTS / "rollout_throughput.json")
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.tasks.split(":"))
    tasks = locate_tasks(humaneval_tasks()[lo:hi])
    arms = args.arms.split(",")
    round_size = max(int(a.split("@")[1]) for a in arms)
    rounds = [tasks[i:i + round_size] for i in range(0, len(tasks), round_size)]
    options = {**get_setup("small").model_options("local"), "n_threads": args.threads}
    models = {arm: TimedModel(LlamaCppModel(args.model, engine="simple" if arm.startswith("today") else "batched",
                                            **options)) for arm in arms}
    parts: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    started = time.monotonic()
    for r, chunk in enumerate(rounds):
        for arm in arms if r % 2 == 0 else reversed(arms):
            part = run_arm(arm, models[arm], chunk, args.max_steps)
            parts[arm].append(part)
            print(f"round {r + 1}/{len(rounds)} {arm:9s} {len(chunk)} attempts {part['wall_s']:7.1f} s", flush=True)
    results = {arm: summarize(arm, parts[arm], models[arm]) for arm in arms}
    for m in models.values():
        m.model.close()
    for ref in ("new@1", "today@1"):
        if ref in results:
            for res in results.values():
                res[f"identical_to_{ref}"] = res["replies"] == results[ref]["replies"]
    base_arms = [a for a in ("today@4", "today@1") if a in results]
    print(f"\n{len(tasks)} HumanEval tasks x 1 attempt, small profile, greedy, max {args.max_steps} steps, "
          f"{args.threads} threads, {os.cpu_count()} cores; arms interleaved in {len(rounds)} rounds")
    head = f"{'arm':9s} {'att/h':>7s} {'s/step':>7s} {'call s':>7s} {'sent':>7s} {'computed':>9s} {'resolved':>8s}"
    print(head + "".join(f" {'x ' + b:>10s}" for b in base_arms) + "  identical to new@1 / today@1")
    for arm, res in results.items():
        ratios = "".join(f" {res['attempts_per_hour'] / results[b]['attempts_per_hour']:10.2f}" for b in base_arms)
        print(f"{arm:9s} {res['attempts_per_hour']:7.1f} {res['wall_s_per_step']:7.2f} {res['model_call_s_mean']:7.2f} "
              f"{res['prompt_tokens_sent']:7d} {res['prefill_tokens_computed']:9d} {res['resolved']:8d}{ratios}  "
              f"{res.get('identical_to_new@1', '-')} / {res.get('identical_to_today@1', '-')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"command": "python bench/rollout_throughput.py " + " ".join(sys.argv[1:]), "tasks": args.tasks,
           "max_steps": args.max_steps, "threads": args.threads, "cores": os.cpu_count(),
           "total_s": round(time.monotonic() - started, 1),
           "load_avg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
           "ratios_attempts_per_hour": {arm: {b: round(res["attempts_per_hour"] / results[b]["attempts_per_hour"], 2)
                                              for b in base_arms} for arm, res in results.items()},
           "arms": results}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
