"""Run batch jobs as Ray tasks: the same worker function as the process pool, spread over a cluster.

Only the driver writes the output folder (it consumes the results this module yields), so resuming works the
same as with processes. A bounded number of tasks is in flight so a 2,000-task batch does not queue 2,000 task
specs (each holding its patches) in the cluster at once, and a result is written as soon as its task is done.
A task that raises, or whose worker dies (OOM kill, segfault, lost node), becomes an error result for that job.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

FORWARDED_ENV = ("AGENT_SELFEVOLVE_CACHE",)
"""Driver variables a local Ray instance we start passes to its workers (the worktree/model cache)."""


def _job_id(job: tuple[Any, ...]) -> str:
    first = job[0] if job else None
    if isinstance(first, dict) and "instance_id" in first:
        return str(first["instance_id"])
    return repr(first)[:80]


def error_result(job: tuple[Any, ...], exc: BaseException) -> dict[str, Any]:
    """The result recorded for a job whose task raised or whose worker died: the batch goes on."""
    kind = type(exc).__name__
    crashed = "WorkerCrashed" in kind or "NodeDied" in kind or "OutOfMemory" in kind or "ActorDied" in kind
    message = str(exc).strip().splitlines()
    return {"instance_id": _job_id(job), "ok": False,
            "error": f"{'worker crashed: ' if crashed else ''}{kind}: {(message or [''])[-1][:400]}",
            "traceback": "".join(traceback.format_exception_only(type(exc), exc))[-2000:]}


def _local_runtime_env() -> dict[str, Any]:
    """Workers of an instance we start import this package from where the driver found it, with its cache."""
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path}
    env.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    return {"env_vars": env}


def run_on_ray(fn: Callable[..., dict[str, Any]], jobs: Iterable[tuple[Any, ...]], address: str | None = None,
               max_in_flight: int = 4, num_cpus: float = 1.0, max_retries: int = 0,
               init_kwargs: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Yield `fn(*job)` for every job as each finishes, at most `max_in_flight` running at once.

    `address`: a Ray cluster ("auto", "ray://host:10001", "host:6379"); None starts a local instance unless
    Ray is already initialised in this process (then that one is used and left running). An instance started
    here is shut down when the iterator is exhausted or closed. `max_retries` defaults to 0: a task that
    killed its worker is reported, not silently re-run (it may kill the next one too).
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("executor 'ray' needs Ray: pip install 'agent-selfevolve[ray]'") from exc

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["runtime_env"] = _local_runtime_env()
        kwargs.update(init_kwargs or {})
        ray.init(**kwargs)
        started = True
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(fn)
    pending: dict[Any, tuple[Any, ...]] = {}
    queue = iter(jobs)
    limit = max(1, int(max_in_flight))
    try:
        while True:
            while len(pending) < limit:
                job = next(queue, None)
                if job is None:
                    break
                pending[remote.remote(*job)] = job
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
                    result = error_result(job, exc)
                yield result
    finally:
        for ref in pending:  # the driver stopped early (Ctrl-C, an exception): leave nothing running
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
