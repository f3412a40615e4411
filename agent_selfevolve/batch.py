"""Run a strategy over many tasks and write SWE-bench artefacts; rerunning the same command resumes.

Workers (processes by default) solve tasks; the driver alone writes the output folder: per-task trajectory and
report.json (atomic), then one line appended to `results.jsonl` (the commit point), then `preds.jsonl` rewritten
from it atomically. `kill -9` loses only tasks in flight and a rerun skips everything finished.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import multiprocessing
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent_selfevolve.agent import Limits
from agent_selfevolve.fileio import write_json_atomic, write_text_atomic
from agent_selfevolve.tasks import Task


@dataclass
class BatchConfig:
    model: str = "local"
    model_options: dict[str, Any] = field(default_factory=dict)
    strategy: str = "single"
    """'single' (one attempt), 'best_of_n', 'se_agent' or 'hgm'."""
    strategy_options: dict[str, Any] = field(default_factory=dict)
    select_with: str = "proxy"
    """'proxy' | 'judge' (the agent's model judges) | 'tests' (hidden tests choose: an oracle run, labelled so)."""
    limits: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    """Per task: max_calls, max_tokens, max_cost, max_wall_s."""
    run_id: str = "batch"
    baseline: bool = False
    """Also run best-of-N at the token budget the strategy used (the compute-matched baseline)."""
    profile: str = "auto"
    """Agent set-up (`setups`: a shipped name or a .yaml path); 'auto' picks `selfcheck` for the embedded models."""


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_results(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Finished tasks by id. A torn last line (a crash mid-write) is ignored and the task re-run."""
    path = out_dir / "results.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[rec["instance_id"]] = rec
    return done


def solve_task(task_data: dict[str, Any], config_data: dict[str, Any], out_dir: str,
               on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Worker entry point (runs in a worker process): plain data in, plain data out."""
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models import make_model
    from agent_selfevolve.search import strategies
    from agent_selfevolve.search.common import Budget, SearchContext
    from agent_selfevolve.search.rewards import llm_judge
    from agent_selfevolve.setups import get_setup
    from agent_selfevolve.store import TrajectoryStore

    config = BatchConfig(**config_data)
    task = Task.model_validate(task_data)
    store = TrajectoryStore(Path(out_dir) / "runs.sqlite")
    start = time.monotonic()
    try:
        setup = get_setup(config.profile, config.model)
        model = make_model(config.model, **{**setup.model_options(config.model), **config.model_options})
        limits = Limits(**config.limits)
        run_id = f"{config.run_id}:{task.instance_id}"
        judge = llm_judge(model) if config.select_with == "judge" else None
        baseline: dict[str, Any] | None = None
        if config.strategy == "single":
            traj = run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id=f"{run_id}:0", run_id=run_id),
                               limits=limits, store=store, select_with=config.select_with, judge=judge,
                               on_event=on_event, agent=setup)
            best, attempts, stop, spent = traj, 1, traj.status, traj.total_usage.to_dict()
        else:
            ctx = SearchContext(task=task, model=model, store=store, limits=limits, budget=Budget(**config.budget),
                                select_with=config.select_with, judge=judge, on_event=on_event,
                                agent=setup)
            result = strategies()[config.strategy](ctx, run_id=run_id, **config.strategy_options)
            best = store.get(result.best_attempt_id) if result.best_attempt_id else None
            attempts, stop, spent = result.attempts, result.stop_reason, dict(result.usage)
            if config.baseline and config.strategy != "best_of_n":
                baseline = compute_matched_baseline(ctx, result, run_id)
        report = (best.evaluation or {}).get("details", {}) if best else {}
        if best is not None and best.status in ("error", "env_error"):
            return {"instance_id": task.instance_id, "ok": False, "error": best.exit_message.splitlines()[0][:500],
                    "status": best.status, "attempts": attempts, "elapsed_s": time.monotonic() - start}
        if best is not None and report.get("grading_error"):  # the attempt ran; its grading crashed
            return {"instance_id": task.instance_id, "ok": False, "error": f"grading failed: {report['grading_error']}",
                    "status": best.status, "attempts": attempts, "elapsed_s": time.monotonic() - start}
        return {"instance_id": task.instance_id, "ok": True, "patch": best.patch if best else "",
                "resolved": bool(best and best.resolved), "status": best.status if best else "no_attempt",
                "selection": config.select_with, "oracle": config.select_with == "tests",
                "attempt_id": best.attempt_id if best else None, "attempts": attempts, "stop_reason": stop,
                "usage": best.usage if best else {}, "search_usage": spent, "report": report, "baseline": baseline,
                "trajectory": best.to_mini_swe_agent() if best else None, "elapsed_s": time.monotonic() - start,
                **_engine_stats(model)}
    except Exception as exc:  # recorded with its reason; the batch goes on
        if unwritable(exc):  # not the task's failure: recorded, it would never be retried
            raise OutputUnwritable(_unwritable_message(out_dir, exc)) from None
        return {"instance_id": task.instance_id, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=5), "elapsed_s": time.monotonic() - start}
    finally:
        store.close()


