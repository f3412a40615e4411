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
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from agent_selfevolve.agent import AgentContext, Limits, build_agent_graph
from agent_selfevolve.ast_guard import compile_graph
from agent_selfevolve.envs import Environment, make_environment
from agent_selfevolve.envs.base import EnvironmentFailure
from agent_selfevolve.models.base import Model
from agent_selfevolve.setups import AgentSetup, resolve_setup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

EvalMode = Literal["tests", "proxy", "none"]
SELECTIONS = ("proxy", "judge", "tests")
"""Selection rewards: 'proxy' and 'judge' use nothing hidden; 'tests' (hidden tests) makes a run an oracle."""
UNFINISHED = "unfinished"
"""Status of an attempt stopped at its `AttemptSpec.max_steps` chunk cap, to be continued by descendants."""
Judge = Callable[[Task, "Trajectory"], dict[str, Any]]
"""An LLM judge: (task, trajectory) -> {"reward": 0..1, "source": "judge", ...}."""


def resolve_selection(select_with: str, judge: Judge | None) -> str:
    """'auto' -> 'judge' with a judge, else 'proxy'; 'judge' without a judge is a configuration error."""
    if select_with == "auto":
        return "judge" if judge is not None else "proxy"
    if select_with not in SELECTIONS:
        raise ValueError(f"select_with must be one of {', '.join(SELECTIONS)} or 'auto', got {select_with!r}")
    if select_with == "judge" and judge is None:
        raise ValueError("select_with='judge' needs a judge (e.g. search.rewards.llm_judge(model)); without one "
                         "every attempt would score 0")
    return select_with


def grade_attempt(task: Task, traj: Trajectory, store: TrajectoryStore | None = None,
                  env_options: dict[str, Any] | None = None) -> Trajectory:
    """Grade a stored coding attempt by the hidden tests after the fact (an unfinished attempt a search chose).

    Reports only: a search calls this once its choice is made, so the verdict cannot steer it."""
    if traj.evaluation is not None or task.kind != "swe":
        return traj
    env = make_environment(task, f"{traj.attempt_id}-grade", **(env_options or {}))
    try:
        traj.evaluation = env.evaluate(traj.outcome).to_dict()
    finally:
        with contextlib.suppress(Exception):
            env.close()
    if store is not None:
        store.record(traj)
    return traj


def sqlite_checkpointer(path: str | Path) -> SqliteSaver:
    """A SqliteSaver usable from several threads (LangGraph fan-out runs sync nodes in a pool)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return SqliteSaver(conn)


def compiled_agent(checkpointer: BaseCheckpointSaver | None) -> Any:
    """Compiled per attempt (~5 ms): a cache keyed by checkpointer kept every saver and its connection alive."""
    return compile_graph(build_agent_graph, checkpointer)


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


def run_attempt(task: Task, model: Model, spec: AttemptSpec | None = None, *, agent: AgentSetup | str | None = None,
                limits: Limits | None = None, store: TrajectoryStore | None = None,
                checkpointer: BaseCheckpointSaver | None = None, evaluate: EvalMode = "tests",
                env_factory: Callable[[Task, str], Environment] | None = None,
                on_event: Callable[[dict[str, Any]], None] | None = None, env_options: dict[str, Any] | None = None,
                select_with: str = "auto", judge: Judge | None = None) -> Trajectory:
    """Run (or resume, or reuse) the attempt `spec.attempt_id` on `task` and return its trajectory.

    `select_with` ('proxy', 'judge', 'tests'; 'auto': judge when a judge is given, else proxy) is the reward a
    search may use to choose between attempts; it is computed before the hidden tests run. 'tests' selects by
    the hidden tests themselves: an oracle, never a held-out number. `evaluate` then grades with the task's own
    check (ground truth, stored for reports and training). An attempt stopped by its `spec.max_steps` chunk cap
    is 'unfinished' (a tree search continues it in its children) and is not graded by the hidden tests.
    `agent` is the set-up (`setups`; a name or an AgentSetup, changed with `setup.with_overrides(...)`; None: the
    shipped one for the task's kind; one not for the task's kind gives way to the shipped one for it).
    `env_options` add run-time environment options (a worktree pool, `isolate`) to the set-up's.
    """
    select_with = resolve_selection(select_with, judge)
    spec = spec or AttemptSpec(task.instance_id)
    if store is not None and store.has(spec.attempt_id):
        done = store.get(spec.attempt_id)
        assert done is not None
        return done  # finished before a crash: never re-run, never duplicate
    setup = resolve_setup(agent, task.kind)
    limits, capped = _chunk_limits(limits or setup.limits.apply(Limits()), spec.max_steps)
    options = {**setup.env_options(), **(env_options or {})}
    env = (env_factory or (lambda t, n: make_environment(t, n, **options)))(task, spec.attempt_id)
    ctx = AgentContext(model=model, env=env, limits=limits, setup=setup,
                       model_params=sampling_seeded(spec.model_params, spec.attempt_id))
    graph = compiled_agent(checkpointer)
    config: dict[str, Any] = {"configurable": {"thread_id": spec.attempt_id},
                              "recursion_limit": 4 * limits.max_steps + 4 * limits.max_format_errors + 20}
    resuming = checkpointer is not None and bool(graph.get_state(config).values)
    traj = Trajectory(attempt_id=spec.attempt_id, task_id=task.instance_id, model=model.name, run_id=spec.run_id,
                      parent_ids=list(spec.parent_ids), operator=spec.operator, node_id=spec.node_id,
                      guidance=spec.guidance, strategy=spec.strategy, tools=env.tool_specs())
    start = time.monotonic()
    values: dict[str, Any] = {}
    try:
        _run_agent(graph, None if resuming else _inputs(task, spec), config, ctx, on_event, values)
        _fill(traj, values)
        if capped and traj.status == "step_limit":
            traj.status = UNFINISHED
            traj.exit_message = f"stopped at its chunk cap of {limits.max_steps} steps; continued by descendants"
        _select_and_grade(task, traj, env, select_with, judge, evaluate)
    except Exception as exc:  # record the crash with what was checkpointed; the caller's search goes on
        if checkpointer is not None and not values:
            values = graph.get_state(config).values
        _fill(traj, values)
        traj.status = "env_error" if isinstance(exc, EnvironmentFailure) else "error"  # e.g. no sandbox at reset
        traj.exit_message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    finally:
        traj.elapsed_s = max(traj.elapsed_s, time.monotonic() - start)
        with contextlib.suppress(Exception):
            env.close()
    if store is not None:
        store.record(traj)
    return traj


def sampling_seeded(params: dict[str, Any], attempt_id: str) -> dict[str, Any]:
    """`params` with a seed of the attempt's own when it samples (temperature > 0) and names none.

    Backends seed every call (llama.cpp with 0 by default), so without this, siblings sampled at T=0.8 from the
    same prompt were the same attempt token for token. The seed comes from the attempt id, so a resumed or rerun
    attempt draws with the same seed. Greedy attempts keep their params: their few sampled turns (revision, repeat
    retries) stay as they were."""
    temperature = params.get("temperature")
    if params.get("seed") is not None or not isinstance(temperature, int | float) or temperature <= 0:
        return params
    return {**params, "seed": zlib.crc32(attempt_id.encode()) & 0x7FFFFFFF}


def _chunk_limits(limits: Limits, max_steps: int | None) -> tuple[Limits, bool]:
    """The limits under an attempt's chunk cap of `max_steps`, and whether the cap is what binds."""
    if max_steps is not None and max_steps < limits.max_steps:
        return replace(limits, max_steps=max_steps), True
    return limits, False


