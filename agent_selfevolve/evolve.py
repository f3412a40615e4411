"""The episode loop: search on training tasks -> data -> LoRA -> gate split -> promotion; final test at the end.

Three disjoint task splits. Training tasks are searched (selection by the proxy reward, labels from their own
hidden tests). The gate split decides promotion: each episode the incumbent is evaluated afresh and the candidate
beside it, and the candidate is promoted only on a net gain of `min_gain` tasks AND an exact one-sided McNemar
p < `alpha`. The final test split decides nothing: it is evaluated once, for the base and the final policy, after
the last gate, so its number is free of the selection the gate made (the gate's own numbers are not).

A LangGraph graph checkpointed in SQLite, so `selfevolve evolve` resumes after a crash: attempts are never re-run
(fixed ids, looked up in the store), a registered adapter is never trained twice, an interrupted training goes on
from its saved state, and each episode's report is written atomically.
"""

from __future__ import annotations

import math
import operator
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent_selfevolve.agent import Limits
from agent_selfevolve.ast_guard import compile_graph
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sqlite_checkpointer
from agent_selfevolve.fileio import save_figure_atomic, write_json_atomic
from agent_selfevolve.infra import emit
from agent_selfevolve.models.base import Model, Usage
from agent_selfevolve.search import strategies
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.setups import get_setup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

PolicyFactory = Callable[[Any], Model]
"""AdapterVersion (or None for the base model) -> a Model that acts with that adapter."""

SELECT_WITH = "proxy"
"""How the training search chooses between its attempts: like a deployed agent, without hidden tests. The training
*labels* (which attempts become SFT rows, which side of a pair wins) still come from the training tasks' own hidden
tests, recorded beside every attempt; gate and final tasks never reach search or data at all."""


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
    train_prompts: str = "canonical"
    """First user message of training rows: 'canonical' (rebuilt without search strategy/guidance, as the gate and
    final prompts are) or 'as_run' (as the search served it)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields."""
    replay: bool = True
    """Train on every success so far (a replay buffer), not only this episode's."""
    min_gain: int = 1
    """Promotion needs the candidate to solve at least this many more gate tasks than the incumbent (net)..."""
    alpha: float = 0.05
    """...and an exact one-sided McNemar test on the paired gate outcomes (binomial on the tasks where the two
    differ) to give p < alpha (the gate's significance level; LoRA's alpha is `train["alpha"]`). 1 gained, 0 lost
    is p = 0.5 however large the gate split; 5 gained, 0 lost is 0.031."""
    final_candidate: bool = False
    """Also run the last episode's candidate on the final split when the gate kept the incumbent: what training
    did, apart from the gate's decision (a one-episode run whose gain is real but too small for the gate's test
    otherwise reports base against base). Reported beside the final policy, labelled as not promoted."""
    adapter_name: str = "policy"
    profile: str = "default"
    """Agent set-up (`setups`: a shipped name or a .yaml path); web tasks get the `web` set-up."""


@dataclass
class EvolveContext:
    train_tasks: list[Task]
    held_out: list[Task]
    """The gate split: promotion is decided on these alone. Never searched on or trained on."""
    store: TrajectoryStore
    registry: Any
    """train.AdapterRegistry."""
    base_hf_dir: Path
    policy: PolicyFactory
    out_dir: Path
    config: EvolveConfig = field(default_factory=EvolveConfig)
    on_event: Callable[[dict[str, Any]], None] | None = None
    final_test: list[Task] = field(default_factory=list)
    """The final test split: evaluated once at the end, for the base and the final policy, and read by nothing
    that decides. The gate picks the best-looking candidate on its own split, so that split's score is biased
    upwards; this one is not. Empty: the run reports no final number."""
    train_stop_at: float | None = None
    """Wall-clock time (`time.time()`) at which LoRA training pauses: its state is saved under the registry's
    `.resume/`, `train.TrainingPaused` propagates, and the same `evolve` call later goes on from that state. Without
    it training still saves its state every 10 minutes, so a killed run loses at most that much."""


