"""Part 1 of the chaos run: SIGKILL a batch, a search of each strategy and an evolve episode at random moments,
resume each to completion, and count what did not survive.

Only the main process is killed (as the OOM killer or a closed laptop would), so children it leaves alive (pool
workers, sandboxes, a training process) show up as orphans: found by a /proc scan for the run's tag in their
environment or its directory in their command line or working directory, then killed so the machine stays clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TAG_ENV = "AGENT_SELFEVOLVE_CHAOS_TAG"
MAX_KILLS_PER_RUN = 8
"""After this many kills in one run, the next resume is left to finish (a run must end some time)."""


def tagged_pids(tag: str, roots: list[Path]) -> list[int]:
    """Live processes (zombies excluded) carrying `tag` in their environment or a root in cmdline/cwd."""
    found, marks = [], [str(r).encode() for r in roots]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        base = f"/proc/{entry}"
        try:
            if Path(f"{base}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            environ = Path(f"{base}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"{base}/cmdline").read_bytes()
            cwd = os.readlink(f"{base}/cwd").encode()
        except (OSError, IndexError):
            continue
        if f"{TAG_ENV}={tag}".encode() in environ or any(m in cmdline or cwd.startswith(m) for m in marks):
            found.append(int(entry))
    return found


def reap_orphans(tag: str, roots: list[Path], grace_s: float = 3.0) -> list[str]:
    """Processes of a killed run still alive after `grace_s` (they should die with their parent): their command
    lines; they are killed."""
    deadline = time.time() + grace_s
    while (alive := tagged_pids(tag, roots)) and time.time() < deadline:
        time.sleep(0.1)
    seen = []
    for pid in alive:
        with contextlib.suppress(OSError):
            seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:100])
            os.kill(pid, signal.SIGKILL)
    return seen


def corrupt_files(out: Path) -> list[str]:
    """Every JSON, JSONL and SQLite file under `out` must load (SQLite: integrity_check says ok)."""
    bad = []
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        json.loads(line)
            elif path.suffix in (".sqlite", ".db"):
                conn = sqlite3.connect(str(path), timeout=30)
                try:
                    if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                        raise ValueError("integrity_check failed")
                finally:
                    conn.close()
        except (ValueError, UnicodeDecodeError, sqlite3.Error) as exc:
            bad.append(f"{path.relative_to(out)}: {type(exc).__name__}: {str(exc)[:120]}")
    return bad


def stored_attempts(db: Path) -> dict[str, tuple[float, bool]]:
    """{attempt id: (created_at, graded)} of a trajectory store."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(str(db), timeout=30)
    try:
        rows = conn.execute("SELECT a.id, a.created_at, e.attempt_id IS NOT NULL FROM attempts a "
                            "LEFT JOIN evaluations e ON e.attempt_id = a.id").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {r[0]: (float(r[1]), bool(r[2])) for r in rows}


