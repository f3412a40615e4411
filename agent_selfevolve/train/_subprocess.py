"""Run a heavy function in a spawned process: its GPU/CPU memory is returned to the OS when it exits.

`spawn`, not `fork`: a forked child inherits the parent's threads and torch state (and deadlocks on them); a
spawned one starts clean. The child writes {"ok": result} or {"error", "type", "traceback"} atomically to a
result file, so a child killed mid-way leaves no result rather than half of one.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_json_atomic


class SubprocessError(RuntimeError):
    """The child failed (an exception it reported, or it died, e.g. killed or out of memory)."""

    def __init__(self, message: str, kind: str = "", child_traceback: str = ""):
        super().__init__(message)
        self.kind = kind
        self.child_traceback = child_traceback


def _child(target: str, kwargs: dict[str, Any], result_path: str) -> None:
    module, _, name = target.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(**kwargs)
        write_json_atomic(result_path, {"ok": result})
    except BaseException as exc:  # report everything, then exit non-zero
        write_json_atomic(result_path, {"error": str(exc), "type": type(exc).__name__,
                                        "traceback": traceback.format_exc()})
        raise SystemExit(1) from None


@dataclass
class SpawnedJob:
    process: Any
    result_path: Path

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()

    def wait(self, timeout: float | None = None) -> Any:
        """The child's return value; raises SubprocessError if it failed or died."""
        self.process.join(timeout)
        if self.process.is_alive():
            raise TimeoutError(f"child {self.pid} still running after {timeout}s")
        if not self.result_path.exists():
            raise SubprocessError(f"child process {self.pid} died with exit code {self.process.exitcode} "
                                  "before reporting a result (killed, or out of memory?)", "Died")
        data = json.loads(self.result_path.read_text())
        if "error" in data:
            raise SubprocessError(data["error"], data.get("type", ""), data.get("traceback", ""))
        return data["ok"]


def spawn(target: str, kwargs: dict[str, Any], result_path: Path) -> SpawnedJob:
    """Start `module:function(**kwargs)` in a fresh interpreter; kwargs and the result must be JSON-able."""
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_child, args=(target, kwargs, str(result_path)), daemon=False)
    proc.start()
    return SpawnedJob(proc, result_path)
    return True
