"""Does the web judge choose what the page's verdict would, where the web proxy cannot?

    python bench/web_judge_agreement.py --store bench/results/web-proof/qwen2.5-coder-0.5b/runs.sqlite --model local
    python bench/web_judge_agreement.py --store <runs.sqlite> --model local --report-only

Reads web attempts already stored (the web proof's compare runs, graded by BrowserGym), keeps the *decisive* tasks
(some attempts resolved, some not: the only tasks where a choice matters), and scores every attempt with the LLM
judge (`search.rewards.llm_judge`: the first page and the actions, each with the element it named; never the
page's verdict). Attempts whose judge prompt is the same text (the same clicks on the same page) are judged once.
Reported beside the web proxy (1 stopped with an answer, 0.5 stopped, 0 otherwise,
as each attempt's selection recorded it), per decisive task: the chance
that the attempt each one ranks first is resolved (ties split evenly, as a random tie-break would), against a random
pick's chance; and over all attempts the AUC of each score against the verdict (0.5: no signal).

Resumable: each judged prompt is one line of `<store dir>/judge-<model>.jsonl`; the figure goes to stdout and
`<store dir>/judge-<model>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_proof_stats import append_row, read_rows  # noqa: E402

from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.search.rewards import llm_judge, web_judge_prompt  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.trajectory import Trajectory  # noqa: E402


def web_proxy(traj: Trajectory) -> float:
    """The web proxy's number as the search recorded it (these stores come from proxy-selected compares)."""
    selection = traj.selection or {}
    if selection.get("source") != "proxy":
        raise ValueError(f"{traj.attempt_id} was selected by {selection.get('source')!r}, not the proxy: read a "
                         "store of a `--select-with proxy` compare")
    return float(selection["reward"])


def decisive(store: TrajectoryStore) -> dict[str, list[Trajectory]]:
    """Graded attempts of each task where some resolved and some did not."""
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for traj in store.attempts():
        if traj.evaluation is not None and traj.steps:
            by_task[traj.task_id].append(traj)
    return {t: v for t, v in sorted(by_task.items()) if 0 < sum(x.resolved for x in v) < len(v)}


def top_pick_resolved(scores: list[float], resolved: list[bool]) -> float:
    """P(resolved) of the attempt ranked first, ties split evenly."""
    best = max(scores)
    tied = [r for s, r in zip(scores, resolved, strict=True) if s == best]
    return sum(tied) / len(tied)


def auc(scores: list[float], resolved: list[bool]) -> float | None:
    """P(a resolved attempt scores above an unresolved one), ties counting half."""
    pos = [s for s, r in zip(scores, resolved, strict=True) if r]
    neg = [s for s, r in zip(scores, resolved, strict=True) if not r]
    if not pos or not neg:
        return None
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def report(groups: dict[str, list[Trajectory]], judged: dict[str, float]) -> dict[str, Any]:
    """Per decisive task with every attempt judged: the judge's, the proxy's and a random top pick."""
    rows, all_scores, all_proxy, all_resolved = [], [], [], []
    for task_id, trajs in groups.items():
        keys = [hashlib.sha256(web_judge_prompt(t).encode()).hexdigest() for t in trajs]
        if not all(k in judged for k in keys):
            continue
        scores, proxy, resolved = [judged[k] for k in keys], [web_proxy(t) for t in trajs], [t.resolved for t in trajs]
        rows.append({"task_id": task_id, "attempts": len(trajs), "resolved": sum(resolved),
                     "judge_pick": top_pick_resolved(scores, resolved),
                     "proxy_pick": top_pick_resolved(proxy, resolved), "random_pick": sum(resolved) / len(resolved)})
        all_scores += scores
        all_proxy += proxy
        all_resolved += resolved
    n = len(rows)

    def mean(key: str) -> float | None:
        return round(sum(r[key] for r in rows) / n, 3) if n else None

    return {"decisive_tasks": len(groups), "tasks_judged": n, "attempts": len(all_resolved),
            "unique_prompts": len(judged), "judge_pick": mean("judge_pick"), "proxy_pick": mean("proxy_pick"),
            "random_pick": mean("random_pick"), "judge_auc": _round(auc(all_scores, all_resolved)),
            "proxy_auc": _round(auc(all_proxy, all_resolved)), "tasks": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a web proof runs.sqlite")
    parser.add_argument("--model", default="local", help="the judge: local[:qwen2.5-coder-1.5b], fake, litellm:...")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--until-minutes", type=float, default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    from strategy_runs import model_key

    name = f"judge-{model_key(args.model)}"
    cache, figure = args.store.parent / f"{name}.jsonl", args.store.parent / f"{name}.json"
    judged = {r["prompt_sha256"]: r["reward"] for r in read_rows(cache)}
    groups = decisive(TrajectoryStore(args.store))
    todo: dict[str, Trajectory] = {}
    for trajs in groups.values():
        for t in trajs:
            key = hashlib.sha256(web_judge_prompt(t).encode()).hexdigest()
            if key not in judged:
                todo.setdefault(key, t)
    if todo and not args.report_only:
        from web_proof import _model

        judge = llm_judge(_model(args.model, args.threads))
        web = Task(instance_id="judge", kind="web", start_url="about:blank", problem_statement="(read from the page)")
        stop = time.monotonic() + 60 * args.until_minutes if args.until_minutes else None
        for i, (key, traj) in enumerate(todo.items()):
            if stop is not None and time.monotonic() > stop:
                print(f"stopped: --until-minutes reached; {len(todo) - i} prompts left")
                break
            verdict = judge(web, traj)
            append_row(cache, {"prompt_sha256": key, "attempt_id": traj.attempt_id, "reward": verdict["reward"],
                               "raw": verdict.get("raw", ""), "error": verdict.get("error")})
            judged[key] = verdict["reward"]
            print(f"[{i + 1}/{len(todo)}] {traj.attempt_id}: judge {verdict['reward']:.2f}, resolved {traj.resolved}")
    result = {"store": str(args.store), "judge_model": args.model, **report(groups, judged)}
    write_json_atomic(figure, result)
    print(f"{result['tasks_judged']}/{result['decisive_tasks']} decisive tasks judged ({result['attempts']} attempts, "
          f"{result['unique_prompts']} distinct prompts): the top pick is resolved with chance judge "
          f"{result['judge_pick']}, proxy {result['proxy_pick']}, random {result['random_pick']}; AUC judge "
          f"{result['judge_auc']}, proxy {result['proxy_auc']}")


if __name__ == "__main__":
    main()
