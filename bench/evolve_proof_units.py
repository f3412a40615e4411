"""The evolution proof's units of work: held-out evaluation, search on training tasks, LoRA training.

Each unit resumes task by task from its committed per-task JSONL (a task recorded there is never run again) and
is finished when its summary is written (atomically). Before each task the run checks that the task fits before the
deadline (from this unit's measured seconds per task, else an earlier unit's, else a default) and stops cleanly if
not. A training runs until the deadline and pauses there (its state under `<work>/resume/`, saved every 10 min as
well, so a kill loses at most that), and the next run goes on from it: an episode's LoRA on a 2-core CPU takes
longer than a session. An adapter the run needs but does not have (a fresh machine: adapters are never committed)
is trained again from the committed rows and config, after checking their hash against the one recorded when it
was first trained. A CPU trainer need not give the same weights on another machine, so each task record names the
adapter that acted (`adapter`), and the report says when a unit's tasks ran on more than one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evolve_proof_core import (
    MIXED,
    ROW_KINDS,
    SEARCH_ARM,
    OutOfTime,
    ProofConfig,
    ProofError,
    Unit,
    acting_training,
    append_record,
    arm_dpo_overrides,
    arm_kinds,
    check_rows,
    held_out_ids,
    mixed_tasks,
    read_records,
    rows_sha256,
    same_weights,
    sha256_text,
    train_ids,
    unit_dir,
    unit_done,
    weights_hash,
)

from agent_selfevolve.agent import Limits
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.evolve import SELECT_WITH, mcnemar
from agent_selfevolve.fileio import write_json_atomic, write_text_atomic
from agent_selfevolve.models.base import Usage
from agent_selfevolve.search import best_of_n
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.setups import get_setup
from agent_selfevolve.sources.factory_repo import project_of
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.train.dataset import build_dataset, dedup_rows
from agent_selfevolve.train.jsonl import read_jsonl, write_jsonl
from agent_selfevolve.train.lora import TrainingPaused

try:  # the bench runs on the agent a seed is pinned to (bench/agent_tree.py), which may predate recorded log-probs
    from agent_selfevolve.train.dataset import mean_policy_logprob
except ImportError:
    def mean_policy_logprob(rows: Any) -> tuple[float | None, int]:
        return None, 0  # that agent records none

DEFAULT_SECONDS = {"eval": 90.0, "search": 90.0, "train_row_epoch": 20.0, "train_overhead": 300.0}
"""Estimates before anything is measured: seconds per held-out attempt, per search sample, per training row and
epoch, and a training's fixed cost (loading, GGUF export). Measured seconds replace them as units finish."""
TRAIN_MIN_SECONDS = 900.0
"""A training (resumable) starts when this much time is left, or its whole estimate if that is less."""


