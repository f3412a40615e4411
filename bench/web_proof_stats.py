"""The web proof's bookkeeping and statistics: resumable JSONL logs, the sweep's per-type classes, and the paired
comparison of search strategies (Wilson intervals per strategy, a cluster bootstrap by task type for the
differences, the exact McNemar test). Plain functions on plain rows, so tests check them on hand-made rows.

Seeds of one task type are not independent (same page, same instruction template), so the bootstrap resamples
task *types* with all their seeds, not single tasks; with few types its interval is wide, which is honest.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from agent_selfevolve.evolve import mcnemar
from agent_selfevolve.fileio import write_json_atomic, write_text_atomic
from agent_selfevolve.trajectory import CRASHES

INFRA = tuple(str(s) for s in CRASHES)
"""Statuses of attempts the sandbox or harness broke: not model outcomes, so they are retried and not graded."""


# -- logs ----------------------------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log; a torn last line (a crash mid-write of an older writer) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add one row by rewriting the file atomically: a crash leaves the old log or the new one, never half a row."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text_atomic(path, old + json.dumps(row, sort_keys=True) + "\n")


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSONL log atomically (a backfilled field added to old rows)."""
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def latest(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, dict[str, Any]]:
    """The last row per key (a retried row supersedes the one it retried)."""
    out: dict[Any, dict[str, Any]] = {}
    for row in rows:
        out[key(row)] = row
    return out


class Deadline:
    """`--until-minutes`: no new unit of work starts after it (a unit already running finishes)."""

    def __init__(self, minutes: float | None, clock: Callable[[], float] = time.monotonic):
        self.clock, self.start = clock, clock()
        self.end = None if minutes is None else self.start + 60.0 * minutes

    def expired(self) -> bool:
        return self.end is not None and self.clock() >= self.end

    def elapsed(self) -> float:
        return self.clock() - self.start

    def wall_clock_end(self) -> float | None:
        """The end as `time.time()` seconds, for what takes a wall-clock deadline (the trainer's `stop_at`)."""
        return None if self.end is None else time.time() + self.end - self.clock()


