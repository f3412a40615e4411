"""Does the model improve? The embedded model as a tool-using agent, before and after one round of
search -> LoRA SFT on its own successful trajectories -> promotion gate, measured on a final test split.

    python bench/evolve.py                                           # 100 train / 32 gate / 32 final test
    python bench/evolve.py --train 20 --gate 20 --final 20 --n 2     # a pilot
    python bench/evolve.py --kinds sft,dpo                           # ablation: add DPO pairs from siblings

Tasks: HumanEval problems framed as repo tasks (implement the function in solution.py; hidden test file),
shuffled with a fixed seed and cut into three disjoint splits: training (searched, trained on), gate (decides
promotion: net gain and one-sided McNemar p < --alpha) and final test (decides nothing; evaluated for the base and
the final policy after the gate). The result is the final split's: base vs the policy the gate kept, paired, with
an exact McNemar test and the failure causes on each side (format errors, no submit, wrong patch). The gate's
numbers are reported beside it but are biased upwards by the selection the gate made. Results go to
<out>/bench.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.evolve import EvolveConfig, EvolveContext, eval_run_id, evolve  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.trajectory import Trajectory  # noqa: E402


def failure_cause(traj: Trajectory) -> str:
    if traj.resolved:
        return "solved"
    if traj.status == "format_errors":
        return "format errors"
    if traj.status == "stuck":
        return "repeated an action"
    if traj.status in ("step_limit", "token_limit", "time_limit", "cost_limit"):
        return "no submit (limit)"
    if traj.status == "submitted":
        return "wrong patch" if traj.patch.strip() else "submitted nothing"
    return f"error ({traj.status})"


def causes(store: TrajectoryStore, run_id: str) -> dict[str, int]:
    return dict(Counter(failure_cause(t) for t in store.attempts(run_id=run_id)))


def split_tasks(seed: int, n_train: int, n_gate: int, n_final: int) -> tuple[list[Task], list[Task], list[Task]]:
    """HumanEval repo tasks shuffled with `seed`, cut into disjoint train, gate and final test lists (shared with
    the ablation, which must see exactly the same splits)."""
    from agent_selfevolve.sources import locate_tasks
    from agent_selfevolve.sources.humaneval import humaneval_tasks

    tasks = locate_tasks(humaneval_tasks())
    if n_train + n_gate + n_final > len(tasks):
        raise SystemExit(f"{n_train} + {n_gate} + {n_final} tasks asked for, {len(tasks)} exist")
    random.Random(seed).shuffle(tasks)
    return tasks[:n_train], tasks[n_train: n_train + n_gate], tasks[n_train + n_gate: n_train + n_gate + n_final]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--gate", type=int, default=32, help="tasks that decide promotion")
    parser.add_argument("--final", type=int, default=32, help="final test tasks: the reported result")
    parser.add_argument("--alpha", type=float, default=0.05, help="gate: one-sided McNemar p must be below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=4, help="best-of-N attempts per training task")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--kinds", default="sft")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--runtime", choices=["llama", "transformers"], default="llama")
    parser.add_argument("--profile", default="small", help="agent set-up (agent_selfevolve.setups)")
    parser.add_argument("--run-id", default=None, help="name of the run in the store (default: from the options)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp and torch threads (default: free cores)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-evolve"))
    args = parser.parse_args()

    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy, transformers_policy
    from agent_selfevolve.setups import get_setup
    from agent_selfevolve.train import AdapterRegistry, hf_base_from_gguf

    train, gate, final = split_tasks(args.seed, args.train, args.gate, args.final)
    base_dir = hf_base_from_gguf(ensure_gguf(args.model))
    registry = AdapterRegistry(args.out / "registry")
    profile = get_setup(args.profile)
    if args.runtime == "llama":
        policy = llama_cpp_policy(args.model, registry, base_dir, n_threads=args.threads,
                                  **profile.model_options("local"))
    else:
        policy = transformers_policy(base_dir)
    store = TrajectoryStore(args.out / "runs.sqlite")
    config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": args.n, "temperature": 0.8},
                          limits={"max_steps": args.max_steps}, kinds=args.kinds.split(","), alpha=args.alpha,
                          train={"rank": args.rank, "alpha": 2 * args.rank, "lr": args.lr, "epochs": args.epochs,
                                 "max_length": 4096, "threads": args.threads},
                          profile=profile.name)
    ctx = EvolveContext(train_tasks=train, held_out=gate, final_test=final, store=store, registry=registry,
                        base_hf_dir=base_dir, policy=policy, out_dir=args.out, config=config,
                        on_event=lambda e: print(json.dumps(e, default=str)[:160], flush=True))
    run_id = args.run_id or (f"bench-{args.profile}-s{args.seed}-t{args.train}-g{args.gate}-f{args.final}-"
                             f"n{args.n}-{args.kinds.replace(',', '+')}")
    summary = evolve(ctx, run_id=run_id)
    episode, held = summary["episodes"][0], summary["final_test"]
    result = {"run_id": run_id, "model": args.model, "profile": args.profile,
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "splits": {"train": len(train), "gate": len(gate), "final": len(final)},
              "result": {"split": "final test", "base": held["base"], "final_policy": held["policy"],
                         "after": held["final"], "paired": held["paired"],
                         "causes_base": causes(store, eval_run_id(run_id, "final", "base")),
                         "causes_after": causes(store, eval_run_id(run_id, "final", held["policy"]))},
              "gate": {"candidate": episode["candidate"], "promoted": episode["promoted"],
                       "decision": episode["gate"], "before": episode["heldout_before"],
                       "after": episode["heldout_after"], "note": "selected on: biased upwards"},
              "data": episode["data"], "data_warnings": episode["data_warnings"], "train_metrics": episode["train"],
              "search_usage": episode["search_usage"], "search_causes": Counter()}
    for t in store.attempts():
        if t.run_id.startswith(f"{run_id}:ep0:"):
            result["search_causes"][failure_cause(t)] += 1
    write_json_atomic(args.out / "bench.json", result)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