@dataclass
class Backend:
    """What acts and what trains: the real 0.5B under llama.cpp and LoRA, or the FAKE pair of the dry run."""

    policy: Callable[[Any], Any]
    train: Callable[..., tuple[Path, dict[str, Any]]]
    base_hf_dir: Path
    registry: Any
    label: str
    train_runtime: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields that do not change the result (threads): passed to training, kept out of the hash."""


def suite_of(task_id: str) -> str:
    return "factory" if project_of(task_id) else "humaneval"


def success_table(outcomes: dict[str, bool]) -> dict[str, Any]:
    by: dict[str, dict[str, int]] = {}
    for task_id, ok in outcomes.items():
        s = by.setdefault(suite_of(task_id), {"n": 0, "resolved": 0})
        s["n"] += 1
        s["resolved"] += int(ok)
    n = len(outcomes)
    return {"n": n, "resolved": sum(outcomes.values()), "success": sum(outcomes.values()) / n if n else None,
            "by_suite": {k: {**v, "success": v["resolved"] / v["n"]} for k, v in sorted(by.items())}}


class Proof:
    def __init__(self, config: ProofConfig, split: dict[str, Any], tasks: dict[str, Task], seed_dir: Path,
                 work_dir: Path, backend: Backend, *, deadline: float | None = None, progress: Path | None = None,
                 command: str = "", concurrency: int = 2, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.time):
        self.config, self.split, self.tasks, self.seed_dir = config, split, tasks, seed_dir
        self.backend, self.deadline, self.progress, self.command = backend, deadline, progress, command
        self.work_dir = work_dir
        self.concurrency, self.log, self.clock = concurrency, log, clock
        work_dir.mkdir(parents=True, exist_ok=True)
        self.store = TrajectoryStore(work_dir / "runs.sqlite")
        self.session = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}"
        self.prefix = f"proof-s{config.seed}"
        self.limits = Limits(max_steps=config.max_steps)
        self._adapters: dict[tuple[str, int], Any] = {}

    # -- time --------------------------------------------------------------------------------------------------
    def event(self, **data: Any) -> None:
        data = {"t": round(self.clock(), 1), "session": self.session, **data}
        if self.progress is not None:
            append_record(self.progress, data)
        self.log(json.dumps(data, default=str)[:200])

    def fits(self, seconds: float, what: str) -> None:
        if self.deadline is not None and self.clock() + seconds > self.deadline:
            left = max(0.0, self.deadline - self.clock())
            raise OutOfTime(f"{what} needs ~{seconds / 60:.1f} min, {left / 60:.1f} min left")

    def per_task_seconds(self, kind: str, records: list[dict[str, Any]]) -> float:
        """This unit's mean so far, else the seed's earlier units of the same kind, else the default."""
        if records:
            return sum(r["seconds"] for r in records) / len(records)
        done = [json.loads(p.read_text()) for p in self.seed_dir.rglob("summary.json")]
        done = [s for s in done if s.get("kind") == kind and s.get("n")]
        if done:
            return sum(s["seconds"] for s in done) / sum(s["n"] for s in done)
        return DEFAULT_SECONDS[kind] * (self.config.samples_per_task if kind == "search" else 1)

    def train_seconds(self, rows: int) -> float:
        measured = [json.loads(p.read_text()) for p in self.seed_dir.glob("ep*/*/train.json")]
        rates = [t["seconds"] / max(1, t["rows_total"]) for t in measured if t.get("seconds") and t.get("rows_total")]
        epochs = float(self.config.train.get("epochs", 1))
        per_row = max(rates) if rates else DEFAULT_SECONDS["train_row_epoch"] * epochs
        return DEFAULT_SECONDS["train_overhead"] * (0 if rates else 1) + per_row * rows

    # -- units -------------------------------------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> None:
        if unit_done(self.seed_dir, unit):
            if unit.kind == "search":
                self._strip_search_rows(unit)
            return
        self.event(event="unit_start", unit=unit.name)
        {"eval": self.run_eval, "search": self.run_search, "train": self.run_train}[unit.kind](unit)
        self.event(event="unit_done", unit=unit.name)

    def outcomes(self, unit: Unit) -> dict[str, bool] | None:
        """A finished evaluation's {task_id: resolved}, or None if it has not finished."""
        if not unit_done(self.seed_dir, unit):
            return None
        return {r["task_id"]: r["resolved"] for r in read_records(unit_dir(self.seed_dir, unit) / "outcomes.jsonl")}

    def run_eval(self, unit: Unit) -> None:
        folder = unit_dir(self.seed_dir, unit)
        records = read_records(folder / "outcomes.jsonl")
        done = {r["task_id"] for r in records}
        todo = [self.tasks[i] for i in held_out_ids(self.split) if i not in done]
        label = unit.base_label if unit.episode is None else f"{unit.arm}:ep{unit.episode}"
        run_id = f"{self.prefix}:eval:{label}"
        if todo:
            version = None if unit.episode is None else self.adapter(unit.arm or SEARCH_ARM, unit.episode)
            model = self.backend.policy(version)
            for task in todo:
                self.fits(self.per_task_seconds("eval", records), f"{unit.name} task {task.instance_id}")
                start = self.clock()
                spec = AttemptSpec(task.instance_id, attempt_id=f"{run_id}:{task.instance_id}", run_id=run_id,
                                   operator="eval", model_params={"temperature": 0.0,
                                                                  **({"seed": unit.draw} if unit.draw else {})})
                traj = run_attempt(task, model, spec, limits=self.limits, store=self.store, agent=self.config.profile)
                record = {"task_id": task.instance_id, "suite": suite_of(task.instance_id), "resolved": traj.resolved,
                          "status": traj.status, "tokens": traj.total_usage.total_tokens,
                          "seconds": round(self.clock() - start, 2), "session": self.session,
                          "adapter": version.adapter_hash if version is not None else None}
                append_record(folder / "outcomes.jsonl", record)
                records.append(record)
                self.event(event="task", unit=unit.name, done=len(records), total=len(held_out_ids(self.split)),
                           task_id=task.instance_id, resolved=traj.resolved, seconds=record["seconds"])
        after = {r["task_id"]: r["resolved"] for r in records}
        summary: dict[str, Any] = {"kind": "eval", "unit": unit.name, "seed": self.config.seed, "arm": unit.arm,
                                   "episode": unit.episode, "policy": self.policy_info(unit.arm, unit.episode),
                                   **success_table(after),
                                   "tokens": sum(r["tokens"] for r in records),
                                   "seconds": round(sum(r["seconds"] for r in records), 1)}
        if unit.draw:
            base = self.outcomes(Unit("eval"))
            summary.update(draw=unit.draw, vs_base=mcnemar(base, after) if base is not None else None)
        if unit.episode is not None:
            base = self.outcomes(Unit("eval"))
            prev = base if unit.episode == 0 else self.outcomes(Unit("eval", unit.episode - 1, unit.arm))
            summary["vs_base"] = mcnemar(base, after) if base is not None else None
            summary["vs_previous"] = mcnemar(prev, after) if prev is not None else None
        self._finish(folder, summary, records)

    def _finish(self, folder: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
        sessions = sorted({r.get("session", "") for r in records} | {self.session})
        write_json_atomic(folder / "summary.json", {**summary, "command": self.command, "sessions": sessions,
                                                    "backend": self.backend.label,
                                                    "finished_at": datetime.now(UTC).isoformat()})

    def run_search(self, unit: Unit) -> None:
        k = unit.episode or 0
        folder = unit_dir(self.seed_dir, unit)
        records = read_records(folder / "tasks.jsonl")
        done = {r["task_id"] for r in records}
        todo = [self.tasks[i] for i in train_ids(self.split) if i not in done]
        never = held_out_ids(self.split)
        if todo:
            version = self.adapter(SEARCH_ARM, k - 1) if k > 0 else None
            model = self.backend.policy(version)
            for task in todo:
                self.fits(self.per_task_seconds("search", records), f"{unit.name} task {task.instance_id}")
                start = self.clock()
                run_id = f"{self.prefix}:search:ep{k}:{task.instance_id}"
                ctx = SearchContext(task=task, model=model, store=self.store, limits=self.limits, budget=Budget(),
                                    select_with=SELECT_WITH, agent=get_setup(self.config.profile))
                result = best_of_n(ctx, run_id=run_id, n=self.config.samples_per_task,
                                   temperature=self.config.temperature,
                                   max_concurrency=max(1, min(self.concurrency, self.config.samples_per_task)))
                trajs = sorted(self.store.attempts(run_id=run_id), key=lambda t: t.attempt_id)
                quiet = logging.getLogger("agent_selfevolve.train.dataset")
                level, _ = quiet.level, quiet.setLevel(logging.ERROR)  # one task's empty kinds are the rule here
                try:
                    rows, _ = build_dataset(trajs, held_out=never, kinds=ROW_KINDS, prompts="canonical")
                finally:
                    quiet.setLevel(level)
                for kind, kind_rows in rows.items():
                    check_rows(kind_rows, self.split, f"{unit.name} {kind} rows of {task.instance_id}")
                record = {"task_id": task.instance_id, "suite": suite_of(task.instance_id),
                          "resolved": result.resolved, "pass_at_n": result.pass_at_n,
                          "attempts": [t.resolved for t in trajs],
                          "tokens": Usage.from_dict(result.usage).total_tokens,
                          "seconds": round(self.clock() - start, 2), "session": self.session,
                          "adapter": version.adapter_hash if version is not None else None, "rows": rows}
                append_record(folder / "tasks.jsonl", record)
                records.append(record)
                self.event(event="task", unit=unit.name, done=len(records), total=len(train_ids(self.split)),
                           task_id=task.instance_id, resolved=result.resolved, pass_at_n=result.pass_at_n,
                           rows={kind: len(r) for kind, r in rows.items()}, seconds=record["seconds"])
        order = {i: n for n, i in enumerate(train_ids(self.split))}
        records.sort(key=lambda r: order[r["task_id"]])
        hashes, sizes, sft_logprob = {}, {}, None
        for kind in ROW_KINDS:
            kind_rows, _ = dedup_rows(row for r in records for row in r["rows"].get(kind, []))
            check_rows(kind_rows, self.split, f"{unit.name} {kind} rows")
            hashes[kind] = write_jsonl(folder / f"rows-{kind}.jsonl", kind_rows)
            sizes[kind] = len(kind_rows)
            if kind == "sft":
                sft_logprob, _ = mean_policy_logprob(kind_rows)
        outcomes = {r["task_id"]: r["resolved"] for r in records}
        self._finish(folder, {"kind": "search", "unit": unit.name, "seed": self.config.seed, "episode": k,
                              "policy": self.policy_info(SEARCH_ARM, k - 1 if k > 0 else None),
                              **success_table(outcomes),
                              "pass_at_n": sum(r["pass_at_n"] for r in records),
                              "attempts": sum(len(r["attempts"]) for r in records),
                              "attempts_resolved": sum(sum(r["attempts"]) for r in records),
                              "tasks_with_both": sum(1 for r in records if len(set(r["attempts"])) == 2),
                              "samples_per_task": self.config.samples_per_task,
                              "temperature": self.config.temperature, "rows": sizes, "row_hashes": hashes,
                              "sft_policy_logprob": sft_logprob,  # near 0: rows the policy writes anyway
                              "tokens": sum(r["tokens"] for r in records),
                              "seconds": round(sum(r["seconds"] for r in records), 1)}, records)
        self._strip_search_rows(unit)

    def _strip_search_rows(self, unit: Unit) -> None:
        """Once the rows files and summary are written, the per-task file keeps outcomes only (no second copy)."""
        path = unit_dir(self.seed_dir, unit) / "tasks.jsonl"
        records = read_records(path)
        if any("rows" in r for r in records):
            write_text_atomic(path, "".join(json.dumps({k: v for k, v in r.items() if k != "rows"},
                                                       sort_keys=True) + "\n" for r in records))

    # -- training ----------------------------------------------------------------------------------------------
    def train_inputs(self, arm: str, k: int) -> tuple[dict[str, list[dict[str, Any]]], str, dict[str, Any]]:
        """Rows of `arm`'s kinds from every search up to episode k (a replay buffer), each file checked against
        the hash its search recorded, and the hash of everything that decides the adapter."""
        kinds = arm_kinds(arm)
        rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        file_hashes: dict[str, list[str]] = {kind: [] for kind in kinds}
        mixed = arm.endswith(MIXED)
        kept: list[list[str]] = []  # a -mixed arm's tasks per search, part of what decides its adapter
        for j in range(k + 1):
            folder = unit_dir(self.seed_dir, Unit("search", j))
            summary = json.loads((folder / "summary.json").read_text())
            keep = mixed_tasks(read_records(folder / "tasks.jsonl")) if mixed else None
            if keep is not None:
                kept.append(sorted(keep))
            for kind in kinds:
                path = folder / f"rows-{kind}.jsonl"
                digest = rows_sha256(path)
                if digest != summary["row_hashes"][kind]:
                    raise ProofError(f"{path} has sha256 {digest[:12]}, its search recorded "
                                     f"{summary['row_hashes'][kind][:12]}: the committed rows were changed")
                rows[kind] += [r for r in read_jsonl(path) if keep is None or r["meta"]["task_id"] in keep]
                file_hashes[kind].append(digest)
        for kind, kind_rows in rows.items():
            check_rows(kind_rows, self.split, f"training rows ({kind}) of {arm} episode {k}")
        parent = None
        if self.config.init == "previous" and k > 0:
            parent = json.loads((unit_dir(self.seed_dir, Unit("train", k - 1, arm)) / "train.json").read_text())
            parent = parent.get("train_hash")
        spec = {"seed": self.config.seed, "arm": arm, "kinds": list(kinds), "episode": k, "rows": file_hashes,
                "train": self.config.train, "init": self.config.init, "parent": parent, "model": self.config.model,
                "backend": self.backend.label, **({"mixed_tasks": kept} if mixed else {}),
                **({"dpo_overrides": overrides} if (overrides := arm_dpo_overrides(arm)) else {})}
        return rows, sha256_text(json.dumps(spec, sort_keys=True)), spec

    def run_train(self, unit: Unit) -> None:
        arm, k = unit.arm or SEARCH_ARM, unit.episode or 0
        rows, digest, spec = self.train_inputs(arm, k)
        total = sum(len(v) for v in rows.values())
        info: dict[str, Any] = {"kind": "train", "unit": unit.name, "train_hash": digest, "spec": spec,
                                "rows": {kind: len(v) for kind, v in rows.items()}, "rows_total": total}
        if not rows.get("sft") and not rows.get("recovery"):
            info["skipped"] = "no SFT or recovery rows: nothing succeeded in the searches so far"
        else:
            self.fits(min(self.train_seconds(total), TRAIN_MIN_SECONDS), unit.name)
            start = self.clock()
            version = self._train(arm, k, rows, digest)
            info.update(seconds=round(self.clock() - start, 1), adapter_hash=version.adapter_hash,
                        weights_hash=weights_hash(version.path), metrics=version.metrics)
        write_json_atomic(unit_dir(self.seed_dir, unit) / "train.json",
                          {**info, "command": self.command, "session": self.session, "backend": self.backend.label})

    def _train(self, arm: str, k: int, rows: dict[str, list[dict[str, Any]]], digest: str) -> Any:
        """Train (or go on training) `arm`'s episode-k adapter until the deadline; OutOfTime when it paused there.
        The seconds recorded are this call's, so a training that spanned runs reports its last part only; the
        trainer's own `time_s` (in the metrics) is the whole."""
        registry = self.backend.registry
        init = self.adapter(arm, k - 1) if self.config.init == "previous" and k > 0 else None
        name = f"{self.prefix}-{arm.replace('+', '_')}"
        resume = self.work_dir / "resume" / f"{name}-ep{k}-{digest[:16]}"
        try:
            out, metrics = self.backend.train(
                self.backend.base_hf_dir, rows, lambda stage: registry.staging_path(f"{name}-ep{k}-{stage}"),
                {**self.config.train, "seed": self.config.seed, **self.backend.train_runtime},
                dpo_overrides=arm_dpo_overrides(arm), init_adapter=init.path if init is not None else None,
                resume_dir=resume, stop_at=self.deadline)
        except TrainingPaused as exc:
            self.event(event="train_paused", arm=arm, episode=k, step=exc.step, total=exc.total)
            raise OutOfTime(f"training {arm} episode {k} paused at step {exc.step}/{exc.total} (state in "
                            f"{resume}); the next run goes on from there") from exc
        version = registry.register(name, out, parent=init.ref if init is not None else None, data_hashes=[digest],
                                    metrics={**metrics, "train_hash": digest, "episode": k, "arm": arm})
        self._adapters[(arm, k)] = version
        shutil.rmtree(resume, ignore_errors=True)  # registered: the paused state and stage copies are spent
        return version

    def adapter(self, arm: str, k: int) -> Any:
        """Episode k's adapter of `arm` (None: the base model, before episode 0 or while nothing was trained):
        from the registry if this machine has it, else re-derived from the committed rows and config."""
        if k < 0:
            return None
        if (arm, k) in self._adapters:
            return self._adapters[(arm, k)]
        path = unit_dir(self.seed_dir, Unit("train", k, arm)) / "train.json"
        if not path.exists():
            raise ProofError(f"{arm} episode {k} has not been trained ({path} missing)")
        info = json.loads(path.read_text())
        if info.get("skipped"):
            return self.adapter(arm, k - 1)
        name = f"{self.prefix}-{arm.replace('+', '_')}"
        found = next((v for v in self.backend.registry.versions(name)
                      if v.metrics.get("train_hash") == info["train_hash"]), None)
        if found is None:
            rows, digest, _ = self.train_inputs(arm, k)
            if digest != info["train_hash"]:
                raise ProofError(f"cannot re-derive {arm} episode {k}: its rows and config hash to {digest[:12]}, "
                                 f"{path} recorded {info['train_hash'][:12]} (rows or config changed)")
            self.fits(min(self.train_seconds(sum(len(v) for v in rows.values())), TRAIN_MIN_SECONDS),
                      f"re-deriving {arm} episode {k}")
            start = self.clock()
            found = self._train(arm, k, rows, digest)
            weights = weights_hash(found.path)
            same = weights == info["weights_hash"] if info.get("weights_hash") else \
                same_weights(found.path, info["adapter_hash"])
            append_record(path.with_name("rederived.jsonl"), {
                "session": self.session, "seconds": round(self.clock() - start, 1),
                "adapter_hash": found.adapter_hash, "weights_hash": weights, "same_weights": same})
            self.event(event="rederived", arm=arm, episode=k, same_weights=same)
        self._adapters[(arm, k)] = found
        return found

    def policy_info(self, arm: str | None, k: int | None) -> dict[str, Any]:
        """Which adapter acted: arm, the episode whose training it is (a skipped training leaves the one before)
        and its train hash; machine-independent, unlike a registry ref."""
        acting = acting_training(self.seed_dir, arm, k) if arm is not None and k is not None else None
        if acting is None:
            return {"arm": None, "episode": None, "train_hash": None, "base": True}
        return {"arm": arm, "episode": acting[0], "train_hash": acting[1]["train_hash"]}
