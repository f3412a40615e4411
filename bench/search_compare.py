"""Best-of-N vs SE-Agent vs HGM vs MCTS at the same token budgets, paired per task, resumable in session-sized chunks.

    python bench/search_compare.py --suite humaneval --tasks 0:30 --budgets 4000,8000 --profile selfcheck \\
        --max-steps 6 --until-minutes 50 --progress runs/sc-he.json
    python bench/search_compare.py --suite factory:all:easy --tasks 0:30 --budgets 16000,32000 --profile selfcheck \\
        --max-steps 6 --until-minutes 50
    python bench/search_compare.py --pool bench/results/search-compare/qwen2.5-coder-0.5b-humaneval-0-30,\\
bench/results/search-compare/qwen2.5-coder-0.5b-factory-all-easy-0-30      # one table per budget rank, pooled
    python bench/search_compare.py --suite miniwob --strategies best_of_n,se_agent --budgets 8000 --max-steps 4
    python bench/search_compare.py --suite humaneval --held-out-of bench/results/evolve-proof/seed0/split.json \
        --tasks 0:30 --budgets 4000,8000 --lora <work>/seed0/registry/gguf/<adapter>.gguf   # the evolved policy

Each strategy gets the same per-task token budget (the compute-matched comparison SE-Agent's users asked for), and
every budget of `--budgets` is a separate comparison on the same tasks. Suites: `humaneval` (repo tasks), the task
factory's `factory:<project or all>[:<level>]`, `bundled`, `miniwob`; `--tasks lo:hi` slices them, after
`--held-out-of` (an evolve proof's split.json) has kept only the tasks that proof's adapters never trained on:
the base and the evolved policy (`--lora`, which needs it) are then compared on the same tasks.

Selection uses the proxy reward (no hidden tests), so `resolved` (hidden tests, graded afterwards) is a held-out
figure; the `oracle pass@N` column counts a task when any attempt of the search resolved it, an ORACLE figure kept
apart. With `--select-with tests` (the default for MiniWoB++, whose page reward is the verdict) the hidden check also
chooses, and the table and JSON say ORACLE.

Per budget, one row per (strategy, task) in `<out>/compare-b<budget>-<selection>.jsonl`; a rerun skips logged rows
and resumes a search cut short (kill -9 included) from its checkpoints in `<out>/runs.sqlite` (not committed).
`--until-minutes` starts no new search after that time. The table (`compare-b<budget>-<selection>.json`): resolved
with Wilson intervals; per pair of strategies on the tasks both finished, the difference with a bootstrap interval
over clusters (a factory project's tasks form one cluster, a HumanEval task its own) and McNemar's exact p.
`--pool DIR,DIR,...` pools the rows of several runs (e.g. HumanEval and factory, each at its own two budgets) by
budget rank: the lowest budget of each run together, then the next.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from strategy_runs import (  # noqa: E402
    check_strategies,
    compare,
    compare_log,
    coverage,
    fill_attempt_tokens,
    model_key,
)
from web_proof_stats import Deadline, compare_table, print_compare, read_rows  # noqa: E402

from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.models import make_model  # noqa: E402
from agent_selfevolve.sources.factory_repo import project_of  # noqa: E402
from agent_selfevolve.tasks import Task, select_tasks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "search-compare"
MINIWOB_SUBSET = ["click-link", "click-button", "focus-text", "click-dialog", "enter-text", "click-checkboxes",
                  "click-tab", "login-user", "choose-list", "click-option"]
"""Single-page MiniWoB++ tasks a small model can plausibly do in a few actions."""
STRATEGIES = ("best_of_n", "se_agent", "hgm", "mcts", "best_of_n_greedy")
"""best_of_n_greedy (best-of-N whose first attempt is the greedy one) is the reference every search must keep."""
RUN_PREFIX = "search-compare"
"""Search run ids: `<prefix>:<strategy>:<task>:b<budget>:<selection>` (strategy_runs.run_id_of)."""


def cluster_of(task: Task) -> str:
    """A factory task's project (its tasks share code and tests), a MiniWoB task's type, else the task itself."""
    if (project := project_of(task.instance_id)) is not None:
        return project
    if task.instance_id.startswith("miniwob."):
        return task.instance_id.split(".")[1]
    return task.instance_id


def suite_tasks(suite: str, slice_: str | None, seeds: list[int], keep: set[str] | None = None) -> list[Task]:
    """The suite's tasks, only those in `keep` when given (before `slice_`), repositories built."""
    if suite == "miniwob":
        from agent_selfevolve.web_tasks import miniwob_tasks

        if keep is not None:
            raise SystemExit("--held-out-of: MiniWoB tasks have no evolve-proof split; leave it out")
        return select_tasks(miniwob_tasks(MINIWOB_SUBSET, seeds=seeds), slice_=slice_)
    if suite.startswith("factory"):
        from agent_vs_direct_repo import factory_tasks

        return factory_tasks(suite, slice_ or ":", keep)
    from agent_selfevolve.sources import locate_tasks, resolve_tasks

    listed = resolve_tasks(suite, locate=False)  # "humaneval" or "bundled"
    return locate_tasks(select_tasks([t for t in listed if keep is None or t.instance_id in keep], slice_=slice_))


