"""SE-Agent (arXiv 2508.02085) as a LangGraph graph: a pool of diverse trajectories evolved by three operators.

    seed -> plan -> Send(attempt) waves -> plan -> refine -> evolve -> plan ... -> select

* seed: the initial pool, distinct planning strategies plus mutations (strategy twist + another temperature).
* refine (refinement): score every new trajectory (selection reward, an operator rating of its reasoning,
  efficiency), extract blind spots / risks / what worked, keep k elites chosen for score and diversity, and
  stop on budget, generation limit, a perfect reward or no improvement for `patience` generations.
* evolve: revision (reflect on the summary of a failing trajectory of the live population, i.e. the elites
  plus the newest generation, and plan an orthogonal retry) and recombination (the elite pairs maximising
  score sum + diversity) each plan one child whose guidance and strategy go into
  its first prompt through AttemptSpec. Child ids are fixed here and checkpointed before any Send.

Only attempts of this run and task are ever read. The returned attempt has the highest selection reward
(ties: the best refinement score); hidden-test results are reported, never used to choose.
"""

from __future__ import annotations

import operator
from dataclasses import asdict
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.infra import emit
from agent_selfevolve.models.base import Usage
from agent_selfevolve.search.common import (
    SearchContext,
    SearchResult,
    attempt_node,
    budget_reason,
    finish_result,
    run_search,
    sends,
)
from agent_selfevolve.search.operators import (
    DEFAULT_STRATEGIES,
    MUTATION_TWISTS,
    NEUTRAL_QUALITY,
    RECOMBINATION_MODES,
    OperatorCall,
    best_pairs,
    call_operator,
    combined_score,
    efficiency,
    fallback_recombination,
    fallback_revision,
    insights_text,
    parse_plan,
    parse_rating,
    rating_prompt,
    recombination_prompt,
    revision_prompt,
    select_diverse,
    trajectory_features,
)
from agent_selfevolve.search.summary import VISIBLE_SOURCES, reward_text, summarize_trajectory
from agent_selfevolve.trajectory import Trajectory