def _inputs(task: Task, spec: AttemptSpec) -> dict[str, Any]:
    """The agent graph's input state for a fresh attempt."""
    return {"task_id": task.instance_id, "problem": task.problem_statement, "guidance": spec.guidance,
            "strategy": spec.strategy, "replay": spec.replay}


def _run_agent(graph: Any, inputs: dict[str, Any] | None, config: dict[str, Any], ctx: AgentContext,
               on_event: Callable[[dict[str, Any]], None] | None, values: dict[str, Any]) -> None:
    """Run the agent graph to its end (`inputs` None: resume its thread), keeping its latest state in `values`,
    so a crash midway still records how far it got; custom events go to `on_event`."""
    if on_event is None:
        values.update(graph.invoke(inputs, config, context=ctx))
        return
    for mode, chunk in graph.stream(inputs, config, context=ctx, stream_mode=["custom", "values"]):
        if mode == "custom":
            on_event(chunk)
        else:
            values.clear()
            values.update(chunk)


def _select_and_grade(task: Task, traj: Trajectory, env: Environment, select_with: str, judge: Judge | None,
                      evaluate: EvalMode) -> None:
    """The selection reward a search may see (computed first), then the ground-truth evaluation it may not."""
    gradable = traj.status not in ("env_error", "error")
    proxy = env.proxy_evaluate(traj.outcome) if gradable and "proxy" in (select_with, evaluate) else None
    if select_with == "proxy" and proxy is not None:
        traj.selection = {"reward": proxy.reward, "source": "proxy", "ceiling": proxy.details.get("ceiling"),
                          "details": proxy.details}
    elif select_with == "judge" and judge is not None and gradable:
        traj.selection = judge(task, traj)
    if evaluate != "none" and gradable and traj.status != UNFINISHED:
        traj.evaluation = _ground_truth(env, traj.outcome) if evaluate == "tests" else \
            proxy.to_dict() if proxy is not None else None
    if select_with == "tests" and traj.evaluation is not None:  # the oracle: selection by hidden tests
        traj.selection = {"reward": traj.reward, "source": traj.evaluation.get("source", "tests")}


def _ground_truth(env: Environment, outcome: dict[str, Any]) -> dict[str, Any]:
    """The hidden verdict; a grader failure is recorded in the evaluation, never in the attempt's status or exit
    message (which operator prompts read)."""
    try:
        return env.evaluate(outcome).to_dict()
    except Exception as exc:  # the attempt itself is fine: only its grading failed
        return {"resolved": False, "reward": 0.0, "source": "tests",
                "details": {"grading_error": f"{type(exc).__name__}: {exc}"[:2000]}}


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