def held_out_ids(split_file: Path) -> tuple[int, set[str]]:
    """The evolve proof's held-out task ids of every suite in its `split.json` (bench/evolve_proof.py), and its
    seed: the tasks an adapter of that seed never trained on."""
    try:
        split = json.loads(split_file.read_text())
        ids = {i for part in split.values() if isinstance(part, dict) for i in part.get("held_out", [])}
        return int(split["seed"]), ids
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--held-out-of {split_file}: not an evolve-proof split.json ({e})") from e


def budget_pairs(rows_by_budget: dict[int, list[dict[str, Any]]], strategies: list[str]) -> dict[str, Any]:
    """Each strategy at each larger budget against itself at the smallest, on the tasks both logged (exact
    McNemar): what doubling the budget bought, apart from how the strategies rank at either."""
    low, *higher = sorted(rows_by_budget)

    def outcomes(budget: int, strategy: str) -> dict[str, bool]:
        return {r["task_id"]: r["resolved"] for r in rows_by_budget[budget] if r["strategy"] == strategy}

    pairs = {}
    for budget in higher:
        for strategy in strategies:
            before, after = outcomes(low, strategy), outcomes(budget, strategy)
            shared = before.keys() & after.keys()
            pairs[f"{strategy} {low}->{budget}"] = {"tasks": len(shared), **mcnemar(
                {t: before[t] for t in shared}, {t: after[t] for t in shared})}
    return pairs


