"""Does the proxy reward choose what the hidden tests would? On tasks with >= 2 attempts (bundled, HumanEval).

    python bench/proxy_agreement.py --suite bundled --model local --n 4              # run 4 attempts a task
    python bench/proxy_agreement.py --suite humaneval --tasks 0:20 --model local --n 4
    python bench/proxy_agreement.py --suite bundled --store runs/search/runs.sqlite   # attempts already stored
    python bench/proxy_agreement.py --suite bundled --tasks 0:2 --model fake --n 2    # dry run, no model

Per task, the proxy's choice is the attempt with the highest proxy reward (ties broken as the searches break
them: a submitted attempt, then the cheaper one). It *agrees* with the hidden tests when it is resolved iff the
best hidden outcome among the attempts is resolved. Reported: the agreement rate; on decisive tasks (some but
not all attempts resolved) how often the proxy chose a resolved attempt against a random pick's expectation,
and how often the top proxy reward was tied between a resolved and an unresolved attempt; Spearman's rank
correlation of proxy and hidden reward (per task, averaged, and pooled over all attempts).

Resumable: attempts are stored with fixed ids (`<out>/proxy_agreement-<tag>.sqlite`; a rerun skips finished
ones) and each attempt's proxy and hidden scores are cached in `<out>/proxy_agreement-<tag>.scores.jsonl`.
The figure goes to stdout and `<out>/proxy_agreement-<tag>.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, grade_attempt, run_attempt  # noqa: E402
from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.models.base import Model  # noqa: E402
from agent_selfevolve.search.common import best_record  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.trajectory import Trajectory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i: j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (Pearson on average ranks); None when either side is constant or too short."""
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var


def task_row(task_id: str, scores: list[dict[str, Any]]) -> dict[str, Any]:
    """One task's verdict from its attempts' scores ({attempt_id, proxy, hidden, resolved, status, tokens})."""
    records = [{"attempt_id": s["attempt_id"], "reward": s["proxy"], "status": s["status"],
                "usage": {"prompt_tokens": s["tokens"]}} for s in scores]
    chosen = best_record(records)
    assert chosen is not None
    by_id = {s["attempt_id"]: s for s in scores}
    resolved = [s["resolved"] for s in scores]
    top = max(s["proxy"] for s in scores)
    tied = {s["resolved"] for s in scores if s["proxy"] == top}
    return {"task_id": task_id, "attempts": len(scores), "chosen": chosen["attempt_id"],
            "chosen_resolved": by_id[chosen["attempt_id"]]["resolved"], "any_resolved": any(resolved),
            "decisive": any(resolved) and not all(resolved), "random_pick": sum(resolved) / len(resolved),
            "top_tied_across_outcomes": len(tied) == 2,
            "spearman": spearman([s["proxy"] for s in scores], [s["hidden"] for s in scores])}