def result_lines(path: Path) -> list[str]:
    """Instance ids of the complete lines of a batch's results.jsonl (a torn last line is skipped)."""
    if not path.exists():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.append(json.loads(line)["instance_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


@dataclass
class Scenario:
    """One kind of run: how to start (and resume) it in `out`, where its store is, how to check it at the end."""

    name: str
    argv: Callable[[Path], list[str]]
    store: Callable[[Path], Path]
    final_check: Callable[[Path], dict[str, Any]]
    """-> {"lost": n, "duplicated": n, "notes": [why, ...]} from the finished run's own outputs."""
    guess_s: float = 20.0
    """First guess of a full run's length; replaced by measured lengths."""


@dataclass
class Tally:
    kills: int = 0
    runs_completed: int = 0
    runs_failed: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    orphans: int = 0
    worktrees_left: int = 0
    kill_times_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any]:
        t = sorted(self.kill_times_s)
        return {"part": "kill", "case": name, "kills": self.kills, "runs_completed": self.runs_completed,
                "runs_failed": self.runs_failed, "attempts_lost": self.lost, "attempts_duplicated": self.duplicated,
                "corrupt_files": self.corrupt, "orphans": self.orphans, "worktrees_left": self.worktrees_left,
                "kill_at_s": kill_summary(t), "kill_times_s": [round(x, 2) for x in t], "notes": self.notes[:10]}


def kill_summary(times: list[float]) -> dict[str, float]:
    """Seconds after start at which the kills landed: min, median, max."""
    t = sorted(times)
    return {"min": round(t[0], 2), "median": round(t[len(t) // 2], 2), "max": round(t[-1], 2)} if t else {}


def _check_snapshot(before: dict[str, tuple[float, bool]], after: dict[str, tuple[float, bool]]) -> dict[str, Any]:
    """An attempt stored before a kill must still be there, never re-run: its created_at may change only when it
    is graded late (an MCTS choice), never once it was graded. -> {"lost": n, "duplicated": n, "why": [...]}"""
    out: dict[str, Any] = {"lost": 0, "duplicated": 0, "why": []}
    for aid, (created, graded) in before.items():
        if aid not in after:
            out["lost"] += 1
            out["why"].append(f"stored attempt {aid} gone")
        elif after[aid][0] != created and graded:
            out["duplicated"] += 1
            out["why"].append(f"graded attempt {aid} re-run")
    return out


def run_scenario(sc: Scenario, work: Path, kills: int, rng: random.Random, deadline: float,
                 env_extra: dict[str, str] | None = None, on_run: Callable[[Tally], None] | None = None) -> Tally:
    """Kill runs of `sc` `kills` times in all (fresh runs one after another, each resumed until it completes).
    `on_run(tally)` after each run ends, so a long run's figures are saved as it goes."""
    tally, est = Tally(), sc.guess_s
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    run = 0
    while tally.kills < kills and time.time() < deadline:
        out = work / f"run-{run}"
        out.mkdir(parents=True)
        run += 1
        tag = f"{sc.name}-{run}-{rng.randrange(10**9)}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENT_SELFEVOLVE_CACHE": str(cache), TAG_ENV: tag,
               **(env_extra or {})}
        snapshots: list[dict[str, tuple[float, bool]]] = []
        killed_here, started = 0, time.time()
        while True:
            budget_left = tally.kills < kills and killed_here < MAX_KILLS_PER_RUN and time.time() < deadline
            delay = rng.uniform(0.3, est) if budget_left else None
            t0 = time.time()
            with open(out / "chaos-log.txt", "ab") as log:
                proc = subprocess.Popen(sc.argv(out), env=env, cwd=str(work), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    proc.wait(timeout=delay if delay is not None else max(60.0, 20 * est))
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                if not finished:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    if delay is None:
                        tally.notes.append(f"{out.name}: did not finish within {20 * est:.0f} s; killed")
            orphans = reap_orphans(tag, [out, cache / "worktrees"])
            tally.orphans += len(orphans)
            tally.notes += [f"{out.name}: orphan: {o}" for o in orphans]
            kill_group(proc.pid)
            bad = corrupt_files(out)
            tally.corrupt += len(bad)
            tally.notes += [f"{out.name} after {'exit' if finished else 'kill'}: {b}" for b in bad]
            if finished:
                break
            tally.kills += 1
            killed_here += 1
            tally.kill_times_s.append(time.time() - t0)
            snapshots.append(stored_attempts(sc.store(out)))
        if proc.returncode != 0:
            tally.runs_failed += 1
            tail = (out / "chaos-log.txt").read_bytes()[-600:].decode(errors="replace")
            tally.notes.append(f"{out.name}: exit code {proc.returncode}: {tail}")
            if on_run:
                on_run(tally)
            continue
        est = max(2.0, 0.5 * est + 0.5 * (time.time() - started) if killed_here == 0 else est)
        tally.runs_completed += 1
        final = stored_attempts(sc.store(out))
        for k, snap in enumerate(snapshots):
            counts = _check_snapshot(snap, final)
            tally.lost += counts["lost"]
            tally.duplicated += counts["duplicated"]
            tally.notes += [f"{out.name}: after kill {k + 1}: {', '.join(counts['why'])}"] if counts["why"] else []
        own = sc.final_check(out)
        tally.lost += own.get("lost", 0)
        tally.duplicated += own.get("duplicated", 0)
        tally.notes += [f"{out.name}: {why}" for why in own.get("notes", [])]
        left = [p.name for p in (cache / "worktrees").iterdir()] if (cache / "worktrees").exists() else []
        tally.worktrees_left += len(left)
        if left:
            tally.notes.append(f"{out.name}: worktrees left: {left[:5]}")
            for p in left:
                shutil.rmtree(cache / "worktrees" / p, ignore_errors=True)
        if on_run:
            on_run(tally)
    return tally


def kill_group(pgid: int) -> None:
    """The run's own process group, in case anything of it is still there after the orphan count."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --- the scenarios -----------------------------------------------------------------------------------------------

def batch_scenario(task_file: Path, fake_file: Path, n_tasks: int, workers: int = 2) -> Scenario:
    def argv(out: Path) -> list[str]:
        return [sys.executable, "-m", "agent_selfevolve.cli", "batch", "--tasks", str(task_file), "--model",
                f"fake:{fake_file}", "--out", str(out / "batch"), "--workers", str(workers), "--max-steps", "8"]

    def final_check(out: Path) -> dict[str, int]:
        ids = result_lines(out / "batch" / "results.jsonl")
        preds = result_lines(out / "batch" / "preds.jsonl")
        summary = json.loads((out / "batch" / "summary.json").read_text())
        dup = sum(c - 1 for c in Counter(ids).values()) + sum(c - 1 for c in Counter(preds).values())
        lost = n_tasks - len(set(ids)) + n_tasks - len(set(preds)) + (n_tasks - summary["resolved_instances"])
        return {"lost": lost, "duplicated": dup, "notes": _batch_losses(out / "batch") if lost else []}

    return Scenario("batch", argv, lambda out: out / "batch" / "runs.sqlite", final_check, guess_s=15.0)


def _batch_losses(batch: Path) -> list[str]:
    """Why a finished batch's tasks count as lost: each unresolved result's status, error and stop reason."""
    why = []
    for line in (batch / "results.jsonl").read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError, KeyError):
            rec = json.loads(line)
            if not rec.get("resolved"):
                why.append(f"{rec['instance_id']}: ok={rec.get('ok')} status={rec.get('status')} "
                           f"stop={rec.get('stop_reason')} error={str(rec.get('error', ''))[:200]}")
    return why or ["results.jsonl or preds.jsonl lacks a task"]


def search_scenario(strategy: str, task_file: Path) -> Scenario:
    worker = str(ROOT / "bench" / "chaos_worker.py")

    def final_check(out: Path) -> dict[str, int]:
        result = json.loads((out / "result.json").read_text())
        stored = len(stored_attempts(out / "store.sqlite"))
        # every stored attempt of the run must be one the search counts: more means work redone under a new id
        return {"lost": max(0, result["attempts"] - stored), "duplicated": max(0, stored - result["attempts"])}

    return Scenario(strategy, lambda out: [sys.executable, worker, "search", strategy, str(task_file), str(out)],
                    lambda out: out / "store.sqlite", final_check, guess_s=15.0)


def evolve_scenario(task_file: Path) -> Scenario:
    worker = str(ROOT / "bench" / "chaos_worker.py")

    def final_check(out: Path) -> dict[str, int]:
        summary = json.loads((out / "result.json").read_text())
        episodes = summary.get("episodes", [])
        versions = sorted((out / "registry" / "adapters").rglob("adapter_config.json"))
        # one episode, at most one adapter trained for it, and its report present
        lost = int(len(episodes) != 1) + int(not (out / "evolve" / "episode-0" / "report.json").exists())
        return {"lost": lost, "duplicated": max(0, len(versions) - 1)}

    return Scenario("evolve", lambda out: [sys.executable, worker, "evolve", str(task_file), str(out)],
                    lambda out: out / "store.sqlite", final_check, guess_s=40.0)
