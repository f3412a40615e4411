"""SE-Agent (arXiv 2508.02085) as a LangGraph graph: a pool of diverse trajectories evolved by three operators.

    seed -> plan -> Send(attempt) waves -> plan -> assess -> revise -> recombine -> refine -> plan ... -> select

* seed: the initial pool, distinct planning strategies plus mutations (strategy twist + another temperature);
  with `greedy_first`, its first member is the plain greedy attempt, which wins reward ties in the final choice.
* assess (refinement's evaluation): score every new trajectory (selection reward, an operator rating of its
  reasoning, efficiency), extract what worked / blind spots / risks, keep k elites chosen for score and diversity,
  and stop on budget, generation limit, a perfect reward or no improvement for `patience` generations.
* revise (revision): reflect on live trajectories not yet perfect (elites and revised ones included) and plan
  orthogonal retries.
* recombine (recombination): the elite pairs maximising score sum + diversity each plan one child (crossover,
  transfer or restructure).
* refine (refinement's child): the most promising trajectory not yet perfect is refined into a child that re-runs
  its state-changing turns (its edits) and continues with a plan against its risks.

Each operator's guidance and strategy go into the child's first prompt through AttemptSpec; each node fixes its
children's ids and the checkpoint keeps them before any Send. Only attempts of this run and task are ever read.
The returned attempt has the highest selection reward (ties: the best refinement score); hidden-test results are
reported, never used to choose. What each operator does here and in the paper: docs/se_agent.md.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.models.base import Usage
from agent_selfevolve.search.common import (
    GREEDY_OPERATOR,
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
    call_operator,
    combined_score,
    efficiency,
    parse_rating,
    rating_prompt,
    select_diverse,
    trajectory_features,
)
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.registry import StrategyConfig, register_strategy
from agent_selfevolve.search.se_agent_ops import (
    Generation,
    budget_with,
    log_call,
    plan_recombinations,
    plan_refinements,
    plan_revisions,
    population,
    sampling_params,
    summary_of,
)
from agent_selfevolve.trajectory import Status


def _merge(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    return {**(old or {}), **(new or {})}


@dataclass(frozen=True)
class SEAgentConfig(StrategyConfig):
    pool_size: int = 10
    """Size of the initial pool: one attempt per strategy, then mutations of them."""
    generations: int = 3
    elites: int = 4
    revisions: int = 2
    """Revised children planned per generation."""
    recombinations: int = 2
    """Recombined children planned per generation."""
    refinements: int = 1
    """Refined children planned per generation (the most promising trajectories not yet perfect)."""
    refine_from_state: bool = True
    """A refined child first re-runs its parent's state-changing turns (False: it starts afresh, guided only)."""
    strategies: tuple[str, ...] | None = None
    """Planning strategies of the initial pool; None: `operators.DEFAULT_STRATEGIES`."""
    temperature: float | None = 0.7
    mutation_temperature: float | None = 1.0
    greedy_first: bool = False
    """The pool's first member is the plain greedy attempt (no planning strategy, temperature 0, operator
    'greedy'), and among attempts of equal selection reward the final choice takes it: as for best-of-N's option
    of that name, the model's most likely attempt then stays a candidate however the samples and operators fare."""
    patience: int = 2
    """Stop when the best refinement score has not improved for this many generations."""
    diversity_weight: float = 0.5
    improve_below: float = 1.0
    """Revision and refinement work on live trajectories whose selection reward is below this."""
    stop_on_perfect: bool = True
    rate_with_llm: bool = True
    wave_size: int | None = None
    """Attempts per wave; None: `max_concurrency`."""

    def resolve(self, max_concurrency: int) -> SEAgentConfig:
        return replace(self, strategies=tuple(self.pool_strategies()), wave_size=self.wave_size or max_concurrency)

    def pool_strategies(self) -> list[str]:
        return list(self.strategies or DEFAULT_STRATEGIES)


class SEAgentState(TypedDict, total=False):
    run_id: str
    task_id: str
    config: dict[str, Any]
    """`SEAgentConfig` as JSON."""
    generation: int
    queue: list[dict[str, Any]]
    """Planned attempt specs (ids fixed) not yet sent; `revise`, `recombine` and `refine` each append theirs."""
    wave: list[dict[str, Any]]
    """The specs sent in the current wave."""
    attempts: Annotated[list[AttemptRecord], operator.add]
    op_usage: Annotated[list[dict[str, Any]], operator.add]
    op_log: Annotated[list[dict[str, Any]], operator.add]
    scores: Annotated[dict[str, dict[str, Any]], _merge]
    elite_ids: list[str]
    history: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    result: dict[str, Any]