class OutputUnwritable(RuntimeError):
    """The output folder or its store cannot be written (disk full, read-only): the batch stops, nothing finished
    is lost, and rerunning the same command once there is room resumes it."""


def unwritable(exc: BaseException) -> bool:
    """An error of the storage under the output, not of the task."""
    if isinstance(exc, OutputUnwritable):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
    return isinstance(exc, sqlite3.OperationalError) and any(
        s in str(exc) for s in ("disk is full", "readonly database", "unable to open database", "disk I/O error"))


def _unwritable_message(out: str | Path, exc: BaseException) -> str:
    return (f"cannot write the batch output in {out}: {type(exc).__name__}: {exc}. Nothing finished is lost: make "
            "room (or make it writable) and rerun the same command to resume.")


def compute_matched_baseline(ctx: Any, result: Any, run_id: str) -> dict[str, Any]:
    """Best-of-N given exactly the tokens the strategy used (SE-Agent's users asked for this; the paper did not)."""
    from agent_selfevolve.search import best_of_n
    from agent_selfevolve.search.common import Budget

    tokens = int(result.usage.get("prompt_tokens", 0)) + int(result.usage.get("completion_tokens", 0))
    base_ctx = replace(ctx, budget=Budget(max_tokens=max(1, tokens)), on_event=None, started_at=time.time())
    base = best_of_n(base_ctx, n=1000, run_id=f"{run_id}:baseline")
    return {"strategy": "best_of_n", "token_budget": tokens, "resolved": base.resolved, "pass_at_n": base.pass_at_n,
            "attempts": base.attempts, "usage": base.usage}


def summarize(tasks: list[Task], results: dict[str, dict[str, Any]], select_with: str | None = None
              ) -> dict[str, Any]:
    """SWE-bench's run summary schema (version 2), plus how attempts were chosen: `oracle` is true when the hidden
    tests chose (select_with 'tests'), so `resolved_instances` is then an oracle figure, not a held-out one."""
    ids = [t.instance_id for t in tasks]
    finished = [results[i] for i in ids if i in results]
    error = [r["instance_id"] for r in finished if not r.get("ok")]
    completed = [r["instance_id"] for r in finished if r.get("ok")]
    submitted = [r["instance_id"] for r in finished if r.get("ok") and r.get("patch")]
    empty = [r["instance_id"] for r in finished if r.get("ok") and not r.get("patch")]
    resolved = [r["instance_id"] for r in finished if r.get("resolved")]
    unresolved = [i for i in completed if i not in resolved]
    tokens = sum(int(r.get("usage", {}).get("prompt_tokens", 0)) + int(r.get("usage", {}).get("completion_tokens", 0))
                 for r in finished)
    return {"total_instances": len(ids), "submitted_instances": len(submitted), "completed_instances": len(completed),
            "resolved_instances": len(resolved), "unresolved_instances": len(unresolved),
            "empty_patch_instances": len(empty), "error_instances": len(error),
            "completed_ids": sorted(completed), "incomplete_ids": sorted(set(ids) - set(results)),
            "empty_patch_ids": sorted(empty), "submitted_ids": sorted(submitted), "resolved_ids": sorted(resolved),
            "unresolved_ids": sorted(unresolved), "error_ids": sorted(error), "total_tokens_best_attempts": tokens,
            **_baseline_summary(finished), **_prefill_summary(finished), "schema_version": 2,
            **({"selection": select_with, "oracle": select_with == "tests"} if select_with else {})}


def _engine_stats(model: Any) -> dict[str, Any]:
    """The embedded model's prefix-reuse counters for this task (prompt tokens sent vs computed), if it keeps them."""
    stats = getattr(model, "stats", None)
    return {"engine": stats()} if callable(stats) else {}


def _prefill_summary(finished: list[dict[str, Any]]) -> dict[str, Any]:
    engines = [r["engine"] for r in finished if isinstance(r.get("engine"), dict) and "prompt_tokens" in r["engine"]]
    if not engines:
        return {}
    sent, computed = (sum(int(e.get(k, 0)) for e in engines) for k in ("prompt_tokens", "prefill_tokens"))
    return {"prefill": {"prompt_tokens_sent": sent, "prefill_tokens_computed": computed,
                        "saved": round(1 - computed / sent, 3) if sent else 0.0}}


def _baseline_summary(finished: list[dict[str, Any]]) -> dict[str, Any]:
    with_base = [r for r in finished if r.get("baseline")]
    if not with_base:
        return {}
    return {"baseline": {"strategy": "best_of_n (same token budget per task)", "instances": len(with_base),
                         "resolved_instances": sum(bool(r["baseline"]["resolved"]) for r in with_base),
                         "strategy_resolved_instances": sum(bool(r.get("resolved")) for r in with_base)}}


