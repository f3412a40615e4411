"""Run one attempt end to end: sandbox, agent graph (checkpointed), evaluation, store.

This is the unit every search strategy fans out. It never raises for a failed attempt: crashes become a
Trajectory with status 'error' holding whatever was checkpointed, so a search goes on.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from agent_selfevolve.agent import AgentContext, Limits, build_agent_graph
from agent_selfevolve.envs import Environment, make_environment
from agent_selfevolve.models.base import Model
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

EvalMode = Literal["tests", "proxy", "none"]
Judge = Callable[[Task, "Trajectory"], dict[str, Any]]
"""An LLM judge: (task, trajectory) -> {"reward": 0..1, "source": "judge", ...}."""


def sqlite_checkpointer(path: str | Path) -> SqliteSaver:
    """A SqliteSaver usable from several threads (LangGraph fan-out runs sync nodes in a pool)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return SqliteSaver(conn)


def compiled_agent(checkpointer: BaseCheckpointSaver | None) -> Any:
    """Compiled per attempt (~5 ms): a cache keyed by checkpointer kept every saver and its connection alive."""
    return build_agent_graph().compile(checkpointer=checkpointer)


@dataclass
class AttemptSpec:
    """Everything that defines one attempt, as plain data (search graphs put these in their state)."""

    task_id: str
    attempt_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    run_id: str = ""
    guidance: str = ""
    strategy: str = ""
    operator: str = "sample"
    parent_ids: list[str] = field(default_factory=list)
    node_id: str = ""
    model_params: dict[str, Any] = field(default_factory=dict)
    replay: list[dict[str, Any]] = field(default_factory=list)
    """Assistant turns of an earlier attempt to re-execute first (the attempt branches from that state)."""
    max_steps: int | None = None
    """A cap on this attempt's steps below the limits' (a tree search grows attempts a few steps at a time)."""


def run_attempt(task: Task, model: Model, spec: AttemptSpec | None = None, *, limits: Limits | None = None,
                store: TrajectoryStore | None = None, checkpointer: BaseCheckpointSaver | None = None,
                evaluate: EvalMode = "tests", env_factory: Callable[[Task, str], Environment] | None = None,
                on_event: Callable[[dict[str, Any]], None] | None = None, system_prompt: str | None = None,
                env_options: dict[str, Any] | None = None, select_with: str = "tests",
                judge: Judge | None = None) -> Trajectory:
    """Run (or resume, or reuse) the attempt `spec.attempt_id` on `task` and return its trajectory.

    `evaluate` grades with the task's own check (ground truth, stored for reports and training);
    `select_with` ('tests', 'proxy' or 'judge') is the reward a search may use to choose between attempts.
    """
    spec = spec or AttemptSpec(task.instance_id)
    if store is not None and store.has(spec.attempt_id):
        done = store.get(spec.attempt_id)
        assert done is not None
        return done  # finished before a crash: never re-run, never duplicate
    limits = limits or Limits()
    if spec.max_steps is not None and spec.max_steps < limits.max_steps:
        limits = replace(limits, max_steps=spec.max_steps)
    env = (env_factory or (lambda t, n: make_environment(t, n, **(env_options or {}))))(task, spec.attempt_id)
    ctx = AgentContext(model=model, env=env, limits=limits, model_params=spec.model_params)
    if task.kind == "web":
        from agent_selfevolve.agent import WEB_TASK_TEMPLATE
        from agent_selfevolve.envs.web import WEB_SYSTEM_PROMPT

        ctx.system_prompt, ctx.task_template = WEB_SYSTEM_PROMPT, WEB_TASK_TEMPLATE
    if system_prompt:
        ctx.system_prompt = system_prompt
    graph = compiled_agent(checkpointer)
    config: dict[str, Any] = {"configurable": {"thread_id": spec.attempt_id},
                              "recursion_limit": 4 * limits.max_steps + 4 * limits.max_format_errors + 20}
    inputs: dict[str, Any] | None = {"task_id": task.instance_id, "problem": task.problem_statement,
                                     "guidance": spec.guidance, "strategy": spec.strategy, "replay": spec.replay}
    if checkpointer is not None and graph.get_state(config).values:
        inputs = None  # resume from the last checkpoint of this thread
    traj = Trajectory(attempt_id=spec.attempt_id, task_id=task.instance_id, model=model.name, run_id=spec.run_id,
                      parent_ids=list(spec.parent_ids), operator=spec.operator, node_id=spec.node_id,
                      guidance=spec.guidance, strategy=spec.strategy, tools=env.tool_specs())
    start = time.monotonic()
    values: dict[str, Any] = {}
    try:
        if on_event is None:
            values = graph.invoke(inputs, config, context=ctx)
        else:
            for mode, chunk in graph.stream(inputs, config, context=ctx, stream_mode=["custom", "values"]):
                if mode == "custom":
                    on_event(chunk)
                else:
                    values = chunk
        _fill(traj, values)
        if evaluate != "none" and traj.status not in ("env_error", "error"):
            ev = env.evaluate(traj.outcome) if evaluate == "tests" else env.proxy_evaluate(traj.outcome)
            traj.evaluation = ev.to_dict()
        if select_with == "tests" and traj.evaluation is not None:
            traj.selection = {"reward": traj.reward, "source": traj.evaluation.get("source", "tests")}
        elif select_with == "proxy" and traj.status not in ("env_error", "error"):
            ev = env.proxy_evaluate(traj.outcome)
            traj.selection = {"reward": ev.reward, "source": "proxy", "details": ev.details}
        elif select_with == "judge" and judge is not None:
            traj.selection = judge(task, traj)
    except Exception as exc:  # record the crash with what was checkpointed; the caller's search goes on
        if checkpointer is not None and not values:
            values = graph.get_state(config).values
        _fill(traj, values)
        traj.status = "error"
        traj.exit_message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    finally:
        traj.elapsed_s = max(traj.elapsed_s, time.monotonic() - start)
        with contextlib.suppress(Exception):
            env.close()
    if store is not None:
        store.record(traj)
    return traj


def _fill(traj: Trajectory, values: dict[str, Any]) -> None:
    if not values:
        return
    traj.messages = list(values.get("messages", []))
    traj.steps = list(values.get("steps", []))
    traj.usage = dict(values.get("usage", {}))
    traj.status = values.get("status", traj.status)
    traj.exit_message = values.get("exit_message", "")
    traj.outcome = dict(values.get("outcome", {}))
    traj.patch = traj.outcome.get("patch", "")
    traj.elapsed_s = float(values.get("elapsed_s", 0.0))
