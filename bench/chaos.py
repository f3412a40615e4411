"""Reliability in figures: kill, fuzz, flood and starve the harness, and count what survived.

    python bench/chaos.py --short            # a few iterations of each part (CI: tests/test_chaos.py)
    python bench/chaos.py --seed 0           # the long mode behind the README's figures
    python bench/chaos.py --seed 0 --resume --parts kill --only batch,mcts   # top up those kill counts

Four parts, each on its own temporary cache and output folders, everything on 127.0.0.1 (the FAKE model is
in-process; the sandbox has no network), bounded in count and in time:
1. kill: SIGKILL a batch, a search of each strategy and an evolve episode at random moments, resume, count runs
   completed, attempts lost / duplicated, corrupt files, orphaned processes, worktrees left in the cache;
2. fuzz: bad task files, tool arguments, model replies and web actions: tried vs handled with a clear error, no
   crash, no write outside the worktree, nothing already done lost;
3. runaway: fork bombs (foreground, detached), endless output, sleep forever, gigabytes written, a port bound, the
   network tried, each inside the sandbox: stopped within its limit, nothing left running;
4. disk: the store and the output folder turned unwritable mid-run: a clear message, then a resume losing nothing.
Prints a table and writes `bench/results/chaos-<mode>.json` as it goes (after every completed kill run, under a
lock), so a long run cut short keeps its figures. `--resume` extends that file instead of replacing it: each kill
scenario only runs the kills it still lacks and its counts are added to the stored row (`--restart CASES` drops a
stored row first); other parts it runs replace their stored rows. Exits 1 when a goal (all zeros) is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

try:  # the bundled tasks moved under sources/
    from agent_selfevolve.sources.bundled import bundled_repo, bundled_tasks
except ImportError:  # pragma: no cover
    from agent_selfevolve.bundled import bundled_repo, bundled_tasks  # type: ignore[no-redef]
from chaos_kill import Tally, batch_scenario, evolve_scenario, kill_summary, run_scenario, search_scenario  # noqa: E402

from agent_selfevolve.fileio import write_json_atomic  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "short": {"batch_kills": 1, "search_kills": 1, "evolve_kills": 0, "batch_tasks": 2,
              "runaway_rounds": 1, "disk_tasks": 2, "kill_budget_s": 60},
    "long": {"batch_kills": 50, "search_kills": 50, "evolve_kills": 10, "batch_tasks": 6,
             "runaway_rounds": 3, "disk_tasks": 4, "kill_budget_s": 1800},
}
GOALS = ("attempts_lost", "attempts_duplicated", "corrupt_files", "orphans", "worktrees_left", "runs_failed",
         "crashes", "writes_outside", "unclear", "not_stopped", "left_running", "lost")
"""Columns that must be zero in every row."""
STRATEGIES = ("best_of_n", "se_agent", "hgm", "mcts")
PARTS = ("kill", "fuzz", "runaway", "disk")
SUMMED = ("kills", "runs_completed", "runs_failed", "attempts_lost", "attempts_duplicated", "corrupt_files", "orphans",
          "worktrees_left")
"""Kill-row counts that add up when a resumed run extends a stored row."""


class Report:
    """The JSON report, saved after every completed kill run. Rows are keyed by (part, case) for kills and by part
    otherwise; with `resume`, rows this run did not produce are kept from the file (re-read under a lock, so two
    resumed runs on different cases do not overwrite each other)."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool, restart: set[str]) -> None:
        self.path, self.header, self.resume, self.restart = path, header, resume, restart
        self.t0 = time.time()
        self.mine: dict[tuple[str, str], dict[str, Any]] = {}
        self.other_parts: dict[str, list[dict[str, Any]]] = {}
        stored = self._load() if resume else {}
        self.stored = {(r["part"], r["case"]): r for r in stored.get("rows", [])
                       if r["part"] == "kill" and r["case"] not in restart}

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def kill_row(self, case: str, new: dict[str, Any] | None) -> dict[str, Any] | None:
        """The stored row of `case` extended by `new` (this run's tally), and saved."""
        old = self.stored.get(("kill", case))
        row = merge_kill_rows(old, new) if old and new else new or old
        if row is not None:
            self.mine[("kill", case)] = row
            self.save()
        return row

    def part_rows(self, part: str, rows: list[dict[str, Any]]) -> None:
        self.other_parts[part] = rows
        self.save()

    def _merged(self, current: dict[str, Any]) -> list[dict[str, Any]]:
        kept = [r for r in current.get("rows", []) if (r["part"], r["case"]) not in self.mine
                and r["part"] not in self.other_parts and (r["part"] != "kill" or r["case"] not in self.restart)]
        rows = kept + list(self.mine.values()) + [r for rs in self.other_parts.values() for r in rs]
        cases = ["batch", *STRATEGIES, "evolve"]
        return sorted(rows, key=lambda r: (PARTS.index(r["part"]) if r["part"] in PARTS else len(PARTS),
                                           cases.index(r["case"]) if r["case"] in cases else len(cases)))

    def save(self) -> dict[str, Any]:
        with self._locked():
            current = self._load() if self.resume else {}
            rows = self._merged(current)
            mine = {**self.header["invocation"], "seconds": round(time.time() - self.t0, 1)}
            runs = [r for r in past_invocations(current) if r["id"] != mine["id"]] + [mine]
            report = {**{k: v for k, v in self.header.items() if k != "invocation"},
                      "seconds": round(sum(r["seconds"] for r in runs), 1), "invocations": runs, "rows": rows,
                      "goals_missed": missed(rows)}
            write_json_atomic(self.path, report)
        return report