def run_batch(tasks: list[Task], out_dir: str | Path, config: BatchConfig, workers: int = 1,
              executor: str = "process", ray_address: str | None = None,
              on_result: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Solve every unfinished task; return the summary. `on_result(result, summary_so_far)` drives progress.
    Raises OutputUnwritable, with a message for the user, when the output cannot be written."""
    try:
        return _run_batch(tasks, Path(out_dir), config, workers, executor, ray_address, on_result, on_event)
    except Exception as exc:
        if isinstance(exc, OutputUnwritable) or not unwritable(exc):
            raise
        raise OutputUnwritable(_unwritable_message(out_dir, exc)) from None


def _run_batch(tasks: list[Task], out: Path, config: BatchConfig, workers: int, executor: str,
               ray_address: str | None, on_result: Callable[[dict[str, Any], dict[str, Any]], None] | None,
               on_event: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", asdict(config))
    results = read_results(out)
    todo = [t for t in tasks if t.instance_id not in results]
    jobs = [(t.model_dump(), asdict(config), str(out)) for t in todo]

    def record(res: dict[str, Any]) -> None:
        iid = res["instance_id"]
        if res.get("trajectory"):
            write_json_atomic(out / "trajectories" / f"{iid}.traj.json", res.pop("trajectory"))
        if res.get("report"):
            write_json_atomic(out / "reports" / iid / "report.json", res["report"])
        _append_line(out / "results.jsonl", res)  # the commit point: a task is finished once this line exists
        results[iid] = res
        write_preds(out, results, config.model)
        if on_result:
            on_result(res, summarize(tasks, results, config.select_with))

    if executor == "ray":
        from agent_selfevolve.ray_executor import run_on_ray

        for res in run_on_ray(solve_task, jobs, address=ray_address, max_in_flight=max(1, workers)):
            record(res)
    elif workers <= 1 or executor == "inline":
        for job in jobs:  # inline: attempt-level events reach the caller (progress bars)
            record(solve_task(*job, on_event=on_event))
    else:
        ctx = multiprocessing.get_context("spawn")
        with guarded_pool(), cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                                                    initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(solve_task, *job): job for job in jobs}
            for fut in cf.as_completed(futures):
                try:
                    res = fut.result()
                except Exception as exc:  # a worker died (OOM, segfault in a native lib): record, go on
                    if unwritable(exc):
                        raise
                    res = {"instance_id": futures[fut][0]["instance_id"], "ok": False,
                           "error": f"worker crashed: {type(exc).__name__}: {exc}"}
                record(res)
    write_preds(out, results, config.model)
    summary = summarize(tasks, results, config.select_with)
    write_json_atomic(out / "summary.json", summary)
    return summary


@contextlib.contextmanager
def guarded_pool() -> Iterator[None]:
    """Processes spawned inside this block die with this one, even by kill -9 the instant after they were spawned.

    Starts `pool_guard` (it kills every process carrying a mark in its environment once we are gone) and sets the
    mark in our environment, so each worker carries it from exec on: unlike the initializer's death signal, this
    covers a worker still importing the package. The resource tracker is started first, without the mark."""
    from multiprocessing import resource_tracker

    from agent_selfevolve.pool_guard import MARK_ENV

    if not sys.platform.startswith("linux"):  # the guard reads /proc
        yield
        return
    resource_tracker.ensure_running()
    mark = f"{os.getpid()}-{secrets.token_hex(6)}"
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    guard = subprocess.Popen([sys.executable, "-I", "-S", str(Path(__file__).with_name("pool_guard.py")),
                              str(os.getpid()), mark], stdin=subprocess.PIPE, env=env)
    previous = os.environ.get(MARK_ENV)
    os.environ[MARK_ENV] = mark
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(MARK_ENV, None)
        else:
            os.environ[MARK_ENV] = previous
        assert guard.stdin is not None
        guard.stdin.close()  # the guard sweeps what is left of the pool (normally nothing) and exits
        try:
            guard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()


def die_with_parent(parent: int) -> None:
    """Pool worker initializer, a second line behind `guarded_pool`: the kernel kills this worker when the batch
    process dies, even by kill -9 (else the workers live on, still solving tasks nobody will record, and their
    sandboxes with them)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def write_preds(out: Path, results: dict[str, dict[str, Any]], model: str) -> None:
    """preds.jsonl derived from results.jsonl and replaced atomically, so a crash can never split the two."""
    lines = [json.dumps({"instance_id": iid, "model_name_or_path": model, "model_patch": r.get("patch", "")})
             for iid, r in results.items() if r.get("ok")]
    write_text_atomic(out / "preds.jsonl", "".join(line + "\n" for line in lines))