# --- nodes ------------------------------------------------------------------------------------------------------

def seed(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """The initial pool: one attempt per strategy, then mutations of them (strategy twist + temperature)."""
    config = SEAgentConfig.of(state)
    run_id, n = state["run_id"], config.pool_size
    strategies = config.pool_strategies()
    specs: list[AttemptSpec] = []
    for i in range(n):
        base, round_ = i % len(strategies), i // len(strategies)
        if i == 0 and config.greedy_first:
            specs.append(AttemptSpec(state["task_id"], attempt_id=initial_id(run_id, 0, config), run_id=run_id,
                                     operator=GREEDY_OPERATOR, node_id="g0", model_params={"temperature": 0.0}))
        elif round_ == 0:
            specs.append(AttemptSpec(state["task_id"], attempt_id=initial_id(run_id, i, config), run_id=run_id,
                                     strategy=strategies[base], operator="initial", node_id="g0",
                                     model_params=sampling_params(config.temperature)))
        else:
            twist = MUTATION_TWISTS[(round_ - 1 + base) % len(MUTATION_TWISTS)]
            specs.append(AttemptSpec(state["task_id"], attempt_id=f"{run_id}:g0:mutation:{i}", run_id=run_id,
                                     strategy=f"{strategies[base]} {twist}", operator="mutation", node_id="g0",
                                     parent_ids=[initial_id(run_id, base, config)],
                                     model_params=sampling_params(config.mutation_temperature)))
    return {"generation": 0, "queue": [asdict(s) for s in specs], "wave": []}


def initial_id(run_id: str, i: int, config: SEAgentConfig) -> str:
    """Id of the initial pool's member `i` (with `greedy_first`, member 0 is the greedy attempt)."""
    if i == 0 and config.greedy_first:
        return f"{run_id}:g0:{GREEDY_OPERATOR}:0"
    return f"{run_id}:g0:initial:{i}"


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
    size = max(1, SEAgentConfig.of(state).wave_size or 1)  # a resolved config always sets it
    return {"wave": queue[:size], "queue": queue[size:]}


def route_plan(state: SEAgentState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    if state.get("wave"):
        return sends([AttemptSpec(**s) for s in state["wave"]], state)
    return "assess"


Rated = tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], str]


def rate(state: SEAgentState, runtime: Runtime[SearchContext], gen: int) -> Rated:
    """Score the trajectories not scored yet: (scores, operator usage, operator log, budget stop or '')."""
    ctx, config = runtime.context, SEAgentConfig.of(state)
    scored, trajs = state.get("scores", {}), population(state, ctx)
    usage: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    new: dict[str, dict[str, Any]] = {}
    stop = ""
    for rec in state.get("attempts", []):
        aid = rec["attempt_id"]
        if aid in scored or aid in new:
            continue
        rating = None
        reason = budget_with(state, ctx, usage) if config.rate_with_llm else None
        if reason:
            stop = stop or f"budget: {reason}"
        elif config.rate_with_llm:
            call = call_operator(ctx.op_model, "rate", rating_prompt(ctx.task.problem_statement,
                                                                     summary_of(trajs.get(aid), rec)))
            usage.append(call.usage)
            rating = parse_rating(call.text) if not call.error else None
            log.append(log_call(runtime, call, gen, [aid], "", rating is not None))
        quality = rating["quality"] if rating else NEUTRAL_QUALITY
        eff = efficiency(rec, ctx.limits)
        new[aid] = {"score": combined_score(rec["reward"], quality, eff), "reward": rec["reward"],
                    "quality": quality, "efficiency": eff, "rated": rating is not None,
                    "blind_spots": (rating or {}).get("blind_spots", []), "risks": (rating or {}).get("risks", []),
                    "worked": (rating or {}).get("worked", ""), "generation": gen}
    return new, usage, log, stop


def stop_after(config: SEAgentConfig, gen: int, history: list[dict[str, Any]]) -> str:
    """Why the search ends after generation `gen` ('' to go on): a perfect reward, the generation limit, or no
    better best score for `patience` generations."""
    best, best_reward = history[-1]["best_score"], history[-1]["best_reward"]
    if best_reward >= 1.0 and config.stop_on_perfect:
        return f"perfect reward after generation {gen}"
    if gen >= config.generations:
        return f"completed {gen} generations"
    if len(history) > config.patience and best <= history[-1 - config.patience]["best_score"] + 1e-9:
        return f"converged: best score {best:.3f} not improved in {config.patience} generations"
    return ""


