"""Which instances can be graded here at all: run the gold patch and the empty patch of each before a batch.

An instance is valid in this environment when its gold patch resolves it and the empty patch does not. On a
machine without SWE-bench's Docker images many instances are not (the repo cannot be cloned, its test env
does not build, a test needs a system library), and a batch over them would report model failures that are
really environment failures. Results stream to `validation.jsonl` (a rerun skips finished instances, like a
batch) and are summarised in `validation.json`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_selfevolve.batch import _append_line
from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.tasks import Task


def _failures(report: Any) -> list[str]:
    status = report.tests_status or {}
    return [t for g in ("FAIL_TO_PASS", "PASS_TO_PASS") for t in status.get(g, {}).get("failure", [])]


def _all_pass(report: Any) -> bool:
    """The tests would call the patch a fix (the 'no patch' rule of `resolved` aside)."""
    return not report.error and bool(report.tests_status) and not _failures(report)


def validate_one(task_data: dict[str, Any]) -> dict[str, Any]:
    """Grade gold and empty for one instance (runs in a worker process): plain data in and out."""
    from agent_selfevolve.envs.grading import grade

    task = Task.model_validate(task_data)
    start = time.monotonic()
    rec: dict[str, Any] = {"instance_id": task.instance_id, "valid": False}
    try:
        if not task.patch.strip():
            rec["reason"] = "no gold patch"
            return rec
        gold = grade(task, task.patch)
        rec.update(gold_resolved=gold.resolved, gold_applied=gold.patch_applied)
        if not gold.resolved:
            if gold.error.startswith("test env"):  # the cause is the build's last line (ImportError: ...)
                last = next((ln.strip() for ln in reversed(gold.test_output.splitlines()) if ln.strip()), "")
                rec["reason"] = f"environment: {last[:300]} [{gold.error[:300]}]"
            elif not gold.patch_applied and gold.error:
                rec["reason"] = f"gold patch: {gold.error.replace('model patch ', '', 1)}"
            elif gold.error:
                rec["reason"] = f"gold run: {gold.error}"
            else:
                failing = _failures(gold)
                rec["reason"] = f"gold patch leaves {len(failing)} test(s) failing: {', '.join(failing[:5])}"
            rec["gold_output_tail"] = gold.test_output[-2000:]
            return rec
        empty = grade(task, "")
        f2p_pass = empty.tests_status.get("FAIL_TO_PASS", {}).get("success", [])
        rec.update(empty_resolves=_all_pass(empty), f2p_passing_without_patch=f2p_pass)
        if empty.error:
            rec["reason"] = f"empty run: {empty.error}"
        elif rec["empty_resolves"]:
            rec["reason"] = "the tests pass without any patch: they cannot tell a fix from no fix"
        else:
            rec["valid"] = True
            if f2p_pass:
                rec["warning"] = f"{len(f2p_pass)} FAIL_TO_PASS test(s) already pass at the base commit"
        return rec
    except Exception as exc:  # an environment problem (clone, env build): the instance is invalid, with why
        rec["reason"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:400] if str(exc) else ''}"
        return rec
    finally:
        rec["elapsed_s"] = round(time.monotonic() - start, 2)


def read_validation(out_dir: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    path = Path(out_dir) / "validation.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: that instance runs again
            done[rec["instance_id"]] = rec
    return done


def validate_tasks(tasks: list[Task], out_dir: str | Path, workers: int = 1,
                   on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Validate every unfinished instance; write and return the `validation.json` summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = read_validation(out)
    todo = [t.model_dump() for t in tasks if t.instance_id not in done]

    def record(rec: dict[str, Any]) -> None:
        _append_line(out / "validation.jsonl", rec)
        done[rec["instance_id"]] = rec
        if on_result:
            on_result(rec)

    if workers <= 1:
        for data in todo:
            record(validate_one(data))
    else:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(validate_one, data): data["instance_id"] for data in todo}
            for fut in cf.as_completed(futures):
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker died: record it, go on
                    rec = {"instance_id": futures[fut], "valid": False, "reason": f"worker crashed: {exc}"}
                record(rec)
    ids = [t.instance_id for t in tasks]
    recs = [done[i] for i in ids if i in done]
    summary = {"total_instances": len(ids), "valid_instances": sum(r["valid"] for r in recs),
               "invalid_instances": sum(not r["valid"] for r in recs),
               "valid_ids": [r["instance_id"] for r in recs if r["valid"]],
               "invalid": {r["instance_id"]: r.get("reason", "") for r in recs if not r["valid"]},
               "warnings": {r["instance_id"]: r["warning"] for r in recs if r.get("warning")},
               "instances": {r["instance_id"]: r for r in recs}}
    write_json_atomic(out / "validation.json", summary)
    return summary