def write_progress(path: Path | None, stage: str, done: int, total: int, elapsed_s: float, seconds: list[float],
                   last: dict[str, Any] | None, stopped: str | None = None) -> None:
    """`--progress FILE`: where a chunk stands, rewritten atomically after every unit."""
    if path is None:
        return
    per = sum(seconds) / len(seconds) if seconds else None
    write_json_atomic(path, {"stage": stage, "done": done, "total": total, "remaining": total - done,
                             "elapsed_s": round(elapsed_s, 1), "seconds_per_unit": round(per, 1) if per else None,
                             "eta_s": round(per * (total - done)) if per else None, "last": last,
                             "stopped": stopped, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


# -- the sweep -----------------------------------------------------------------------------------------------------
def type_classes(rows: list[dict[str, Any]], seeds: Iterable[int]) -> dict[str, str]:
    """Per task type: 'always' / 'never' right over `seeds`, 'mixed', or 'incomplete' while a seed is missing or
    crashed. Infrastructure failures (`INFRA`) are not model outcomes, so they leave a type incomplete."""
    want = set(seeds)
    by_type: dict[str, dict[int, bool]] = {}
    for row in latest(rows, lambda r: r["task_id"]).values():
        if row.get("status") not in INFRA:
            by_type.setdefault(row["type"], {})[int(row["seed"])] = bool(row["resolved"])
    out = {}
    for name, outcomes in by_type.items():
        got = {s: v for s, v in outcomes.items() if s in want}
        if set(got) != want:
            out[name] = "incomplete"
        else:
            out[name] = "always" if all(got.values()) else "never" if not any(got.values()) else "mixed"
    return out


def sweep_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the latest row per task: resolved, errors, mean seconds and tokens per attempt."""
    last = list(latest(rows, lambda r: r["task_id"]).values())
    graded = [r for r in last if r.get("status") not in INFRA]
    n = len(graded)
    return {"attempts": len(last), "graded": n, "errors": len(last) - n,
            "resolved": sum(bool(r["resolved"]) for r in graded),
            "resolved_ci95": wilson(sum(bool(r["resolved"]) for r in graded), n),
            "seconds_per_attempt": round(sum(r["seconds"] for r in last) / len(last), 1) if last else None,
            "tokens_per_attempt": round(sum(r["tokens"] for r in last) / len(last)) if last else None,
            "steps_per_attempt": round(sum(r["steps"] for r in last) / len(last), 2) if last else None}


# -- statistics ----------------------------------------------------------------------------------------------------
def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score 95% interval of a proportion (None for n = 0): sane at 0/n and n/n, unlike the normal one."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def cluster_bootstrap_diff(diffs: dict[str, list[float]], reps: int = 10_000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the mean paired difference, resampling clusters (task types) with all their tasks.
    `diffs`: cluster -> per-task differences (a - b). None without any task."""
    clusters = [v for v in diffs.values() if v]
    if not clusters:
        return None
    rng = random.Random(seed)
    means = []
    for _ in range(reps):
        total = count = 0.0
        for _ in clusters:
            pick = clusters[rng.randrange(len(clusters))]
            total += sum(pick)
            count += len(pick)
        means.append(total / count)
    means.sort()
    lo = means[int(math.floor((1 - level) / 2 * reps))]
    hi = means[min(reps - 1, int(math.ceil((1 + level) / 2 * reps)) - 1)]
    return (round(lo, 4), round(hi, 4))


def paired_difference(a: dict[str, bool], b: dict[str, bool], type_of: Callable[[str], str],
                      reps: int = 10_000) -> dict[str, Any]:
    """a - b on the tasks both have: the difference of rates with a cluster bootstrap over task types (seeds of one
    type succeed or fail together, which McNemar alone treats as independent), tasks only a or only b solves, and
    McNemar's exact p."""
    paired = sorted(set(a) & set(b))
    diffs: dict[str, list[float]] = {}
    for t in paired:
        diffs.setdefault(type_of(t), []).append(float(a[t]) - float(b[t]))
    test = mcnemar({t: b[t] for t in paired}, {t: a[t] for t in paired})  # "gained": a right where b was wrong
    return {"paired_tasks": len(paired), "types": len(diffs),
            "diff": round(sum(a[t] for t in paired) / len(paired) - sum(b[t] for t in paired) / len(paired), 4)
            if paired else None,
            "diff_ci95": cluster_bootstrap_diff(diffs, reps=reps), "a_only": test["gained"], "b_only": test["lost"],
            "mcnemar_p": round(test["p_value"], 4), "types_up": sum(sum(v) > 0 for v in diffs.values()),
            "types_down": sum(sum(v) < 0 for v in diffs.values())}


def held_out_table(splits: dict[str, tuple[dict[str, bool], dict[str, bool]]], type_of: Callable[[str], str],
                   reps: int = 10_000) -> dict[str, Any]:
    """The evolved policy against the base on each held-out split ({split: (base, after)} per task id; splits hold
    different task types) and pooled over them: rates with Wilson intervals, the paired difference, and per type
    [base solved, after solved, tasks]."""
    pooled = ({t: v for base, _ in splits.values() for t, v in base.items()},
              {t: v for _, after in splits.values() for t, v in after.items()})
    out: dict[str, Any] = {}
    for name, (base, after) in {**splits, "pooled": pooled}.items():
        ids = sorted(set(base) & set(after))
        by_type: dict[str, list[int]] = {}
        for t in ids:
            counts = by_type.setdefault(type_of(t), [0, 0, 0])
            counts[0], counts[1], counts[2] = counts[0] + base[t], counts[1] + after[t], counts[2] + 1
        n, solved_before, solved_after = len(ids), sum(base[t] for t in ids), sum(after[t] for t in ids)
        out[name] = {"n": n, "base": solved_before, "after": solved_after, "base_ci95": wilson(solved_before, n),
                     "after_ci95": wilson(solved_after, n), **paired_difference(after, base, type_of, reps),
                     "by_type": dict(sorted(by_type.items()))}
    return out


def compare_table(rows: list[dict[str, Any]], strategies: list[str], reps: int = 10_000) -> dict[str, Any]:
    """Per strategy: resolved with its Wilson interval and tokens per task; per pair of strategies, on the tasks
    both finished (paired): a - b resolved rate with a cluster-bootstrap interval, wins/losses and McNemar p."""
    by = latest(rows, lambda r: (r["strategy"], r["task_id"]))
    types = {r["task_id"]: r["type"] for r in rows}
    out: dict[str, Any] = {"strategies": {}, "pairs": {}}
    for s in strategies:
        done = [r for (name, _), r in by.items() if name == s]
        k = sum(bool(r["resolved"]) for r in done)
        out["strategies"][s] = {
            "tasks": len(done), "resolved": k, "rate": round(k / len(done), 4) if done else None,
            "ci95": wilson(k, len(done)), "pass_at_any": sum(bool(r["pass_at_n"]) for r in done),
            "tokens_per_task": round(sum(r["tokens"] for r in done) / len(done)) if done else None,
            "attempts_per_task": round(sum(r["attempts"] for r in done) / len(done), 2) if done else None,
            "seconds_per_task": round(sum(r["seconds"] for r in done) / len(done), 1) if done else None,
            "operator_token_share": operator_share(done)}
    resolved = {s: {t: bool(r["resolved"]) for (name, t), r in by.items() if name == s} for s in strategies}
    for i, a in enumerate(strategies):
        for b in strategies[i + 1:]:
            pair = paired_difference(resolved[a], resolved[b], types.__getitem__, reps)
            out["pairs"][f"{a} - {b}"] = {k: v for k, v in pair.items() if k not in ("types_up", "types_down")}
    return out


GREEDY = "greedy"
"""The sweep's one attempt at temperature 0 beside the strategies: the reference a search must at least keep. It
spent what one attempt spends, not the strategies' budget."""


def greedy_rows(sweep_rows: list[dict[str, Any]], task_ids: Collection[str]) -> list[dict[str, Any]]:
    """The sweep's graded verdicts on `task_ids` as compare rows of the pseudo-strategy `GREEDY`."""
    last = latest(sweep_rows, lambda r: r["task_id"])
    return [{"strategy": GREEDY, "task_id": t, "type": r["type"], "resolved": bool(r["resolved"]),
             "pass_at_n": bool(r["resolved"]), "attempts": 1, "tokens": r.get("tokens", 0),
             "attempt_tokens": r.get("tokens", 0), "seconds": r.get("seconds", 0.0)}
            for t, r in last.items() if t in task_ids and r.get("status") not in INFRA]


def operator_share(rows: list[dict[str, Any]]) -> float | None:
    """The part of the tokens spent outside attempts (operators, judge); None unless every row says how much."""
    total = sum(r["tokens"] for r in rows)
    if not rows or not total or any("attempt_tokens" not in r for r in rows):
        return None
    return round(1 - sum(r["attempt_tokens"] for r in rows) / total, 3)


def print_compare(table: dict[str, Any], budget: int | None, select_with: str) -> None:
    """The table; `budget` None for pooled runs (their budgets are printed above it). `oracle pass@N` (any attempt
    of the search resolved the task) is an oracle figure whatever chose."""
    oracle = select_with == "tests"
    print(f"\n{'pooled budgets' if budget is None else f'{budget:,} tokens'} per task per strategy; selection: "
          f"{select_with}" + (" (ORACLE: the hidden check chose; not a held-out figure)" if oracle else " (held-out)"))
    width = max([10, *map(len, table["strategies"])])
    print(f"{'strategy':{width}s} {'resolved':>9s} {'95% CI':>15s} {'oracle pass@N':>13s} {'tokens/task':>11s} "
          f"{'s/task':>7s} {'operators':>9s}")
    for name, r in table["strategies"].items():
        ci = "-" if r["ci95"] is None else f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
        share = "-" if r.get("operator_token_share") is None else f"{r['operator_token_share']:.0%}"
        print(f"{name:{width}s} {r['resolved']:>4d}/{r['tasks']:<4d} {ci:>15s} {r['pass_at_any']:>13d} "
              f"{r['tokens_per_task'] or 0:>11,d} {r['seconds_per_task'] or 0:>7.0f} {share:>9s}")
    if (cover := table.get("searches")) and cover["done"] < cover["planned"]:
        print(f"PARTIAL: {cover['done']} of {cover['planned']} planned searches logged; rerun to finish")
    if GREEDY in table["strategies"]:
        print(f"({GREEDY}: the sweep's one attempt at temperature 0, with the tokens one attempt spends)")
    width = max([22, *map(len, table["pairs"])])
    for pair, p in table["pairs"].items():
        ci = "-" if p["diff_ci95"] is None else f"[{p['diff_ci95'][0]:+.2f}, {p['diff_ci95'][1]:+.2f}]"
        diff = "-" if p["diff"] is None else f"{p['diff']:+.3f}"
        print(f"{pair:{width}s} paired {p['paired_tasks']:>3d} ({p['types']} types): diff {diff} (cluster bootstrap "
              f"95% CI {ci}); only first {p['a_only']}, only second {p['b_only']}, McNemar p {p['mcnemar_p']}")


def plot_compare(table: dict[str, Any], out: Path, title: str) -> Path | None:
    """Resolved rate per strategy with its Wilson interval (a PNG for the README); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [s for s, v in table["strategies"].items() if v["tasks"]]
    if not names:
        return None
    rates = [table["strategies"][s]["rate"] for s in names]
    cis = [table["strategies"][s]["ci95"] for s in names]
    err = [[r - c[0] for r, c in zip(rates, cis, strict=True)], [c[1] - r for r, c in zip(rates, cis, strict=True)]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, rates, yerr=err, capsize=6, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("resolved (Wilson 95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
