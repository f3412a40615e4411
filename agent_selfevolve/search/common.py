"""What every search strategy shares: the budget, the attempt node that fans out, and the run/resume wrapper.

A search graph's state is plain JSON: attempt *records* (ids, rewards, usage, lineage), never live objects.
Full trajectories live in the store; an attempt id is fixed when it is planned (and checkpointed), so a
search resumed after `kill -9` re-runs only unfinished attempts and never records one twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.agent import Limits
from agent_selfevolve.ast_guard import compile_graph
from agent_selfevolve.attempt import (
    AttemptSpec,
    Judge,
    grade_attempt,
    resolve_selection,
    run_attempt,
    sqlite_checkpointer,
)
from agent_selfevolve.events import AttemptFinished, SearchFinished
from agent_selfevolve.infra import emit
from agent_selfevolve.models.base import Model, Usage
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.registry import CONFIG_KEY, StrategyConfig
from agent_selfevolve.setups import AgentSetup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Status, Trajectory


@dataclass
class Budget:
    """Limits for a whole search. None means unlimited; the search stops before exceeding any of them."""

    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_wall_s: float | None = None

    def exhausted(self, used: Usage, elapsed_s: float) -> str | None:
        if self.max_calls is not None and used.calls >= self.max_calls:
            return f"LLM calls {used.calls} >= {self.max_calls}"
        if self.max_tokens is not None and used.total_tokens >= self.max_tokens:
            return f"tokens {used.total_tokens} >= {self.max_tokens}"
        if self.max_cost is not None and used.cost >= self.max_cost:
            return f"cost ${used.cost:.4f} >= ${self.max_cost}"
        if self.max_wall_s is not None and elapsed_s >= self.max_wall_s:
            return f"wall time {elapsed_s:.0f} s >= {self.max_wall_s:.0f} s"
        return None

    def clip(self, limits: Limits, used: Usage, share: int = 1, elapsed_s: float = 0.0) -> Limits:
        """Per-attempt limits shrunk to an equal share of what the search has left among `share` concurrent
        attempts, so a wave of attempts cannot overrun the budget by much (an attempt stops at its limit). Wall
        time is not divided: concurrent attempts spend it together, so each may use all that is left."""
        clipped = Limits(**asdict(limits))
        share = max(1, share)
        if self.max_wall_s is not None:
            clipped.max_wall_s = max(1.0, min(limits.max_wall_s, self.max_wall_s - elapsed_s))
        if self.max_tokens is not None:
            clipped.max_tokens = max(1, min(limits.max_tokens, (self.max_tokens - used.total_tokens) // share))
        if self.max_calls is not None:
            clipped.max_steps = max(1, min(limits.max_steps, (self.max_calls - used.calls) // share))
        if self.max_cost is not None:
            clipped.max_cost = max(0.0, min(limits.max_cost, (self.max_cost - used.cost) / share))
        return clipped


@dataclass
class SearchContext:
    """Live dependencies of a search run; passed as `context=`."""

    task: Task
    model: Model
    store: TrajectoryStore
    limits: Limits = field(default_factory=Limits)
    budget: Budget = field(default_factory=Budget)
    select_with: str = "auto"
    """'proxy' (no hidden tests), 'judge' (an LLM judge; needs `judge`) or 'tests' (the task's hidden tests: an
    oracle run, labelled so). 'auto' becomes 'judge' when a judge is given, else 'proxy'."""
    judge: Judge | None = None
    attempt_checkpointer: BaseCheckpointSaver | None = None
    env_options: dict[str, Any] = field(default_factory=dict)
    agent: AgentSetup | str | None = None
    """The agent set-up (agent_selfevolve/setups; None: the shipped one for the task's kind); to change a field,
    pass `setup.with_overrides(...)`."""
    operator_model: Model | None = None
    """Model for search operators (reflection, diagnosis); defaults to `model`."""
    started_at: float = field(default_factory=time.time)
    on_event: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self.select_with = resolve_selection(self.select_with, self.judge)

    @property
    def op_model(self) -> Model:
        return self.operator_model or self.model

    @property
    def oracle(self) -> bool:
        """Selection by the hidden tests: the run's `resolved` is an oracle figure, not a held-out one."""
        return self.select_with == "tests"


def attempt_cost(traj: Trajectory) -> Usage:
    """The attempt's own calls plus the judge call that scored it: with judge selection every attempt costs one
    more call, and a budget that left it out would favour the judge over the proxy at 'equal' tokens."""
    return traj.total_usage + Usage.from_dict((traj.selection or {}).get("usage"))


def record_of(traj: Trajectory) -> AttemptRecord:
    """The slice of a trajectory a search decides on (see `AttemptRecord`)."""
    sel = traj.selection or {}
    return AttemptRecord(attempt_id=traj.attempt_id, task_id=traj.task_id, status=traj.status,
                         reward=float(sel.get("reward", 0.0)), reward_source=sel.get("source", ""),
                         reward_ceiling=sel.get("ceiling", 1.0), hidden_resolved=traj.resolved,
                         usage=attempt_cost(traj).to_dict(),
                         parent_ids=traj.parent_ids, operator=traj.operator, node_id=traj.node_id,
                         steps=len(traj.steps), patch_chars=len(traj.patch))


def used_usage(state: dict[str, Any]) -> Usage:
    total = Usage()
    for rec in state.get("attempts", []):
        total = total + Usage.from_dict(rec.get("usage"))
    for u in state.get("op_usage", []):
        total = total + Usage.from_dict(u)
    return total


def budget_reason(state: dict[str, Any], ctx: SearchContext) -> str | None:
    return ctx.budget.exhausted(used_usage(state), time.time() - ctx.started_at)


def new_attempt_id(run_id: str, label: str) -> str:
    return f"{run_id}:{label}:{uuid.uuid4().hex[:6]}"


def sends(specs: list[AttemptSpec], state: dict[str, Any]) -> list[Send]:
    """Fan out one wave of planned attempts to `attempt_node`, each with its share of the remaining budget."""
    used = used_usage(state).to_dict()
    return [Send("attempt", {"spec": asdict(s), "used": used, "share": len(specs)}) for s in specs]


def attempt_node(payload: dict[str, Any], runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Run one planned attempt (the target of every `Send`). Failures come back as failed records."""
    ctx = runtime.context
    spec = AttemptSpec(**payload["spec"])
    limits = ctx.budget.clip(ctx.limits, Usage.from_dict(payload.get("used")), payload.get("share", 1),
                             time.time() - ctx.started_at)
    if spec.replay:  # replayed turns cost no model call: the budget's share of steps comes on top of them
        limits = replace(limits, max_steps=min(ctx.limits.max_steps, limits.max_steps + len(spec.replay)))
    traj = run_attempt(ctx.task, ctx.model, spec, limits=limits, store=ctx.store,
                       checkpointer=ctx.attempt_checkpointer, select_with=ctx.select_with, judge=ctx.judge,
                       env_options=ctx.env_options, agent=ctx.agent)
    rec = record_of(traj)
    used = Usage.from_dict(payload.get("used")) + attempt_cost(traj)
    event = AttemptFinished(event="attempt_finished", task_id=traj.task_id, attempt_id=traj.attempt_id,
                            reward=rec["reward"], status=traj.status, tokens=attempt_cost(traj).total_tokens,
                            budget_used={"tokens": used.total_tokens, "calls": used.calls, "cost": used.cost,
                                         "wall_s": time.time() - ctx.started_at},
                            budget={k: v for k, v in asdict(ctx.budget).items() if v is not None})
    emit(dict(event), runtime.stream_writer, ctx.on_event)
    return {"attempts": [rec]}


GREEDY_OPERATOR = "greedy"
"""The operator of the attempt sampled at temperature 0 that `greedy_first` adds (best-of-N, SE-Agent, HGM):
selection ties go to it."""


def best_record(records: list[AttemptRecord]) -> AttemptRecord | None:
    """Highest selection reward; ties go to a submitted attempt, then to a greedy one (the model's most likely
    attempt, which `greedy_first` adds), then to the cheaper one."""
    if not records:
        return None
    return max(records, key=lambda r: (r["reward"], r["status"] == Status.SUBMITTED,
                                       r.get("operator") == GREEDY_OPERATOR, -Usage.from_dict(r["usage"]).total_tokens))


@dataclass
class SearchResult:
    run_id: str
    strategy: str
    task_id: str
    best_attempt_id: str | None
    best_reward: float
    selection_source: str
    resolved: bool
    """The chosen attempt passes the task's own check (hidden tests), graded after the choice. With
    `oracle` (selection by those same tests) it is an oracle figure, not a held-out one."""
    pass_at_n: bool
    """Any attempt of the run resolved: the oracle upper bound."""
    attempts: int
    usage: dict[str, Any]
    stop_reason: str
    extra: dict[str, Any] = field(default_factory=dict)
    oracle: bool = False
    """True when the hidden tests chose the attempt (`selection_source == 'tests'`)."""

    @property
    def label(self) -> str:
        """How to report `resolved`: 'oracle' when the hidden tests chose, else 'held-out'."""
        return "oracle" if self.oracle else "held-out"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_DEFAULT = object()


def finish_result(strategy: str, state: dict[str, Any], ctx: SearchContext, stop_reason: str,
                  extra: dict[str, Any] | None = None, best: Any = _DEFAULT,
                  writer: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Build the SearchResult (and emit `search_finished`). `best` overrides the default choice
    (highest selection reward) for strategies with their own final rule (HGM's variant, SE-Agent's score)."""
    records = state.get("attempts", [])
    if best is _DEFAULT:
        best = best_record(records)
    if best and best["status"] == Status.UNFINISHED and not best["hidden_resolved"]:
        best = {**best, "hidden_resolved": _grade_late(ctx, best["attempt_id"])}
    result = SearchResult(
        run_id=state.get("run_id", ""), strategy=strategy, task_id=ctx.task.instance_id,
        best_attempt_id=best["attempt_id"] if best else None, best_reward=best["reward"] if best else 0.0,
        selection_source=ctx.select_with, resolved=bool(best and best["hidden_resolved"]),
        pass_at_n=bool(best and best["hidden_resolved"]) or any(r["hidden_resolved"] for r in records),
        attempts=len(records),
        usage=used_usage(state).to_dict(), stop_reason=stop_reason, extra=extra or {}, oracle=ctx.oracle)
    event = SearchFinished(event="search_finished", **result.to_dict())
    emit(dict(event), writer, ctx.on_event)
    return {"result": result.to_dict()}


def _grade_late(ctx: SearchContext, attempt_id: str) -> bool:
    """Hidden-test verdict of a chosen unfinished attempt (never graded while the search ran), for the report."""
    traj = ctx.store.get(attempt_id)
    if traj is None:
        return False
    return grade_attempt(ctx.task, traj, ctx.store, ctx.env_options).resolved


def run_search(graph_builder: Callable[[], Any], strategy: str, config: StrategyConfig, ctx: SearchContext,
               run_id: str | None = None, checkpoint_path: str | Path | None = None,
               max_concurrency: int = 4) -> SearchResult:
    """Compile with a SQLite checkpointer and run; an existing unfinished run with `run_id` is resumed (with the
    config it was started with, kept in its checkpointed state under `CONFIG_KEY`)."""
    run_id = run_id or f"{strategy}-{ctx.task.instance_id}-{uuid.uuid4().hex[:6]}"
    options = config.to_state()
    ctx.store.create_run(strategy, {"task_id": ctx.task.instance_id, "model": ctx.model.name,
                                    "select_with": ctx.select_with, "oracle": ctx.oracle, "budget": asdict(ctx.budget),
                                    "limits": asdict(ctx.limits), **options}, run_id=run_id)
    saver = sqlite_checkpointer(checkpoint_path or ctx.store.path.with_name("checkpoints.sqlite"))
    if ctx.attempt_checkpointer is None:
        ctx.attempt_checkpointer = saver
    graph = compile_graph(graph_builder, saver)
    config = {"configurable": {"thread_id": f"search:{run_id}"}, "recursion_limit": 10_000,
              "max_concurrency": max_concurrency}
    snapshot = graph.get_state(config)
    if snapshot.values and not snapshot.next and snapshot.values.get("result"):
        values = snapshot.values  # already finished: nothing to run
    else:
        start = None if snapshot.values else {CONFIG_KEY: options, "run_id": run_id, "task_id": ctx.task.instance_id}
        values = graph.invoke(start, config, context=ctx)
    result = SearchResult(**values["result"])
    ctx.store.finish_run(run_id, result.to_dict())
    return result
