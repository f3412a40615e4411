"""How much does the step budget add? An agent arm of `agent_vs_direct.py` graded as if it had stopped earlier.

    python bench/step_budget.py --tag local-0-164-s6 --at 4 [--store DIR]

For each task of the run's agent arm: an attempt that ended within `--at` steps keeps its outcome; a longer one is
graded (hidden tests) on the patch it had after its first `--at` steps, replayed on a fresh checkout (what a run
with `--max-steps <at>` would have submitted, up to the sampling of later turns, which a shorter budget never
reaches). Paired against the run's direct arm. One run's attempts, so the two budgets are compared on the very
same trajectories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_vs_direct_repo import patch_after_steps  # noqa: E402

from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.sources import locate_tasks  # noqa: E402
from agent_selfevolve.sources.humaneval import humaneval_tasks  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--at", type=int, default=4, help="the shorter step budget")
    parser.add_argument("--profile", default="selfcheck")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the run's .jsonl is")
    parser.add_argument("--store", type=Path, default=None, help="where the run's .sqlite is (default: --out)")
    args = parser.parse_args(argv)
    arm = f"agent:{args.profile}"
    rows = [json.loads(line) for line in (args.out / f"agent_vs_direct-{args.tag}.jsonl").read_text().splitlines()]
    final = {r["task_id"]: bool(r["resolved"]) for r in rows if r["arm"] == arm}
    direct = {r["task_id"]: bool(r["resolved"]) for r in rows if r["arm"] == "direct"}
    store = TrajectoryStore((args.store or args.out) / f"agent_vs_direct-{args.tag}.sqlite")
    tasks = {t.instance_id: t for t in humaneval_tasks() if t.instance_id in final}
    early: dict[str, bool] = {}
    for task_id in sorted(final, key=lambda t: int(t.split("__")[1])):
        traj = store.get(f"avd:{args.tag}:{args.profile}:{task_id}")
        if traj is None or len(traj.steps) <= args.at:
            early[task_id] = final[task_id]
            continue
        task = locate_tasks([tasks[task_id]])[0]
        patch = patch_after_steps(task, traj, args.profile, args.at)
        env = CodingEnvironment(task, f"avd-at-{task_id}")
        early[task_id] = bool(patch) and env.evaluate({"patch": patch}).resolved
        print(f"{task_id}: {len(traj.steps)} steps; resolved at {args.at} steps {early[task_id]}, at the end "
              f"{final[task_id]}", flush=True)
    paired = [t for t in final if t in direct]
    out: dict[str, Any] = {"tag": args.tag, "at": args.at, "tasks": len(final),
                           f"resolved_at_{args.at}": sum(early.values()), "resolved_at_end": sum(final.values())}
    for name, outcome in ((f"at_{args.at}", early), ("at_end", final)):
        test = mcnemar({t: direct[t] for t in paired}, {t: outcome[t] for t in paired})
        out[f"{name}_vs_direct"] = {"only_direct": test["lost"], "only_agent": test["gained"],
                                    "mcnemar_p": round(test["p_value"], 4)}
    later = mcnemar(early, final)
    out["later_steps"] = {"gained": later["gained"], "lost": later["lost"]}
    (args.out / f"step_budget-{args.tag}-at{args.at}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