class EvolveState(TypedDict, total=False):
    run_id: str
    episode: int
    current: str | None
    """Registry ref of the promoted adapter (None: the base model)."""
    current_eval: dict[str, bool]
    """The incumbent on the gate split, evaluated afresh this episode."""
    candidate: str | None
    candidate_eval: dict[str, bool]
    search_usage: dict[str, Any]
    data: dict[str, Any]
    train_metrics: dict[str, Any]
    started_at: float
    episodes: Annotated[list[dict[str, Any]], operator.add]
    final: dict[str, Any] | None
    """Base vs final policy on the final test split (None without one)."""


def eval_run_id(run_id: str, split: str, label: str, episode: int | None = None) -> str:
    """The store run of one policy's evaluation: on the gate split once per episode (so an incumbent is measured
    afresh, never credited with the score that got it selected), on the final split once."""
    return f"{run_id}:gate:ep{episode}:{label}" if split == "gate" else f"{run_id}:final:{label}"


def evaluate_policy(ctx: EvolveContext, adapter_ref: str | None, tasks: list[Task], eval_run: str,
                    split: str = "gate") -> dict[str, bool]:
    """One attempt (eval_params: greedy by default) per task, graded by its hidden tests; {task_id: resolved}.
    Attempt ids derive from `eval_run`, so a resumed run reuses what was already evaluated."""
    version = ctx.registry.get(adapter_ref) if adapter_ref else None
    model = ctx.policy(version)
    label = adapter_ref or "base"
    results: dict[str, bool] = {}
    for task in tasks:
        spec = AttemptSpec(task.instance_id, attempt_id=f"{eval_run}:{task.instance_id}", run_id=eval_run,
                           operator="eval", model_params=ctx.config.eval_params)
        traj = run_attempt(task, model, spec, limits=Limits(**ctx.config.limits), store=ctx.store,
                           agent=ctx.config.profile)
        results[task.instance_id] = traj.resolved
        emit({"event": "eval", "split": split, "policy": label, "task_id": task.instance_id,
              "resolved": traj.resolved}, on_event=ctx.on_event)
    return results


