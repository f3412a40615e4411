"""The episode loop: search on training tasks -> build data -> LoRA -> evaluate on held-out -> promotion gate.

A LangGraph graph checkpointed in SQLite, so `selfevolve evolve` resumes after a crash: attempts are never re-run
(fixed ids, looked up in the store), a registered adapter is never trained twice, and each episode's report is
written atomically. Held-out tasks never reach search or training data; their results are paired per task so
the gain can be tested (McNemar) rather than eyeballed.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent_selfevolve.agent import Limits
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer
from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.models.base import Model, Usage
from agent_selfevolve.profiles import get_profile
from agent_selfevolve.search import strategies
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

PolicyFactory = Callable[[Any], Model]
"""AdapterVersion (or None for the base model) -> a Model that acts with that adapter."""


@dataclass
class EvolveConfig:
    episodes: int = 2
    strategy: str = "best_of_n"
    strategy_options: dict[str, Any] = field(default_factory=lambda: {"n": 4})
    budget: dict[str, Any] = field(default_factory=dict)
    """Per training task search budget (Budget fields)."""
    limits: dict[str, Any] = field(default_factory=lambda: {"max_steps": 15})
    eval_params: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    kinds: list[str] = field(default_factory=lambda: ["sft"])
    """Row kinds to train on: 'sft', plus 'dpo' / 'recovery' as ablations."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields."""
    replay: bool = True
    """Train on every success so far (a replay buffer), not only this episode's."""
    min_gain: int = 1
    """Promote when the new adapter solves at least this many more held-out tasks than the current one."""
    adapter_name: str = "policy"
    profile: str = "default"
    """Agent set-up (`profiles`), applied per task: web tasks keep the browser's own prompt and tools."""


@dataclass
class EvolveContext:
    train_tasks: list[Task]
    held_out: list[Task]
    store: TrajectoryStore
    registry: Any
    """train.AdapterRegistry."""
    base_hf_dir: Path
    policy: PolicyFactory
    out_dir: Path
    config: EvolveConfig = field(default_factory=EvolveConfig)
    on_event: Callable[[dict[str, Any]], None] | None = None


class EvolveState(TypedDict, total=False):
    run_id: str
    episode: int
    current: str | None
    """Registry ref of the promoted adapter (None: the base model)."""
    current_eval: dict[str, bool]
    candidate: str | None
    candidate_eval: dict[str, bool]
    search_usage: dict[str, Any]
    data: dict[str, Any]
    train_metrics: dict[str, Any]
    started_at: float
    episodes: Annotated[list[dict[str, Any]], operator.add]


def _emit(ctx: EvolveContext, event: dict[str, Any]) -> None:
    if ctx.on_event:
        ctx.on_event(event)


def evaluate_policy(ctx: EvolveContext, adapter_ref: str | None, label: str, run_id: str) -> dict[str, bool]:
    """One greedy attempt per held-out task, graded by its hidden tests; {task_id: resolved}."""
    version = ctx.registry.get(adapter_ref) if adapter_ref else None
    model = ctx.policy(version)
    results: dict[str, bool] = {}
    for task in ctx.held_out:
        spec = AttemptSpec(task.instance_id, attempt_id=f"{run_id}:eval:{label}:{task.instance_id}",
                           run_id=f"{run_id}:eval:{label}", operator="eval", model_params=ctx.config.eval_params)
        traj = run_attempt(task, model, spec, limits=Limits(**ctx.config.limits), store=ctx.store,
                           **get_profile(ctx.config.profile).attempt_options(task.kind))
        results[task.instance_id] = traj.resolved
        _emit(ctx, {"event": "eval", "policy": label, "task_id": task.instance_id, "resolved": traj.resolved})
    return results