def past_invocations(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs a stored report adds up (one run without an id: a report from before --resume)."""
    if "invocations" in report:
        return list(report["invocations"])
    if "rows" in report:
        return [{"id": "first", "argv": ["--seed", str(report.get("seed", 0))], "parts": report.get("parts", []),
                 "seconds": report.get("seconds", 0.0)}]
    return []


def merge_kill_rows(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A stored kill row extended by a resumed run: counts and seconds add up, kill moments pool."""
    row = {**new, **{k: old.get(k, 0) + new.get(k, 0) for k in SUMMED}}
    row["seconds"] = round(old.get("seconds", 0) + new.get("seconds", 0), 1)
    row["notes"] = (old.get("notes", []) + new.get("notes", []))[:20]
    if "kill_times_s" in old:
        row["kill_times_s"] = old["kill_times_s"] + new.get("kill_times_s", [])
        row["kill_at_s"] = kill_summary(row["kill_times_s"])
    else:  # stored before raw moments were kept: min and max still pool, the median cannot
        row.pop("kill_times_s", None)
        ends = [v for v in (old.get("kill_at_s", {}), new.get("kill_at_s", {})) if v]
        row["kill_at_s"] = {"min": min(v["min"] for v in ends), "max": max(v["max"] for v in ends)} if ends else {}
    return row


def write_inputs(work: Path, n_tasks: int) -> tuple[Path, Path, Path]:
    """Bundled tasks as a task file, a FAKE model script replaying each task's gold patch, and a search task file."""
    from chaos_worker import agent_script

    work.mkdir(parents=True, exist_ok=True)
    tasks = [t.model_copy(update={"repo_path": str(bundled_repo(t.repo.split("/", 1)[1]))})
             for t in bundled_tasks()[:max(2, n_tasks)]]  # a built local clone: no network, any cache
    task_file, fake_file, search_file = work / "tasks.jsonl", work / "fake.json", work / "search-tasks.json"
    task_file.write_text("".join(t.model_dump_json() + "\n" for t in tasks[:n_tasks]))
    by_prompt = {t.problem_statement[:200]: agent_script(t) for t in tasks}
    fake_file.write_text(json.dumps({"by_prompt": by_prompt, "latency_s": 0.25}))
    search_file.write_text(json.dumps([t.model_dump() for t in tasks[:2]]))
    return task_file, fake_file, search_file


def part_kill(work: Path, cfg: dict[str, Any], seed: int, only: set[str], report: Report) -> list[dict[str, Any]]:
    """Each scenario runs the kills its stored row still lacks (all of them without --resume)."""
    task_file, fake_file, search_file = write_inputs(work, cfg["batch_tasks"])
    scenarios = [(batch_scenario(task_file, fake_file, cfg["batch_tasks"]), cfg["batch_kills"])]
    scenarios += [(search_scenario(s, search_file), cfg["search_kills"]) for s in STRATEGIES]
    scenarios += [(evolve_scenario(search_file), cfg["evolve_kills"])] if cfg["evolve_kills"] else []
    scenarios = [(s, k) for s, k in scenarios if not only or s.name in only]
    rows, share, spent = [], cfg["kill_budget_s"] / max(1, len(scenarios)), 0.0
    for i, (sc, kills) in enumerate(scenarios):
        stored = report.stored.get(("kill", sc.name))
        have = stored["kills"] if stored else 0
        if stored and have >= kills and stored["runs_completed"]:
            print(f"kill     {sc.name:<22} already {have} kills: kept", flush=True)
            rows.append(stored)
            continue
        start = time.time()
        rng = random.Random(f"{seed}:{sc.name}:{have}")  # a top-up draws new kill moments, reproducibly

        def on_run(tally: Tally, name: str = sc.name, t0: float = start) -> None:
            report.kill_row(name, {**tally.row(name), "seconds": round(time.time() - t0, 1)})

        tally = run_scenario(sc, work / sc.name, kills - have, rng, deadline=start + max(share * 1.5, 15.0),
                             on_run=on_run)
        row = report.kill_row(sc.name, {**tally.row(sc.name), "seconds": round(time.time() - start, 1)})
        assert row is not None
        rows.append(row)
        print(_line(row), flush=True)
        spent += time.time() - start
        share = (cfg["kill_budget_s"] - spent) / max(1, len(scenarios) - i - 1)
    return rows


def _line(row: dict[str, Any]) -> str:
    skip = {"part", "case", "notes", "timings_s", "kill_at_s", "kill_times_s"}
    cells = [f"{k}={v}" for k, v in row.items() if k not in skip]
    return f"{row['part']:<8} {row['case']:<22} " + " ".join(cells)


def missed(rows: list[dict[str, Any]]) -> list[str]:
    """Rows and columns where a goal is not met."""
    out = [f"{r['part']}/{r['case']}: {k}={r[k]}" for r in rows for k in GOALS if r.get(k)]
    out += [f"{r['part']}/{r['case']}: ran nothing" for r in rows if r.get("tried", 1) == 0 and not r.get("skipped")]
    out += [f"kill/{r['case']}: no run completed" for r in rows if r["part"] == "kill" and not r["runs_completed"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="A few iterations of each part (CI).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="kill,fuzz,runaway,disk", help="Comma-separated subset.")
    parser.add_argument("--only", default="", help="kill part: only these scenarios (batch,best_of_n,...,evolve).")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/chaos-<mode>.json).")
    parser.add_argument("--resume", action="store_true",
                        help="Extend --out: kill scenarios run only the kills they lack; other rows are kept.")
    parser.add_argument("--restart", default="", help="With --resume: drop these kill scenarios' stored rows.")
    parser.add_argument("--kill-budget-s", type=float, default=None, help="Time for the kill part (mode default).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary work folder.")
    args = parser.parse_args(argv)
    mode = "short" if args.short else "long"
    cfg = {**MODES[mode], **({"kill_budget_s": args.kill_budget_s} if args.kill_budget_s else {})}
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"chaos-{mode}-"))
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    out = args.out or HERE / "results" / f"chaos-{mode}.json"
    start = time.time()
    invocation = {"id": f"{os.getpid()}-{start:.0f}", "argv": sys.argv[1:] if argv is None else argv,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "parts": parts}
    header = {"mode": mode, "seed": args.seed, "python": sys.version.split()[0], "invocation": invocation}
    report = Report(out, header, args.resume, {c for c in args.restart.split(",") if c})
    try:
        for part in parts:
            if part == "kill":
                part_kill(work / "kill", cfg, args.seed, {s for s in args.only.split(",") if s}, report)
            else:
                import chaos_faults

                new = chaos_faults.run_part(part, work / part, cfg, rng)
                report.part_rows(part, new)
                for row in new:
                    print(_line(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    final = report.save()
    print_table(final["rows"])
    failures = final["goals_missed"]
    for row in final["rows"]:  # what the report knows of each miss, so a CI log alone can explain it
        if any(row.get(g) for g in GOALS):
            print(f"notes of {row['part']}/{row['case']}: " + " | ".join(row.get("notes", [])[:10]))
    print(f"\n{len(failures)} goal(s) missed{': ' + '; '.join(failures) if failures else ''}  -> {out} "
          f"({round(time.time() - start, 1)} s)")
    return 1 if failures else 0


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["part", "case", "kills", "runs_completed", "attempts_lost", "attempts_duplicated", "corrupt_files",
            "orphans", "worktrees_left", "tried", "handled", "seconds"]
    shown = [c for c in cols if any(c in r for r in rows)]
    print("\n" + " | ".join(shown))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in shown))


if __name__ == "__main__":
    raise SystemExit(main())
