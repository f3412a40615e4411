"""Search strategies side by side at one token budget, one resumable row per (strategy, task): the runner that
bench/search_compare.py (coding tasks) and bench/web_proof.py (MiniWoB) share; web_proof_stats.compare_table pairs
the rows.

A row's `type` is its cluster for the paired bootstrap: tasks of one cluster are not independent (MiniWoB seeds of
one task type; factory tasks of one project), so the interval resamples clusters, not tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web_proof_stats import Deadline, append_row, read_rows, write_progress, write_rows

from agent_selfevolve.agent import Limits
from agent_selfevolve.models import DEFAULT_LOCAL_MODEL
from agent_selfevolve.models.base import Model
from agent_selfevolve.setups import AgentSetup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

_SE_AGENT = {"pool_size": 4, "generations": 3, "elites": 2, "revisions": 1, "recombinations": 1}
OPTIONS = {"best_of_n": {"n": 1000, "temperature": 0.8},
           "best_of_n_greedy": {"n": 1000, "temperature": 0.8, "greedy_first": True},
           "se_agent": _SE_AGENT,
           "se_agent_greedy": {**_SE_AGENT, "greedy_first": True},
           "hgm": {"max_evals": 1000},
           "hgm_greedy": {"max_evals": 1000, "greedy_first": True},
           "mcts": {"max_iterations": 1000, "children": 2, "step_chunk": 2}}
"""Each strategy's options: counts high enough that the token budget, the same for all, is what stops them.
A `*_greedy` name is its strategy with `greedy_first`: one attempt at temperature 0 (best-of-N's first, SE-Agent's
first pool member, HGM's first root evaluation) that stays a candidate and wins selection ties."""
STRATEGY_OF = {"best_of_n_greedy": "best_of_n", "se_agent_greedy": "se_agent", "hgm_greedy": "hgm"}
"""A row name that is a variant of a registered strategy -> that strategy."""


def check_strategies(names: list[str]) -> None:
    """Fail before any model loads on a name that is not a strategy of OPTIONS."""
    if bad := [n for n in names if n not in OPTIONS]:
        raise ValueError(f"unknown strategy {', '.join(bad)}: choose from {', '.join(OPTIONS)}")


def model_key(spec: str) -> str:
    """Folder name of a model spec: `local` -> qwen2.5-coder-0.5b, `local:x` -> x, others sanitized."""
    kind, _, rest = spec.partition(":")
    name = (rest or DEFAULT_LOCAL_MODEL) if kind == "local" else spec
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def compare(tasks: list[Task], model: Model, out: Path, *, strategies: list[str], budget: int, select_with: str,
            cluster_of: Callable[[Task], str], run_prefix: str, agent: AgentSetup | str, max_steps: int = 6,
            pool_size: int = 2, deadline: Deadline | None = None, progress: Path | None = None,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Each strategy on each task at `budget` tokens; the strategies of one task run back to back, so a chunk
    leaves pairs complete. A (strategy, task) already in the log is skipped, and a search cut short resumes from
    its checkpoints under the same run id. Returns every row of the log."""
    from agent_selfevolve.search import Budget, SearchContext
    from agent_selfevolve.search import strategies as registry
    from agent_selfevolve.search.rewards import llm_judge

    judge = llm_judge(model) if select_with == "judge" else None  # the policy judges its own attempts

    path, deadline = compare_log(out, budget, select_with), deadline or Deadline(None)
    rows = read_rows(path)
    done = {(r["strategy"], r["task_id"]) for r in rows}
    store = TrajectoryStore(out / "runs.sqlite")
    units = [(s, t) for t in tasks for s in strategies]
    seconds: list[float] = []
    for i, (name, task) in enumerate(units):
        if (name, task.instance_id) in done:
            continue
        if deadline.expired():
            finished = sum((s, t.instance_id) in done for s, t in units)
            log(f"stopped: --until-minutes reached; {len(units) - finished} searches left")
            write_progress(progress, "compare", finished, len(units), deadline.elapsed(), seconds, None,
                           "until-minutes reached")
            break
        ctx = SearchContext(task=task, model=model, store=store, limits=Limits(max_steps=max_steps),
                            budget=Budget(max_tokens=budget), select_with=select_with, judge=judge, agent=agent)
        strategy = STRATEGY_OF.get(name, name)
        opts = {**OPTIONS[name], "max_concurrency": 1, **({"pool_size": pool_size} if strategy == "se_agent" else {})}
        start = time.monotonic()
        run_id = run_id_of(run_prefix, name, task.instance_id, budget, select_with)
        result = registry()[strategy](ctx, run_id=run_id, **opts)
        row = {"strategy": name, "task_id": task.instance_id, "type": cluster_of(task), "resolved": result.resolved,
               "pass_at_n": result.pass_at_n, "best_reward": result.best_reward, "attempts": result.attempts,
               "tokens": result.usage["prompt_tokens"] + result.usage["completion_tokens"],
               "attempt_tokens": store.tokens(run_id), "budget": budget,  # the rest went to operators and judge
               "seconds": round(time.monotonic() - start, 2), "stop": result.stop_reason,
               "select_with": select_with, "oracle": result.oracle, "model": model.name}
        append_row(path, row)
        rows.append(row)
        done.add((name, task.instance_id))
        seconds.append(row["seconds"])
        write_progress(progress, "compare", sum((s, t.instance_id) in done for s, t in units), len(units),
                       deadline.elapsed(), seconds, row)
        log(f"[{i + 1}/{len(units)}] {name} {task.instance_id}: resolved {row['resolved']} ({row['attempts']} "
            f"attempts, {row['tokens']} tokens, {row['seconds']} s)")
    return rows


def coverage(rows: list[dict[str, Any]], tasks: list[Task], strategies: list[str]) -> dict[str, int]:
    """How many of the planned (strategy, task) searches the rows hold: a table of a run stopped at its deadline is
    committed between sessions, and must say that it covers only part of its plan."""
    logged = {(r["strategy"], r["task_id"]) for r in rows}
    return {"done": sum((s, t.instance_id) in logged for t in tasks for s in strategies),
            "planned": len(tasks) * len(strategies)}


def compare_log(out: Path, budget: int, select_with: str) -> Path:
    return out / f"compare-b{budget}-{select_with}.jsonl"


def run_id_of(run_prefix: str, strategy: str, task_id: str, budget: int, select_with: str) -> str:
    return f"{run_prefix}:{strategy}:{task_id}:b{budget}:{select_with}"


def fill_attempt_tokens(out: Path, budget: int, select_with: str, run_prefix: str) -> int:
    """Add `attempt_tokens` (what the run's attempts spent themselves; the rest of its tokens went to operator calls,
    SE-Agent's ratings and plans, HGM's and MCTS's, and judge verdicts) from `<out>/runs.sqlite` to logged rows
    written before rows carried it. The log is rewritten atomically, other fields untouched; rows whose run is not in
    the store stay as they are. Returns how many rows were filled."""
    path, db = compare_log(out, budget, select_with), out / "runs.sqlite"
    rows = read_rows(path)
    missing = [r for r in rows if "attempt_tokens" not in r]
    if not missing or not db.exists():
        return 0
    store, filled = TrajectoryStore(db), 0
    try:
        for row in missing:
            run_id = run_id_of(run_prefix, row["strategy"], row["task_id"], budget, select_with)
            if store.count(run_id):
                row["attempt_tokens"] = store.tokens(run_id)
                filled += 1
    finally:
        store.close()
    if filled:
        write_rows(path, rows)
    return filled