def _merge(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    return {**(old or {}), **(new or {})}


class SEAgentState(TypedDict, total=False):
    run_id: str
    task_id: str
    pool_size: int
    generations: int
    elites: int
    revisions: int
    recombinations: int
    wave_size: int
    temperature: float | None
    mutation_temperature: float | None
    patience: int
    diversity_weight: float
    revise_below: float
    stop_on_perfect: bool
    rate_with_llm: bool
    strategies: list[str]
    generation: int
    queue: list[dict[str, Any]]
    """Planned attempt specs (ids fixed) not yet sent."""
    wave: list[dict[str, Any]]
    """The specs sent in the current wave."""
    attempts: Annotated[list[dict[str, Any]], operator.add]
    op_usage: Annotated[list[dict[str, Any]], operator.add]
    op_log: Annotated[list[dict[str, Any]], operator.add]
    scores: Annotated[dict[str, dict[str, Any]], _merge]
    elite_ids: list[str]
    history: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    result: dict[str, Any]


# --- helpers that read the run ----------------------------------------------------------------------------------

def _population(state: SEAgentState, ctx: SearchContext) -> dict[str, Trajectory]:
    """This run's and this task's attempts only (never another run's or task's history)."""
    ids = {r["attempt_id"] for r in state.get("attempts", [])}
    trajs = ctx.store.attempts(run_id=state["run_id"], task_id=state["task_id"])
    return {t.attempt_id: t for t in trajs if t.attempt_id in ids}


def _summary(traj: Trajectory | None, record: dict[str, Any]) -> str:
    """The operator's view of an attempt; a reward only when its source hides nothing (summary.VISIBLE_SOURCES)."""
    if traj is None:
        shown = reward_text(record["reward"], record.get("reward_source", ""))
        return f"Attempt {record['attempt_id']}: status={record['status']}; {shown}".rstrip("; ")
    return summarize_trajectory(traj)


def _shown_reward(record: dict[str, Any]) -> float | None:
    return record["reward"] if record.get("reward_source") in VISIBLE_SOURCES else None


def _budget(state: SEAgentState, ctx: SearchContext, extra: list[dict[str, Any]]) -> str | None:
    return budget_reason({**state, "op_usage": list(state.get("op_usage", [])) + extra}, ctx)


def _params(temperature: float | None) -> dict[str, Any]:
    return {"temperature": temperature} if temperature is not None else {}


def _log(runtime: Runtime[SearchContext], call: OperatorCall, generation: int, parents: list[str], child: str,
         ok: bool) -> dict[str, Any]:
    """Record one operator call (a fallback keeps the malformed reply for inspection) and emit it as an event."""
    entry = {"generation": generation, "operator": call.kind, "parent_ids": parents, "child_id": child,
             "ok": ok, "error": call.error or ("" if ok else "unparseable reply: used the fallback"),
             "reply": call.text[:800]}
    event = {"event": "operator", **{k: v for k, v in entry.items() if k != "reply"}}
    emit(event, runtime.stream_writer, runtime.context.on_event)
    return entry


# --- nodes ------------------------------------------------------------------------------------------------------

def seed(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """The initial pool: one attempt per strategy, then mutations of them (strategy twist + temperature)."""
    run_id, n = state["run_id"], state.get("pool_size", 10)
    strategies = state.get("strategies") or list(DEFAULT_STRATEGIES)
    specs: list[AttemptSpec] = []
    for i in range(n):
        base, round_ = i % len(strategies), i // len(strategies)
        if round_ == 0:
            specs.append(AttemptSpec(state["task_id"], attempt_id=f"{run_id}:g0:initial:{i}", run_id=run_id,
                                     strategy=strategies[base], operator="initial", node_id="g0",
                                     model_params=_params(state.get("temperature"))))
        else:
            twist = MUTATION_TWISTS[(round_ - 1 + base) % len(MUTATION_TWISTS)]
            specs.append(AttemptSpec(state["task_id"], attempt_id=f"{run_id}:g0:mutation:{i}", run_id=run_id,
                                     strategy=f"{strategies[base]} {twist}", operator="mutation", node_id="g0",
                                     parent_ids=[f"{run_id}:g0:initial:{base}"],
                                     model_params=_params(state.get("mutation_temperature"))))
    return {"generation": 0, "queue": [asdict(s) for s in specs], "wave": []}


def plan(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Move the next wave from the queue (ids already fixed), or nothing when the generation is done."""
    if state.get("stop_reason"):
        return {}
    queue = state.get("queue", [])
    if not queue:
        return {"wave": []}
    reason = budget_reason(state, runtime.context)
    if reason:
        return {"stop_reason": f"budget: {reason}", "wave": [], "queue": []}
    size = max(1, state.get("wave_size", 4))
    return {"wave": queue[:size], "queue": queue[size:]}


def route_plan(state: SEAgentState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    if state.get("wave"):
        return sends([AttemptSpec(**s) for s in state["wave"]], state)
    return "refine"


def refine(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Refinement: score the unscored trajectories, extract their lessons, keep diverse elites, test stopping."""
    ctx = runtime.context
    gen, scores = state.get("generation", 0), dict(state.get("scores", {}))
    trajs = _population(state, ctx)
    usage: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    new: dict[str, dict[str, Any]] = {}
    stop = ""
    for rec in state.get("attempts", []):
        aid = rec["attempt_id"]
        if aid in scores or aid in new:
            continue
        rating = None
        reason = _budget(state, ctx, usage) if state.get("rate_with_llm", True) else None
        if reason:
            stop = stop or f"budget: {reason}"
        elif state.get("rate_with_llm", True):
            call = call_operator(ctx.op_model, "rate", rating_prompt(ctx.task.problem_statement,
                                                                     _summary(trajs.get(aid), rec)))
            usage.append(call.usage)
            rating = parse_rating(call.text) if not call.error else None
            log.append(_log(runtime, call, gen, [aid], "", rating is not None))
        quality = rating["quality"] if rating else NEUTRAL_QUALITY
        eff = efficiency(rec, ctx.limits)
        new[aid] = {"score": combined_score(rec["reward"], quality, eff), "reward": rec["reward"],
                    "quality": quality, "efficiency": eff, "rated": rating is not None,
                    "blind_spots": (rating or {}).get("blind_spots", []), "risks": (rating or {}).get("risks", []),
                    "worked": (rating or {}).get("worked", ""), "generation": gen}
    scores.update(new)
    score = {i: s["score"] for i, s in scores.items()}
    feats = {i: trajectory_features(trajs.get(i)) for i in scores}
    elites = select_diverse(list(scores), score, feats, state.get("elites", 4), state.get("diversity_weight", 0.5))
    best = max(score.values(), default=0.0)
    best_reward = max((s["reward"] for s in scores.values()), default=0.0)
    history = [*state.get("history", []), {"generation": gen, "best_score": best, "best_reward": best_reward,
                                           "elite_ids": elites, "scored": len(scores)}]
    patience = state.get("patience", 2)
    if not stop and best_reward >= 1.0 and state.get("stop_on_perfect", True):
        stop = f"perfect reward after generation {gen}"
    elif not stop and gen >= state.get("generations", 3):
        stop = f"completed {gen} generations"
    elif not stop and len(history) > patience and best <= history[-1 - patience]["best_score"] + 1e-9:
        stop = f"converged: best score {best:.3f} not improved in {patience} generations"
    update: dict[str, Any] = {"scores": new, "elite_ids": elites, "history": history[-1:], "op_usage": usage,
                              "op_log": log}
    return {**update, "stop_reason": stop} if stop else update


def route_refine(state: SEAgentState) -> str:
    return "select" if state.get("stop_reason") else "evolve"


def evolve(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Revision and recombination: one operator call per child; the child ids are fixed here."""
    ctx = runtime.context
    run_id, task_id, gen = state["run_id"], state["task_id"], state.get("generation", 0) + 1
    scores, records = state.get("scores", {}), {r["attempt_id"]: r for r in state.get("attempts", [])}
    trajs = _population(state, ctx)
    score = {i: s["score"] for i, s in scores.items()}
    feats = {i: trajectory_features(trajs.get(i)) for i in scores}
    weight, problem, insights = state.get("diversity_weight", 0.5), ctx.task.problem_statement, insights_text(scores)
    strategies = state.get("strategies") or list(DEFAULT_STRATEGIES)
    tried = list(dict.fromkeys(t.strategy for t in trajs.values() if t.strategy))
    params = _params(state.get("temperature"))
    usage: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    specs: list[AttemptSpec] = []
    stop = ""

    revised = {p for r in records.values() if r.get("operator") == "revision" for p in r.get("parent_ids", [])}
    # the live population: the elites plus the generation just scored (the other trajectories are retired)
    live = set(state.get("elite_ids", [])) | {i for i, s in scores.items() if s["generation"] == gen - 1}
    failing = [i for i in scores if i in live and scores[i]["reward"] < state.get("revise_below", 1.0)
               and i not in revised]
    for k, pid in enumerate(select_diverse(failing, score, feats, state.get("revisions", 2), weight)):
        reason = _budget(state, ctx, usage)
        if reason:
            stop = f"budget: {reason}"
            break
        child = f"{run_id}:g{gen}:revision:{k}"
        parent = trajs.get(pid)
        call = call_operator(ctx.op_model, "revise", revision_prompt(
            problem, _summary(parent, records[pid]), insights, tried, scored=_shown_reward(records[pid]) is not None))
        usage.append(call.usage)
        parsed = parse_plan(call.text) if not call.error else None
        untried = next((s for s in strategies if s not in tried), strategies[(k + gen) % len(strategies)])
        plan_ = parsed or fallback_revision(parent.strategy if parent else "", records[pid]["status"],
                                            _shown_reward(records[pid]), untried)
        log.append(_log(runtime, call, gen, [pid], child, parsed is not None))
        strategy = plan_["strategy"] or untried
        tried.append(strategy)
        specs.append(AttemptSpec(task_id, attempt_id=child, run_id=run_id, guidance=plan_["guidance"],
                                 strategy=strategy, operator="revision", parent_ids=[pid], node_id=f"g{gen}",
                                 model_params=params))

    done_pairs = {frozenset(r.get("parent_ids", [])) for r in records.values() if r.get("operator") == "recombination"}
    pairs = [] if stop else best_pairs(state.get("elite_ids", []), score, feats, state.get("recombinations", 2),
                                       weight, done_pairs)
    modes = list(RECOMBINATION_MODES)
    for k, (a, b) in enumerate(pairs):
        reason = _budget(state, ctx, usage)
        if reason:
            stop = f"budget: {reason}"
            break
        child, mode = f"{run_id}:g{gen}:recombination:{k}", modes[(gen + k) % len(modes)]
        ta, tb = trajs.get(a), trajs.get(b)
        call = call_operator(ctx.op_model, "recombine", recombination_prompt(
            problem, mode, _summary(ta, records[a]), _summary(tb, records[b]), insights))
        usage.append(call.usage)
        parsed = parse_plan(call.text) if not call.error else None
        plan_ = parsed or fallback_recombination(mode, ta.strategy if ta else "", tb.strategy if tb else "",
                                                 [scores[a].get("worked", ""), scores[b].get("worked", "")])
        log.append(_log(runtime, call, gen, [a, b], child, parsed is not None))
        specs.append(AttemptSpec(task_id, attempt_id=child, run_id=run_id, guidance=plan_["guidance"],
                                 strategy=plan_["strategy"], operator="recombination", parent_ids=[a, b],
                                 node_id=f"g{gen}", model_params=params))

    update: dict[str, Any] = {"op_usage": usage, "op_log": log}
    if stop or not specs:
        return {**update, "stop_reason": stop or f"nothing left to evolve in generation {gen}", "queue": []}
    return {**update, "generation": gen, "queue": [asdict(s) for s in specs]}


def route_evolve(state: SEAgentState) -> str:
    return "select" if state.get("stop_reason") else "plan"


def choose(records: list[dict[str, Any]], scores: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The returned attempt: highest selection reward; among equal rewards the best refinement score, then a
    submitted one, then the cheaper one. Hidden-test results never enter the choice."""
    if not records:
        return None
    return max(records, key=lambda r: (r["reward"], scores.get(r["attempt_id"], {}).get("score", -1.0),
                                       r["status"] == "submitted", -Usage.from_dict(r["usage"]).total_tokens))


def select(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Return the chosen attempt; report the refinement view (elites, scores, operator log) alongside."""
    ctx, scores, log = runtime.context, state.get("scores", {}), state.get("op_log", [])
    extra = {"generations": state.get("generation", 0), "elite_ids": state.get("elite_ids", []),
             "best_score_attempt_id": max(scores, key=lambda i: scores[i]["score"]) if scores else None,
             "scores": {i: s["score"] for i, s in scores.items()}, "history": state.get("history", []),
             "operator_calls": len(log), "operator_fallbacks": sum(not e["ok"] for e in log), "operators": log}
    best = choose(state.get("attempts", []), scores)
    out = finish_result("se_agent", state, ctx, state.get("stop_reason", ""), extra, best=best,
                        writer=runtime.stream_writer)
    return out


def build_se_agent_graph() -> StateGraph:
    graph = StateGraph(SEAgentState, context_schema=SearchContext)
    graph.add_node("seed", seed)
    graph.add_node("plan", plan)
    graph.add_node("attempt", attempt_node)
    graph.add_node("refine", refine)
    graph.add_node("evolve", evolve)
    graph.add_node("select", select)
    graph.add_edge(START, "seed")
    graph.add_edge("seed", "plan")
    graph.add_conditional_edges("plan", route_plan, ["attempt", "refine", "select"])
    graph.add_edge("attempt", "plan")
    graph.add_conditional_edges("refine", route_refine, ["evolve", "select"])
    graph.add_conditional_edges("evolve", route_evolve, ["plan", "select"])
    graph.add_edge("select", END)
    return graph


def se_agent(ctx: SearchContext, pool_size: int = 10, generations: int = 3, elites: int = 4, revisions: int = 2,
             recombinations: int = 2, strategies: list[str] | None = None, temperature: float | None = 0.7,
             mutation_temperature: float | None = 1.0, patience: int = 2, diversity_weight: float = 0.5,
             revise_below: float = 1.0, stop_on_perfect: bool = True, rate_with_llm: bool = True,
             wave_size: int | None = None, run_id: str | None = None, max_concurrency: int = 4) -> SearchResult:
    """Run SE-Agent evolution on `ctx.task`; resumes the run `run_id` if it exists.

    Each generation plans `revisions` revised and `recombinations` recombined children of the elites; the
    search stops at the budget, after `generations`, at a perfect reward (`stop_on_perfect`) or when the
    best refinement score has not improved for `patience` generations.
    """
    inputs = {"pool_size": pool_size, "generations": generations, "elites": elites, "revisions": revisions,
              "recombinations": recombinations, "strategies": list(strategies or DEFAULT_STRATEGIES),
              "temperature": temperature, "mutation_temperature": mutation_temperature, "patience": patience,
              "diversity_weight": diversity_weight, "revise_below": revise_below, "stop_on_perfect": stop_on_perfect,
              "rate_with_llm": rate_with_llm, "wave_size": wave_size or max_concurrency}
    return run_search(build_se_agent_graph, "se_agent", inputs, ctx, run_id=run_id, max_concurrency=max_concurrency)


__all__ = ["SEAgentState", "build_se_agent_graph", "choose", "se_agent"]
