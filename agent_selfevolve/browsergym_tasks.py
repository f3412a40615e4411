"""BrowserGym tasks as our web tasks: the task record, its load-time checks and the MiniWoB suite's task list.

A task runs one registered BrowserGym environment (`browsergym/<benchmark>.<name>`) with a seed, behind our
Environment protocol (`envs/browsergym_env.py`); its reward is BrowserGym's own task validation. In a task file:

    {"instance_id": "bg.click-test.0", "kind": "web", "browsergym": {"task": "miniwob.click-test", "seed": 0}}

`start_url` (`browsergym://miniwob.click-test`) and `problem_statement` are filled in when missing. This module
imports neither BrowserGym nor Playwright: loading a task file stays cheap; only listing the suite imports them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.envs.web_rewards import SpecError
from agent_selfevolve.tasks import Task

BROWSERGYM = "browsergym://"
PINNED = "browsergym-core==0.14.3 browsergym-miniwob==0.14.3"
INSTALL_HINT = (f"BrowserGym tasks need `pip install beautifulsoup4 'lxml<6' && pip install --no-deps {PINNED}` "
                "(--no-deps: browsergym-core pins playwright==1.44, this project runs Playwright>=1.65, which "
                "BrowserGym 0.14.3 works with)")
_TASK_ID = re.compile(r"^([a-z][a-z0-9_]*)\.([A-Za-z0-9_.\-]+)$")
# MiniWoB's pages ship in a wheel and run here; these need servers of their own (README, "BrowserGym").
SERVER_BENCHMARKS = {"webarena": "WA_* URLs of a WebArena deployment",
                     "visualwebarena": "VWA_* URLs of a VisualWebArena deployment",
                     "workarena": "a ServiceNow instance (SNOW_INSTANCE_*)",
                     "assistantbench": "the open web"}


@dataclass(frozen=True)
class BrowserGymSpec:
    """What a task's `browsergym` field says: the registered task id, the seed, extra task kwargs."""

    task: str
    seed: int = 0
    task_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return self.task.split(".", 1)[0]

    @property
    def gym_id(self) -> str:
        return f"browsergym/{self.task}"


def is_browsergym_task(task: Task) -> bool:
    return (task.model_extra or {}).get("browsergym") is not None or (task.start_url or "").startswith(BROWSERGYM)


def task_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A task record with a `browsergym` field gets kind, start_url and problem_statement when it has none
    (BrowserGym shows the real instruction in the first observation, as 'Goal:')."""
    spec = data.get("browsergym")
    name = str(spec.get("task", "")) if isinstance(spec, dict) else ""
    out = {"kind": "web", "start_url": f"{BROWSERGYM}{name}", **data}
    if not out.get("problem_statement") and not out.get("goal"):
        out["problem_statement"] = (f"Complete the BrowserGym task '{name}' in the browser. Its exact instruction "
                                    "is repeated as 'Goal:' in the first observation.")
    return out


def parse_browsergym(task: Task) -> BrowserGymSpec:
    """The task's BrowserGym spec, or SpecError naming the field: run at load time, so a typo fails before any
    attempt starts."""
    raw = (task.model_extra or {}).get("browsergym")
    if raw is None:
        raw = {"task": (task.start_url or "")[len(BROWSERGYM):]}
    if not isinstance(raw, dict):
        raise SpecError("browsergym", "expected an object like {\"task\": \"miniwob.click-test\", \"seed\": 0}")
    unknown = set(raw) - {"task", "seed", "task_kwargs"}
    if unknown:
        raise SpecError(f"browsergym.{sorted(unknown)[0]}", "unknown key (expected task, seed, task_kwargs)")
    name = raw.get("task")
    if not isinstance(name, str) or not _TASK_ID.match(name):
        raise SpecError("browsergym.task", f"expected '<benchmark>.<task>', e.g. miniwob.click-test; got {name!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError("browsergym.seed", f"expected a non-negative integer, got {seed!r}")
    kwargs = raw.get("task_kwargs", {})
    if not isinstance(kwargs, dict):
        raise SpecError("browsergym.task_kwargs", "expected an object of keyword arguments for the task")
    if task.reward:
        raise SpecError("reward", "a BrowserGym task is graded by BrowserGym's own validation; leave 'reward' out")
    if task.start_url and task.start_url != f"{BROWSERGYM}{name}":
        raise SpecError("start_url", f"a BrowserGym task starts where its task puts it; omit it or give "
                                     f"{BROWSERGYM}{name}")
    return BrowserGymSpec(name, seed, dict(kwargs))


def import_benchmark(benchmark: str) -> Any:
    """Import `browsergym.<benchmark>`, which registers its tasks with gymnasium."""
    try:
        return importlib.import_module(f"browsergym.{benchmark}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("browsergym"):
            needs = f" It also needs {SERVER_BENCHMARKS[benchmark]}." if benchmark in SERVER_BENCHMARKS else ""
            raise ModuleNotFoundError(f"BrowserGym benchmark '{benchmark}' is not installed "
                                      f"(browsergym-{benchmark}).{needs} {INSTALL_HINT}") from None
        raise


def miniwob_base_url() -> str:
    """Where BrowserGym's MiniWoB tasks find their HTML: `$MINIWOB_URL` when set, else file:// of the `html/miniwob/`
    folder of the installed `miniwob` wheel (no server needed)."""
    if os.environ.get("MINIWOB_URL"):
        return os.environ["MINIWOB_URL"]
    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("BrowserGym's MiniWoB tasks load their pages from the `miniwob` wheel: "
                                  "`pip install miniwob==1.1.0`")
    from pathlib import Path

    return (Path(next(iter(spec.submodule_search_locations))) / "html" / "miniwob").as_uri() + "/"


def default_task_kwargs(spec: BrowserGymSpec) -> dict[str, Any]:
    """Task kwargs we add: MiniWoB's page location. The task file's own `task_kwargs` win."""
    extra = {"base_url": miniwob_base_url()} if spec.benchmark == "miniwob" else {}
    return {**extra, **spec.task_kwargs}


def miniwob_task_names() -> list[str]:
    """BrowserGym's MiniWoB suite (125 tasks in 0.14.3), e.g. 'click-test'."""
    module = import_benchmark("miniwob")
    return sorted(t.get_task_id().split(".", 1)[1] for t in module.ALL_MINIWOB_TASKS)


def browsergym_miniwob_tasks(names: Iterable[str] | None = None, seeds: Iterable[int] = (0,)) -> list[Task]:
    """One Task per (BrowserGym MiniWoB task, seed), ids `browsergym.miniwob.<name>.<seed>`."""
    available = miniwob_task_names()
    chosen = list(names) if names is not None else available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise KeyError(f"unknown BrowserGym MiniWoB tasks: {', '.join(unknown)}")
    return [Task.model_validate({"instance_id": f"browsergym.miniwob.{name}.{seed}",
                                 "browsergym": {"task": f"miniwob.{name}", "seed": seed}})
            for name in chosen for seed in seeds]
