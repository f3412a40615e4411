"""The trajectory store: the only module that writes the results database.

SQLite with WAL; each write is one transaction, so a crash loses at most the attempt in flight. Attempts are
upserted by id, which makes re-recording after a resume idempotent (no duplicated trajectories).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_text_atomic
from agent_selfevolve.trajectory import Trajectory

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'running',
  summary TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
  id TEXT PRIMARY KEY, run_id TEXT NOT NULL, task_id TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL,
  operator TEXT NOT NULL DEFAULT '', node_id TEXT NOT NULL DEFAULT '', parent_ids TEXT NOT NULL DEFAULT '[]',
  patch TEXT NOT NULL DEFAULT '', reward REAL, resolved INTEGER, reward_source TEXT,
  prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
  cost REAL NOT NULL DEFAULT 0, n_steps INTEGER NOT NULL DEFAULT 0, elapsed_s REAL NOT NULL DEFAULT 0,
  trajectory TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_run ON attempts(run_id, task_id);
CREATE TABLE IF NOT EXISTS steps (
  attempt_id TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (attempt_id, idx));
CREATE TABLE IF NOT EXISTS evaluations (
  attempt_id TEXT PRIMARY KEY, resolved INTEGER NOT NULL, reward REAL NOT NULL, source TEXT NOT NULL,
  report TEXT NOT NULL, created_at REAL NOT NULL);
"""


class TrajectoryStore:
    def __init__(self, path: str | Path = "runs/selfevolve.sqlite"):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._lock = threading.RLock()
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # runs -------------------------------------------------------------------------------------------------
    def create_run(self, kind: str, config: dict[str, Any], run_id: str | None = None) -> str:
        """Create a run, or return the existing one with that id (a resume)."""
        run_id = run_id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute("INSERT OR IGNORE INTO runs(id, kind, config, created_at, updated_at)"
                               " VALUES (?,?,?,?,?)", (run_id, kind, json.dumps(config, default=str), now, now))
        return run_id

    def finish_run(self, run_id: str, summary: dict[str, Any], status: str = "done") -> None:
        with self._lock, self._conn:
            self._conn.execute("UPDATE runs SET status=?, summary=?, updated_at=? WHERE id=?",
                               (status, json.dumps(summary, default=str), time.time(), run_id))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        row = self._conn.execute("SELECT id, kind, config, status, summary, created_at FROM runs WHERE id=?",
                                 (run_id,)).fetchone()
        if not row:
            return None
        return {"id": row[0], "kind": row[1], "config": json.loads(row[2]), "status": row[3],
                "summary": json.loads(row[4]), "created_at": row[5]}

    def runs(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self._conn.execute("SELECT id FROM runs ORDER BY created_at")]
        return [r for r in (self.get_run(i) for i in ids) if r]

    # attempts ---------------------------------------------------------------------------------------------
    def record(self, traj: Trajectory) -> None:
        """Insert or replace an attempt with its steps and evaluation, in one transaction."""
        usage = traj.total_usage
        ev = traj.evaluation or {}
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO attempts(id, run_id, task_id, model, status, operator, node_id, parent_ids,"
                " patch, reward, resolved, reward_source, prompt_tokens, completion_tokens, cost, n_steps, elapsed_s,"
                " trajectory, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (traj.attempt_id, traj.run_id, traj.task_id, traj.model, traj.status, traj.operator, traj.node_id,
                 json.dumps(traj.parent_ids), traj.patch, ev.get("reward"),
                 None if not ev else int(bool(ev.get("resolved"))), ev.get("source"), usage.prompt_tokens,
                 usage.completion_tokens, usage.cost, len(traj.steps), traj.elapsed_s, traj.to_json(), time.time()))
            self._conn.execute("DELETE FROM steps WHERE attempt_id=?", (traj.attempt_id,))
            self._conn.executemany("INSERT INTO steps(attempt_id, idx, data) VALUES (?,?,?)",
                                   [(traj.attempt_id, i, json.dumps(s, default=str)) for i, s in enumerate(traj.steps)])
            if ev:
                self._conn.execute(
                    "INSERT OR REPLACE INTO evaluations(attempt_id, resolved, reward, source, report, created_at)"
                    " VALUES (?,?,?,?,?,?)", (traj.attempt_id, int(bool(ev.get("resolved"))), ev.get("reward", 0.0),
                                              ev.get("source", ""), json.dumps(ev.get("details", {})), time.time()))

    def record_task(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        with self._lock, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO tasks(id, kind, data) VALUES (?,?,?)",
                               (task_id, kind, json.dumps(data, default=str)))

    def get(self, attempt_id: str) -> Trajectory | None:
        row = self._conn.execute("SELECT trajectory FROM attempts WHERE id=?", (attempt_id,)).fetchone()
        return Trajectory.from_dict(json.loads(row[0])) if row else None

    def has(self, attempt_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM attempts WHERE id=?", (attempt_id,)).fetchone() is not None

    def attempts(self, run_id: str | None = None, task_id: str | None = None,
                 resolved: bool | None = None) -> list[Trajectory]:
        sql, args = "SELECT trajectory FROM attempts WHERE 1=1", []
        for col, val in (("run_id", run_id), ("task_id", task_id)):
            if val is not None:
                sql += f" AND {col}=?"
                args.append(val)
        if resolved is not None:
            sql += " AND resolved=?"
            args.append(int(resolved))
        rows = self._conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [Trajectory.from_dict(json.loads(r[0])) for r in rows]

    def tokens(self, run_id: str) -> int:
        """Prompt plus completion tokens of the run's stored attempts (from their columns: no trajectory is read)."""
        row = self._conn.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM attempts "
                                 "WHERE run_id=?", (run_id,)).fetchone()
        return int(row[0])

    def count(self, run_id: str | None = None) -> int:
        if run_id is None:
            return self._conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
        return self._conn.execute("SELECT COUNT(*) FROM attempts WHERE run_id=?", (run_id,)).fetchone()[0]

    # export -----------------------------------------------------------------------------------------------
    def iter_export(self, fmt: str, run_id: str | None = None,
                    resolved: bool | None = None) -> Iterator[dict[str, Any]]:
        for traj in self.attempts(run_id=run_id, resolved=resolved):
            if fmt == "mini-swe-agent":
                yield traj.to_mini_swe_agent()
            elif fmt == "openai":
                yield traj.to_openai_finetune()
            elif fmt == "raw":
                yield traj.to_dict()
            else:
                raise ValueError(f"unknown export format '{fmt}': mini-swe-agent, openai or raw")

    def export_jsonl(self, out: str | Path, fmt: str = "mini-swe-agent", run_id: str | None = None,
                     resolved: bool | None = None) -> int:
        rows = [json.dumps(r, default=str) for r in self.iter_export(fmt, run_id, resolved)]
        write_text_atomic(out, "".join(r + "\n" for r in rows))
        return len(rows)