def assess(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Refinement's evaluation: score the new trajectories, extract their lessons, keep diverse elites, and test
    whether to stop."""
    config, gen = SEAgentConfig.of(state), state.get("generation", 0)
    new, usage, log, stop = rate(state, runtime, gen)
    scores = {**state.get("scores", {}), **new}
    score = {i: s["score"] for i, s in scores.items()}
    trajs = population(state, runtime.context)
    feats = {i: trajectory_features(trajs.get(i)) for i in scores}
    elites = select_diverse(list(scores), score, feats, config.elites, config.diversity_weight)
    entry = {"generation": gen, "best_score": max(score.values(), default=0.0),
             "best_reward": max((s["reward"] for s in scores.values()), default=0.0), "elite_ids": elites,
             "scored": len(scores)}
    stop = stop or stop_after(config, gen, [*state.get("history", []), entry])
    update: dict[str, Any] = {"scores": new, "elite_ids": elites, "history": [entry], "op_usage": usage,
                              "op_log": log, "queue": []}
    return {**update, "stop_reason": stop} if stop else update


def operator_node(planner: Callable[[Generation], tuple[list[AttemptSpec], str]], last: bool = False) -> Callable[
        [SEAgentState, Runtime[SearchContext]], dict[str, Any]]:
    """A graph node that runs one operator's planner and appends its children (ids fixed) to the queue. The `last`
    one of a generation advances the generation, or stops the search when no operator planned anything."""
    def node(state: SEAgentState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
        g = Generation.of(state, runtime, SEAgentConfig.of(state))
        specs, stop = planner(g)
        queue = [*state.get("queue", []), *(asdict(s) for s in specs)]
        update: dict[str, Any] = {"op_usage": g.usage, "op_log": g.log, "queue": queue}
        if stop or (last and not queue):
            return {**update, "stop_reason": stop or f"nothing left to evolve in generation {g.gen}", "queue": []}
        return {**update, "generation": g.gen} if last else update
    node.__name__ = planner.__name__
    node.__doc__ = planner.__doc__
    return node


def route_to(next_node: str) -> Callable[[SEAgentState], str]:
    """The edge after `assess` or an operator node: on to `next_node`, or to `select` once the search stops."""
    def route(state: SEAgentState) -> str:
        return "select" if state.get("stop_reason") else next_node
    route.__name__ = f"route_to_{next_node}"
    return route


def choose(records: list[AttemptRecord], scores: dict[str, dict[str, Any]]) -> AttemptRecord | None:
    """The returned attempt: highest selection reward; among equal rewards the greedy attempt (only
    `greedy_first` makes one), then the best refinement score, then a submitted one, then the cheaper one.
    Hidden-test results never enter the choice."""
    if not records:
        return None
    return max(records, key=lambda r: (r["reward"], r.get("operator") == GREEDY_OPERATOR,
                                       scores.get(r["attempt_id"], {}).get("score", -1.0),
                                       r["status"] == Status.SUBMITTED, -Usage.from_dict(r["usage"]).total_tokens))


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
    graph.add_node("assess", assess)
    graph.add_node("revise", operator_node(plan_revisions))
    graph.add_node("recombine", operator_node(plan_recombinations))
    graph.add_node("refine", operator_node(plan_refinements, last=True))
    graph.add_node("select", select)
    graph.add_edge(START, "seed")
    graph.add_edge("seed", "plan")
    graph.add_conditional_edges("plan", route_plan, ["attempt", "assess", "select"])
    graph.add_edge("attempt", "plan")
    for node, after in (("assess", "revise"), ("revise", "recombine"), ("recombine", "refine"), ("refine", "plan")):
        graph.add_conditional_edges(node, route_to(after), [after, "select"])
    graph.add_edge("select", END)
    return graph


def se_agent(ctx: SearchContext, config: SEAgentConfig | None = None, *, run_id: str | None = None,
             max_concurrency: int = 4, **options: Any) -> SearchResult:
    """Run SE-Agent evolution on `ctx.task` (options: `SEAgentConfig` fields); resumes the run `run_id` if it exists.

    Each generation plans `revisions` revised and `recombinations` recombined children of the elites; the
    search stops at the budget, after `generations`, at a perfect reward (`stop_on_perfect`) or when the
    best refinement score has not improved for `patience` generations.
    """
    resolved = SEAgentConfig.build(config, options, max_concurrency)
    return run_search(build_se_agent_graph, "se_agent", resolved, ctx, run_id=run_id, max_concurrency=max_concurrency)


register_strategy("se_agent", se_agent, SEAgentConfig)

__all__ = ["SEAgentConfig", "SEAgentState", "build_se_agent_graph", "choose", "se_agent"]