def budgets_in(out: Path, select_with: str) -> list[int]:
    """The budgets a run folder has rows for, lowest first."""
    found = (re.fullmatch(rf"compare-b(\d+)-{re.escape(select_with)}\.jsonl", p.name) for p in out.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def pooled(dirs: list[Path], select_with: str, strategies: list[str], reps: int = 10_000) -> list[dict[str, Any]]:
    """Per budget rank, the table of every run's rows at its rank-th budget together."""
    per_dir = {d: budgets_in(d, select_with) for d in dirs}
    ranks = min((len(b) for b in per_dir.values()), default=0)
    tables = []
    for rank in range(ranks):
        rows = [r for d, b in per_dir.items() for r in read_rows(compare_log(d, b[rank], select_with))]
        tables.append({"rank": rank, "budgets": {str(d): b[rank] for d, b in per_dir.items()},
                       **compare_table(rows, strategies, reps=reps)})
    return tables


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local")
    parser.add_argument("--suite", default="bundled", help="bundled | humaneval | factory:<project|all>[:<level>] | "
                        "miniwob")
    parser.add_argument("--tasks", default=None, help="slice of the suite's tasks, e.g. 0:30")
    parser.add_argument("--budgets", default=None, help="tokens per task per strategy, comma-separated")
    parser.add_argument("--budget", type=int, default=60_000, help="one budget (when --budgets is not given)")
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--select-with", default=None, help="default: proxy for coding tasks, the page's reward "
                        "(tests) for MiniWoB++, whose reward is the environment's own signal")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0", help="MiniWoB++ seeds, comma-separated")
    parser.add_argument("--profile", default="auto", help="agent set-up for coding tasks (see agent_selfevolve/setups)")
    parser.add_argument("--pool-size", type=int, default=4, help="SE-Agent's initial pool (small budgets: 2)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: free cores)")
    parser.add_argument("--lora", type=Path, default=None, help="a GGUF LoRA adapter on the local model: the "
                        "evolved policy (bench/evolve_proof.py leaves them in <work>/seed<s>/registry/gguf/)")
    parser.add_argument("--held-out-of", type=Path, default=None, help="an evolve proof's split.json "
                        "(bench/results/evolve-proof/seed<s>/split.json): only its held-out tasks, before --tasks; "
                        "needed with --lora, so the adapter is never graded on what it trained on")
    parser.add_argument("--until-minutes", type=float, default=None, help="start no search after this long")
    parser.add_argument("--progress", type=Path, default=None, help="rewritten after every search")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/search-compare/<model>-<suite>-<tasks>")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the logs; run nothing")
    parser.add_argument("--pool", default=None, help="run folders to pool by budget rank (comma-separated)")
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    try:
        check_strategies(strategies)
    except ValueError as e:
        parser.error(f"--strategies: {e}")
    web = args.suite == "miniwob"
    args.select_with = args.select_with or ("tests" if web else "proxy")
    if args.pool:
        tables = pooled([Path(d) for d in args.pool.split(",")], args.select_with, strategies)
        for table in tables:
            print(f"\nbudget rank {table['rank']}: " + ", ".join(f"{Path(d).name} {b:,}"
                                                                 for d, b in table["budgets"].items()))
            print_compare(table, None, args.select_with)
        out = args.out or RESULTS / f"pooled-{args.select_with}.json"
        write_json_atomic(out, {"select_with": args.select_with, "oracle": args.select_with == "tests",
                                "ranks": tables})
        return tables

    from agent_selfevolve.setups import get_setup

    if args.lora and not args.held_out_of:
        parser.error("--lora: give --held-out-of <the proof's seed<s>/split.json>; an adapter graded on tasks it "
                     "trained on measures memory, not search")
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [args.budget]
    split_seed, keep = held_out_ids(args.held_out_of) if args.held_out_of else (None, None)
    tasks = suite_tasks(args.suite, args.tasks, [int(s) for s in args.seeds.split(",")], keep)
    if not tasks:
        raise SystemExit(f"no tasks: suite {args.suite}, --tasks {args.tasks}"
                         + (f", held out of {args.held_out_of}" if keep is not None else ""))
    span = (args.tasks or "all").replace(":", "-") + (f"-heldout-s{split_seed}" if keep is not None else "")
    policy = model_key(args.model) + (f"+{args.lora.stem}" if args.lora else "")
    out = args.out or RESULTS / f"{policy}-{args.suite.replace(':', '-')}-{span}"
    out.mkdir(parents=True, exist_ok=True)
    profile = get_setup(args.profile, args.model)
    deadline = Deadline(args.until_minutes)
    model = None
    tables = []
    rows_by_budget = {}
    for budget in budgets:
        logged = {(r["strategy"], r["task_id"]) for r in read_rows(compare_log(out, budget, args.select_with))}
        if not args.report_only and any((s, t.instance_id) not in logged for t in tasks for s in strategies):
            if model is None:  # the model loads only for work left
                options = profile.model_options(args.model)  # the text action format suits small models on pages
                if args.threads and args.model.startswith("local"):
                    options["n_threads"] = args.threads
                if args.lora:
                    options["lora_path"] = str(args.lora)
                model = make_model(args.model, **options)
            compare(tasks, model, out, strategies=strategies, budget=budget, select_with=args.select_with,
                    cluster_of=cluster_of, run_prefix=RUN_PREFIX, agent=profile, max_steps=args.max_steps,
                    pool_size=args.pool_size, deadline=deadline, progress=args.progress)
        fill_attempt_tokens(out, budget, args.select_with, RUN_PREFIX)  # rows logged before they carried it
        ids = {t.instance_id for t in tasks}
        rows = [r for r in read_rows(compare_log(out, budget, args.select_with)) if r["task_id"] in ids]
        rows_by_budget[budget] = rows
        table = {**compare_table(rows, strategies), "searches": coverage(rows, tasks, strategies)}
        write_json_atomic(out / f"compare-b{budget}-{args.select_with}.json", {
            "model": args.model, "lora": str(args.lora) if args.lora else None, "suite": args.suite,
            "tasks": args.tasks, "held_out_of": str(args.held_out_of) if args.held_out_of else None,
            "budget_tokens_per_task": budget,
            "select_with": args.select_with, "oracle": args.select_with == "tests", "profile": args.profile,
            "max_steps": args.max_steps, **table})
        print(f"\n{args.suite} {args.tasks or 'all'}: {len(tasks)} tasks, model {args.model}")
        print_compare(table, budget, args.select_with)
        tables.append(table)
    if len(budgets) > 1:
        by_budget = budget_pairs(rows_by_budget, strategies)
        write_json_atomic(out / f"compare-budgets-{args.select_with}.json", by_budget)
        print("\neach strategy against itself at the smallest budget, same tasks:")
        for pair, m in by_budget.items():
            print(f"{pair:34s} {m['tasks']:>3d} tasks: +{m['gained']} -{m['lost']}, McNemar p {m['p_value']:.3g}")
    return tables


if __name__ == "__main__":
    main()