def evaluate_current(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx, current = runtime.context, state.get("current")
    run = eval_run_id(state["run_id"], "gate", current or "base", state["episode"])
    return {"current_eval": evaluate_policy(ctx, current, ctx.held_out, run)}


def search_train(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx = runtime.context
    version = ctx.registry.get(state["current"]) if state.get("current") else None
    model = ctx.policy(version)
    search = strategies()[ctx.config.strategy]
    used = Usage()
    for task in ctx.train_tasks:
        sctx = SearchContext(task=task, model=model, store=ctx.store, limits=Limits(**ctx.config.limits),
                             budget=Budget(**ctx.config.budget), select_with=SELECT_WITH,
                             agent=get_setup(ctx.config.profile))
        result = search(sctx, run_id=f"{state['run_id']}:ep{state['episode']}:{task.instance_id}",
                        **ctx.config.strategy_options)
        used = used + Usage.from_dict(result.usage)
        emit({"event": "search", "episode": state["episode"], "task_id": task.instance_id,
              "resolved": result.resolved, "attempts": result.attempts}, on_event=ctx.on_event)
    return {"search_usage": used.to_dict()}


def build_data(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    from agent_selfevolve.train import build_dataset, write_jsonl

    ctx = runtime.context
    prefix = f"{state['run_id']}:ep"
    episodes = range(state["episode"] + 1) if ctx.config.replay else [state["episode"]]
    wanted = tuple(f"{prefix}{k}:" for k in episodes)
    trajs = [t for t in ctx.store.attempts() if t.run_id.startswith(wanted)]
    never = [t.instance_id for t in [*ctx.held_out, *ctx.final_test]]
    rows, report = build_dataset(trajs, held_out=never, kinds=ctx.config.kinds, prompts=ctx.config.train_prompts)
    folder = ctx.out_dir / f"episode-{state['episode']}"
    files = {kind: str(folder / f"{kind}.jsonl") for kind in rows}
    hashes = {kind: write_jsonl(files[kind], kind_rows) for kind, kind_rows in rows.items()}
    sizes = {kind: len(kind_rows) for kind, kind_rows in rows.items()}
    if report.empty:
        emit({"event": "data_warning", "episode": state["episode"], "empty": report.empty}, on_event=ctx.on_event)
    return {"data": {"files": files, "hashes": hashes, "sizes": sizes, "trajectories": len(trajs),
                     "successes": sum(t.resolved for t in trajs), "report": asdict(report)}}


def _registered(ctx: EvolveContext, run_id: str, episode: int) -> Any:
    """This episode's adapter if an earlier (crashed) run of the node registered it: never train twice."""
    return next((v for v in ctx.registry.versions(ctx.config.adapter_name)
                 if v.metrics.get("run_id") == run_id and v.metrics.get("episode") == episode), None)


def train(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    """LoRA on this episode's rows, continuing the incumbent's adapter (a fresh one on the base while the base is
    the incumbent), so the parent the registry records is what the weights really grew from."""
    from agent_selfevolve.train import read_jsonl, train_sft_then_dpo

    ctx = runtime.context
    data, current = state["data"], state.get("current")
    if not data["sizes"].get("sft") and not data["sizes"].get("recovery"):
        return {"candidate": None, "train_metrics": {"skipped": "no successful training trajectories"}}
    done = _registered(ctx, state["run_id"], state["episode"])
    if done is not None:
        return {"candidate": done.ref, "train_metrics": done.metrics}
    init = ctx.registry.check_base(current, ctx.base_hf_dir).path if current else None
    rows = {kind: read_jsonl(path) for kind, path in data["files"].items()}
    resume = ctx.registry.resume_path(f"{state['run_id']}-ep{state['episode']}")
    out, metrics = train_sft_then_dpo(ctx.base_hf_dir, rows,
                                      lambda stage: ctx.registry.staging_path(f"ep{state['episode']}-{stage}"),
                                      ctx.config.train, init_adapter=init, resume_dir=resume,
                                      stop_at=ctx.train_stop_at)
    metrics = {**metrics, "trained_from": current or "base", "train_prompts": data["report"]["prompts"],
               "kinds": list(ctx.config.kinds), "episode": state["episode"], "run_id": state["run_id"]}
    version = ctx.registry.register(ctx.config.adapter_name, out, parent=current,
                                    data_hashes=list(data["hashes"].values()), metrics=metrics)
    shutil.rmtree(resume, ignore_errors=True)
    emit({"event": "trained", "episode": state["episode"], "adapter": version.ref, **metrics}, on_event=ctx.on_event)
    return {"candidate": version.ref, "train_metrics": metrics}


def evaluate_candidate(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    candidate = state.get("candidate")
    if not candidate:
        return {"candidate_eval": {}}
    ctx = runtime.context
    run = eval_run_id(state["run_id"], "gate", candidate, state["episode"])
    return {"candidate_eval": evaluate_policy(ctx, candidate, ctx.held_out, run)}


def mcnemar(before: dict[str, bool], after: dict[str, bool]) -> dict[str, Any]:
    """Exact McNemar test on paired outcomes (b: fixed by the new policy, c: broken by it): under "no difference"
    each of the n = b + c discordant tasks is a fair coin. `p_value` is two-sided (is there any difference?),
    `p_one_sided` = P(X >= b), X ~ Binomial(n, 1/2) (is the new policy better?), the one the gate uses."""
    b = sum(1 for k in before if not before[k] and after.get(k))
    c = sum(1 for k in before if before[k] and not after.get(k, False))
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
    one = 1.0 if n == 0 else sum(math.comb(n, i) for i in range(b, n + 1)) / 2**n
    return {"gained": b, "lost": c, "p_value": p, "p_one_sided": one}


def promotion(before: dict[str, bool], after: dict[str, bool], min_gain: int, alpha: float) -> dict[str, Any]:
    """The gate's decision on paired gate-split outcomes: a net gain of at least `min_gain` tasks AND an exact
    one-sided McNemar p below `alpha`, so a lucky task or two on a small split does not promote."""
    if set(before) != set(after):
        raise ValueError(f"unpaired gate outcomes: {sorted(set(before) ^ set(after))}")
    paired = mcnemar(before, after)
    gain = paired["gained"] - paired["lost"]
    reasons = ([f"net gain {gain} < min_gain {min_gain}"] if gain < min_gain else []) + \
        ([f"p {paired['p_one_sided']:.3g} >= alpha {alpha}"] if paired["p_one_sided"] >= alpha else [])
    return {"promote": not reasons, "gain": gain, "min_gain": min_gain, "alpha": alpha,
            "reason": "; ".join(reasons) or f"net gain {gain}, p {paired['p_one_sided']:.3g} < {alpha}", **paired}


def gate(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    """Promote or not, from this episode's gate-split outcomes of incumbent and candidate (nothing else)."""
    ctx = runtime.context
    before, after = state.get("current_eval") or {}, state.get("candidate_eval") or {}
    decision = promotion(before, after, ctx.config.min_gain, ctx.config.alpha) if state.get("candidate") else \
        {"promote": False, "reason": f"no candidate: {state.get('train_metrics', {}).get('skipped', '')}"}
    promote = bool(decision["promote"])
    n = max(1, len(before))
    dataset = state.get("data", {}).get("report", {})
    report = {"episode": state["episode"], "policy_before": state.get("current") or "base",
              "candidate": state.get("candidate"), "promoted": promote, "gate": decision,
              "heldout_split": "gate", "heldout_before": sum(before.values()) / n,
              "heldout_after": sum(after.values()) / n if after else None, "heldout_n": len(before),
              "paired": mcnemar(before, after) if after else None,
              "search_usage": state.get("search_usage", {}), "data": state.get("data", {}).get("sizes", {}),
              "data_prompts": dataset.get("prompts"), "data_warnings": dataset.get("empty", {}),
              "train": state.get("train_metrics", {}), "wall_s": time.time() - state.get("started_at", time.time())}
    write_json_atomic(ctx.out_dir / f"episode-{state['episode']}" / "report.json", report)
    emit({"event": "episode_finished", **report}, on_event=ctx.on_event)
    update: dict[str, Any] = {"episodes": [report], "episode": state["episode"] + 1, "candidate": None,
                              "candidate_eval": {}, "current_eval": {}, "started_at": time.time()}
    if promote:
        update["current"] = state["candidate"]
    return update


def final_eval(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    """After the last gate: the base and the final policy on the final test split, paired."""
    ctx, policy = runtime.context, state.get("current")
    if not ctx.final_test:
        return {"final": None}
    base = evaluate_policy(ctx, None, ctx.final_test, eval_run_id(state["run_id"], "final", "base"), "final")
    final = base if policy is None else \
        evaluate_policy(ctx, policy, ctx.final_test, eval_run_id(state["run_id"], "final", policy), "final")
    n = len(base)
    report = {"policy": policy or "base", "n": n, "base": sum(base.values()) / n, "final": sum(final.values()) / n,
              "paired": mcnemar(base, final), "outcomes": {"base": base, "final": final}}
    candidate = ((state.get("episodes") or [{}])[-1]).get("candidate")
    if ctx.config.final_candidate and candidate and candidate != policy:
        tried = evaluate_policy(ctx, candidate, ctx.final_test, eval_run_id(state["run_id"], "final", candidate),
                                "final")
        report["candidate"] = {"policy": candidate, "promoted": False, "final": sum(tried.values()) / n,
                               "paired": mcnemar(base, tried)}
        report["outcomes"]["candidate"] = tried
    return {"final": report}


def summary_of(state: EvolveState | dict[str, Any]) -> dict[str, Any]:
    return {"run_id": state["run_id"], "final_policy": state.get("current") or "base",
            "episodes": state.get("episodes", []), "final_test": state.get("final")}


def finish(state: EvolveState, runtime: Runtime[EvolveContext]) -> dict[str, Any]:
    ctx = runtime.context
    write_json_atomic(ctx.out_dir / "evolve.json", summary_of(state))
    plot_episodes(state.get("episodes", []), ctx.out_dir / "evolve.png", state.get("final"))
    return {}


def plot_episodes(episodes: list[dict[str, Any]], out: Path, final: dict[str, Any] | None = None) -> Path | None:
    """Gate-split pass rate by episode (incumbent and candidate) and, at the end, the final test split (base and
    final policy) as a PNG; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [e["episode"] for e in episodes]
    ax.plot(xs, [e["heldout_before"] for e in episodes], "o-", label="incumbent (gate split)")
    ax.plot(xs, [e["heldout_after"] if e["heldout_after"] is not None else float("nan") for e in episodes], "s--",
            label="candidate (gate split)")
    for e in episodes:
        if e["promoted"]:
            ax.annotate("promoted", (e["episode"], e["heldout_after"]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
    if final:
        x = len(episodes)
        ax.plot([x, x], [final["base"], final["final"]], ":", color="gray")
        ax.plot([x], [final["base"]], "v", color="gray", label="base (final test)")
        ax.plot([x], [final["final"]], "^", color="black", label=f"{final['policy']} (final test)")
        ax.set_xticks([*xs, x], [*(str(v) for v in xs), "final"])
    ax.set_xlabel("episode")
    ax.set_ylabel("pass rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, out)


def _next(state: EvolveState, runtime: Runtime[EvolveContext]) -> Literal["eval_current", "final_eval"]:
    return "eval_current" if state.get("episode", 0) < runtime.context.config.episodes else "final_eval"


def build_evolve_graph() -> StateGraph:
    graph = StateGraph(EvolveState, context_schema=EvolveContext)
    for name, fn in (("eval_current", evaluate_current), ("search", search_train), ("data", build_data),
                     ("train", train), ("eval_candidate", evaluate_candidate), ("gate", gate),
                     ("final_eval", final_eval), ("finish", finish)):
        graph.add_node(name, fn)
    graph.add_conditional_edges(START, _next, ["eval_current", "final_eval"])
    graph.add_edge("eval_current", "search")
    graph.add_edge("search", "data")
    graph.add_edge("data", "train")
    graph.add_edge("train", "eval_candidate")
    graph.add_edge("eval_candidate", "gate")
    graph.add_conditional_edges("gate", _next, ["eval_current", "final_eval"])
    graph.add_edge("final_eval", "finish")
    graph.add_edge("finish", END)
    return graph


def check_splits(ctx: EvolveContext) -> None:
    """Train, gate and final test must be disjoint, and there must be a gate split to decide on."""
    if not ctx.held_out:
        raise ValueError("no gate tasks (EvolveContext.held_out): promotion would have nothing to decide on")
    splits = {"training": ctx.train_tasks, "gate": ctx.held_out, "final test": ctx.final_test}
    ids = {name: {t.instance_id for t in tasks} for name, tasks in splits.items()}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if ids[a] & ids[b]:
                raise ValueError(f"tasks both in {a} and {b}: {', '.join(sorted(ids[a] & ids[b]))}")


def evolve(ctx: EvolveContext, run_id: str = "evolve") -> dict[str, Any]:
    """Run (or resume) the episode loop `run_id`; returns the summary written to `out_dir/evolve.json`."""
    from agent_selfevolve.train.canonical import PROMPT_MODES

    check_splits(ctx)
    if ctx.config.train_prompts not in PROMPT_MODES:
        raise ValueError(f"train_prompts must be one of {', '.join(PROMPT_MODES)}, not {ctx.config.train_prompts!r}")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    ctx.store.create_run("evolve", {"config": asdict(ctx.config), "train": [t.instance_id for t in ctx.train_tasks],
                                    "held_out": [t.instance_id for t in ctx.held_out],
                                    "final_test": [t.instance_id for t in ctx.final_test]}, run_id=run_id)
    graph = compile_graph(build_evolve_graph, sqlite_checkpointer(ctx.out_dir / "checkpoints.sqlite"))
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