def agreement(scores_by_task: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The figure over every task with at least two scored attempts."""
    rows = [task_row(t, s) for t, s in sorted(scores_by_task.items()) if len(s) >= 2]
    decisive = [r for r in rows if r["decisive"]]
    rhos = [r["spearman"] for r in rows if r["spearman"] is not None]
    pooled = [s for t, s in scores_by_task.items() if len(s) >= 2]
    flat = [s for group in pooled for s in group]

    def share(items: list[Any]) -> float | None:
        return sum(items) / len(items) if items else None

    return {"tasks": len(rows), "agree": sum(r["chosen_resolved"] == r["any_resolved"] for r in rows),
            "agreement_rate": share([r["chosen_resolved"] == r["any_resolved"] for r in rows]),
            "proxy_resolved": sum(r["chosen_resolved"] for r in rows),
            "oracle_resolved": sum(r["any_resolved"] for r in rows),
            "random_resolved_expected": sum(r["random_pick"] for r in rows),
            "decisive_tasks": len(decisive), "decisive_proxy_right": sum(r["chosen_resolved"] for r in decisive),
            "decisive_random_expected": sum(r["random_pick"] for r in decisive),
            "decisive_top_tied": sum(r["top_tied_across_outcomes"] for r in decisive),
            "spearman_mean": share(rhos), "spearman_tasks": len(rhos),
            "spearman_pooled": spearman([s["proxy"] for s in flat], [s["hidden"] for s in flat]), "rows": rows}


class Scores:
    """Each attempt's proxy and hidden scores, cached in a JSONL file (one line per attempt: resumable)."""

    def __init__(self, path: Path, rescore: bool = False):
        self.path, self.rescore = path, rescore
        self.cache: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line: that attempt is scored again
                self.cache[row["attempt_id"]] = row

    def score(self, task: Task, traj: Trajectory) -> dict[str, Any]:
        if traj.attempt_id in self.cache:
            return self.cache[traj.attempt_id]
        sel = traj.selection or {}
        if sel.get("source") == "proxy" and not self.rescore:
            proxy = float(sel.get("reward", 0.0))
        else:  # chosen by something else when it ran (or --rescore): score it now, on a fresh checkout
            env = CodingEnvironment(task, f"pa-{re.sub(r'[^A-Za-z0-9_.-]', '_', traj.attempt_id)}")
            proxy = env.proxy_evaluate(traj.outcome).reward
        graded = traj if traj.evaluation is not None else grade_attempt(task, traj)  # the store stays as it was
        row = {"attempt_id": traj.attempt_id, "task_id": task.instance_id, "proxy": proxy,
               "hidden": float((graded.evaluation or {}).get("reward", 0.0)), "resolved": graded.resolved,
               "status": traj.status, "tokens": traj.total_usage.total_tokens}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.cache[traj.attempt_id] = row
        return row


def dry_run_model() -> Model:
    """`--model fake`: no model. Every other attempt adds a harmless module (a patch that applies and parses),
    the rest submit nothing, so the pipeline runs end to end with attempts the proxy can tell apart. Attempts
    must run one after another (as `run_attempts` runs them): a first turn starts the next attempt."""
    from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call

    lock, state = threading.Lock(), {"nth": -1}

    def respond(messages: list[Any]) -> Any:
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        with lock:
            state["nth"] += turn == 0
            nth = state["nth"]
        if nth % 2 == 1 and turn == 0:
            return tool_call("bash", {"command": "echo '# dry run' > dry_run_note.py"})
        return tool_call("submit", {})

    return ScriptedFakeModel(respond, name="fake/dry-run")


def make_agent_model(spec: str, profile: str) -> tuple[Model, dict[str, Any]]:
    """The model as `selfevolve` resolves it (set-up options for the embedded models), and run_attempt options."""
    from agent_selfevolve.models import make_model
    from agent_selfevolve.setups import get_setup

    prof = get_setup(profile, spec)
    model = dry_run_model() if spec == "fake" else make_model(spec, **prof.model_options(spec))
    return model, {"agent": prof}


def run_attempts(tasks: list[Task], model: Model, n: int, store: TrajectoryStore, max_steps: int,
                 options: dict[str, Any], temperature: float = 0.8) -> None:
    """`n` attempts per task with fixed ids (a rerun reuses finished ones), proxy and hidden scores recorded."""
    for task in tasks:
        for i in range(n):
            spec = AttemptSpec(task.instance_id, attempt_id=f"pa:{task.instance_id}:{i}", run_id="proxy-agreement",
                               model_params={"temperature": temperature})
            run_attempt(task, model, spec, limits=Limits(max_steps=max_steps), store=store, select_with="proxy",
                        **options)


def collect(tasks: list[Task], store: TrajectoryStore, scores: Scores) -> dict[str, list[dict[str, Any]]]:
    """Scores of every stored coding attempt of these tasks (errors included: they score as what they left)."""
    by_id = {t.instance_id: t for t in tasks}
    out: dict[str, list[dict[str, Any]]] = {}
    for traj in store.attempts():
        task = by_id.get(traj.task_id)
        if task is not None and task.kind == "swe":
            out.setdefault(task.instance_id, []).append(scores.score(task, traj))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="bundled", help="bundled | humaneval | a task file")
    parser.add_argument("--tasks", default=None, help="slice of the suite, e.g. 0:20")
    parser.add_argument("--store", type=Path, default=None, help="score the attempts in this store (runs nothing)")
    parser.add_argument("--model", default="local", help="local[:key] | openai:<m> | ... | fake (a dry run)")
    parser.add_argument("--profile", default="auto")
    parser.add_argument("--n", type=int, default=4, help="attempts per task")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--tag", default=None, help="name of the output files (default: suite and model)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--rescore", action="store_true",
                        help="score the proxy anew (current code), not the reward stored with the attempt")
    args = parser.parse_args(argv)

    from agent_selfevolve.cli import resolve_tasks

    tasks = resolve_tasks(args.suite, None, None, args.tasks)
    source = f"store {args.store}" if args.store else f"{args.n} attempts of {args.model}"
    origin = args.store.stem if args.store else args.model
    tag = args.tag or re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(args.suite).stem}-{origin}")
    store = TrajectoryStore(args.store or args.out / f"proxy_agreement-{tag}.sqlite")
    if args.store is None:
        model, options = make_agent_model(args.model, args.profile)
        run_attempts(tasks, model, args.n, store, args.max_steps, options)
    figure = agreement(collect(tasks, store, Scores(args.out / f"proxy_agreement-{tag}.scores.jsonl", args.rescore)))
    result = {"suite": args.suite, "slice": args.tasks, "source": source, "tag": tag, **figure}
    write_json_atomic(args.out / f"proxy_agreement-{tag}.json", result)
    print(report(figure, source))
    return result


def report(f: dict[str, Any], source: str) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:+.2f}"

    return (f"{source}: {f['tasks']} tasks with >= 2 attempts\n"
            f"proxy choice agrees with the hidden tests on {f['agree']}/{f['tasks']} ({pct(f['agreement_rate'])}); "
            f"resolved by the proxy's choice {f['proxy_resolved']}, by an oracle {f['oracle_resolved']}, "
            f"by a random pick {f['random_resolved_expected']:.1f} (expected)\n"
            f"decisive tasks (some attempts resolved, some not): {f['decisive_tasks']}; the proxy chose a resolved "
            f"one on {f['decisive_proxy_right']} (random: {f['decisive_random_expected']:.1f}); top proxy reward "
            f"tied between a resolved and an unresolved attempt on {f['decisive_top_tied']}\n"
            f"Spearman rho (proxy vs hidden): mean {num(f['spearman_mean'])} over {f['spearman_tasks']} tasks, "
            f"pooled {num(f['spearman_pooled'])}")


if __name__ == "__main__":
    main()