def evaluate_current(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    if state.get("current_eval"):
        return {}
    label = state.get("current") or "base"
    return {"current_eval": evaluate_policy(runtime.context, state.get("current"), label, state["run_id"])}


def search_train(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx = runtime.context
    version = ctx.registry.get(state["current"]) if state.get("current") else None
    model = ctx.policy(version)
    search = strategies()[ctx.config.strategy]
    used = Usage()
    for task in ctx.train_tasks:
        sctx = SearchContext(task=task, model=model, store=ctx.store, limits=Limits(**ctx.config.limits),
                             budget=Budget(**ctx.config.budget), select_with="tests",
                             **get_profile(ctx.config.profile).attempt_options(task.kind))
        result = search(sctx, run_id=f"{state['run_id']}:ep{state['episode']}:{task.instance_id}",
                        **ctx.config.strategy_options)
        used = used + Usage.from_dict(result.usage)
        _emit(ctx, {"event": "search", "episode": state["episode"], "task_id": task.instance_id,
                    "resolved": result.resolved, "attempts": result.attempts})
    return {"search_usage": used.to_dict()}


def build_data(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    from agent_selfevolve.train import build_dataset, write_jsonl

    ctx = runtime.context
    prefix = f"{state['run_id']}:ep"
    episodes = range(state["episode"] + 1) if ctx.config.replay else [state["episode"]]
    wanted = tuple(f"{prefix}{k}:" for k in episodes)
    trajs = [t for t in ctx.store.attempts() if t.run_id.startswith(wanted)]
    rows, report = build_dataset(trajs, held_out=[t.instance_id for t in ctx.held_out], kinds=ctx.config.kinds)
    folder = ctx.out_dir / f"episode-{state['episode']}"
    files = {kind: str(folder / f"{kind}.jsonl") for kind in rows}
    hashes = {kind: write_jsonl(files[kind], kind_rows) for kind, kind_rows in rows.items()}
    sizes = {kind: len(kind_rows) for kind, kind_rows in rows.items()}
    return {"data": {"files": files, "hashes": hashes, "sizes": sizes, "trajectories": len(trajs),
                     "successes": sum(t.resolved for t in trajs), "report": asdict(report)}}


def train(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    from agent_selfevolve.train import read_jsonl, train_sft_then_dpo

    ctx = runtime.context
    data = state["data"]
    if not data["sizes"].get("sft"):
        return {"candidate": None, "train_metrics": {"skipped": "no successful training trajectories"}}
    rows = {kind: read_jsonl(path) for kind, path in data["files"].items()}
    out, metrics = train_sft_then_dpo(ctx.base_hf_dir, rows,
                                      lambda stage: ctx.registry.staging_path(f"ep{state['episode']}-{stage}"),
                                      ctx.config.train)
    version = ctx.registry.register(ctx.config.adapter_name, out, parent=state.get("current"),
                                    data_hashes=list(data["hashes"].values()),
                                    metrics={**metrics, "episode": state["episode"], "run_id": state["run_id"]})
    _emit(ctx, {"event": "trained", "episode": state["episode"], "adapter": version.ref, **metrics})
    return {"candidate": version.ref, "train_metrics": metrics}


def evaluate_candidate(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    if not state.get("candidate"):
        return {"candidate_eval": {}}
    return {"candidate_eval": evaluate_policy(runtime.context, state["candidate"], state["candidate"],
                                              state["run_id"])}


def mcnemar(before: dict[str, bool], after: dict[str, bool]) -> dict[str, Any]:
    """Exact two-sided McNemar test on paired outcomes (b: fixed by the new policy, c: broken by it)."""
    b = sum(1 for k in before if not before[k] and after.get(k))
    c = sum(1 for k in before if before[k] and not after.get(k, False))
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    return {"gained": b, "lost": c, "p_value": p}


def gate(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx = runtime.context
    before, after = state.get("current_eval", {}), state.get("candidate_eval", {})
    n = max(1, len(before))
    solved_before, solved_after = sum(before.values()), sum(after.values())
    promote = bool(state.get("candidate")) and solved_after - solved_before >= ctx.config.min_gain
    report = {"episode": state["episode"], "policy_before": state.get("current") or "base",
              "candidate": state.get("candidate"), "promoted": promote,
              "heldout_before": solved_before / n, "heldout_after": solved_after / n if after else None,
              "heldout_n": len(before), "paired": mcnemar(before, after) if after else None,
              "search_usage": state.get("search_usage", {}), "data": state.get("data", {}).get("sizes", {}),
              "train": state.get("train_metrics", {}), "wall_s": time.time() - state.get("started_at", time.time())}
    write_json_atomic(ctx.out_dir / f"episode-{state['episode']}" / "report.json", report)
    _emit(ctx, {"event": "episode_finished", **report})
    update: dict[str, Any] = {"episodes": [report], "episode": state["episode"] + 1, "candidate": None,
                              "candidate_eval": {}, "started_at": time.time()}
    if promote:
        update.update(current=state["candidate"], current_eval=after)
    return update


def summary_of(state: EvolveState | dict[str, Any]) -> dict[str, Any]:
    return {"run_id": state["run_id"], "final_policy": state.get("current") or "base",
            "episodes": state.get("episodes", [])}


def finish(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx = runtime.context
    write_json_atomic(ctx.out_dir / "evolve.json", summary_of(state))
    plot_episodes(state.get("episodes", []), ctx.out_dir / "evolve.png")
    return {}


def plot_episodes(episodes: list[dict[str, Any]], out: Path) -> Path | None:
    """Held-out pass rate by episode (before and after training) as a PNG; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [e["episode"] for e in episodes]
    ax.plot(xs, [e["heldout_before"] for e in episodes], "o-", label="current policy")
    ax.plot(xs, [e["heldout_after"] if e["heldout_after"] is not None else float("nan") for e in episodes], "s--",
            label="after training")
    for e in episodes:
        if e["promoted"]:
            ax.annotate("promoted", (e["episode"], e["heldout_after"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
    ax.set_xlabel("episode")
    ax.set_ylabel("held-out pass rate")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def _next(state: EvolveState, runtime: Runtime[EvolveContext]) -> Literal["search", "finish"]:
    return "search" if state.get("episode", 0) < runtime.context.config.episodes else "finish"


def build_evolve_graph() -> StateGraph:
    graph = StateGraph(EvolveState, context_schema=EvolveContext)
    for name, fn in (("eval_current", evaluate_current), ("search", search_train), ("data", build_data),
                     ("train", train), ("eval_candidate", evaluate_candidate), ("gate", gate), ("finish", finish)):
        graph.add_node(name, fn)
    graph.add_edge(START, "eval_current")
    graph.add_conditional_edges("eval_current", _next, ["search", "finish"])
    graph.add_edge("search", "data")
    graph.add_edge("data", "train")
    graph.add_edge("train", "eval_candidate")
    graph.add_edge("eval_candidate", "gate")
    graph.add_edge("gate", "eval_current")
    graph.add_edge("finish", END)
    return graph


def evolve(ctx: EvolveContext, run_id: str = "evolve") -> dict[str, Any]:
    """Run (or resume) the episode loop `run_id`; returns the summary written to `out_dir/evolve.json`."""
    overlap = {t.instance_id for t in ctx.train_tasks} & {t.instance_id for t in ctx.held_out}
    if overlap:
        raise ValueError(f"tasks both in training and held-out: {', '.join(sorted(overlap))}")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.store.create_run("evolve", {"config": asdict(ctx.config), "train": [t.instance_id for t in ctx.train_tasks],
                                    "held_out": [t.instance_id for t in ctx.held_out]}, run_id=run_id)
    graph = build_evolve_graph().compile(checkpointer=sqlite_checkpointer(ctx.out_dir / "checkpoints.sqlite"))
    config = {"configurable": {"thread_id": f"evolve:{run_id}"}, "recursion_limit": 1000}
    snapshot = graph.get_state(config)
    if snapshot.values and not snapshot.next:
        values = snapshot.values
    else:
        start = None if snapshot.values else {"run_id": run_id, "episode": 0, "current": None,
                                              "started_at": time.time()}
        values = graph.invoke(start, config, context=ctx)
    summary = summary_of(values)
    ctx.store.finish_run(run_id, summary)
    return summary
