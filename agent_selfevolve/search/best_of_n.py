"""Best-of-N: N independent attempts, fanned out in waves with `Send`, the best by selection reward kept.

The baseline every other strategy is compared with at equal budget. Waves (of `wave_size` attempts) let the
budget be checked between them, so the search stops cleanly with the best result so far.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.search.common import (
    GREEDY_OPERATOR,
    SearchContext,
    SearchResult,
    attempt_node,
    budget_reason,
    finish_result,
    new_attempt_id,
    run_search,
    sends,
)
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.registry import StrategyConfig, register_strategy


@dataclass(frozen=True)
class BestOfNConfig(StrategyConfig):
    n: int = 4
    wave_size: int | None = None
    """Attempts per wave (the budget is checked between waves); None: `max_concurrency`."""
    temperature: float | None = 0.7
    greedy_first: bool = False
    """The first attempt at temperature 0 (operator 'greedy'), the rest at `temperature`. The model's most likely
    attempt is then always a candidate and wins selection ties: on tasks one greedy attempt already solves, samples
    alone can all miss, and a proxy that cannot tell a right answer from a wrong one picks among them by chance."""
    stop_on_perfect: bool = False
    """Stop between waves once an attempt's selection reward is as high as it can be (every visible check passes).
    Off for comparisons at a fixed N; the quick start turns it on so solved tasks do not spend the rest of N."""

    def resolve(self, max_concurrency: int) -> BestOfNConfig:
        return replace(self, wave_size=self.wave_size or max_concurrency)


class BestOfNState(TypedDict, total=False):
    run_id: str
    task_id: str
    config: dict[str, Any]
    """`BestOfNConfig` as JSON."""
    planned: int
    attempts: Annotated[list[AttemptRecord], operator.add]
    stop_reason: str
    result: dict[str, Any]


def plan(state: BestOfNState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Decide the next wave (or none); ids are fixed here so a resume re-runs exactly the same attempts."""
    config, planned = BestOfNConfig.of(state), state.get("planned", 0)
    n = config.n
    reason = budget_reason(state, runtime.context)
    if reason:
        return {"stop_reason": f"budget: {reason}"}
    if planned >= n:
        return {"stop_reason": f"completed {n} attempts"}
    if config.stop_on_perfect and any(perfect(a) for a in state.get("attempts", [])):
        return {"stop_reason": f"a perfect selection reward after {planned} attempts"}
    return {"planned": min(n, planned + (config.wave_size or n))}


def perfect(record: AttemptRecord) -> bool:
    """The attempt's selection reward is the most it could be (1.0, or its ceiling when only some checks exist)."""
    ceiling = record.get("reward_ceiling")
    return record["reward"] >= (ceiling if ceiling else 1.0)


def route(state: BestOfNState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    config, done = BestOfNConfig.of(state), len(state.get("attempts", []))
    return sends([attempt_spec(state, config, i) for i in range(done, state["planned"])], state)


def attempt_spec(state: BestOfNState, config: BestOfNConfig, i: int) -> AttemptSpec:
    """Attempt `i` of the run; with `greedy_first`, attempt 0 is the greedy one."""
    if config.greedy_first and i == 0:
        operator_name, params = GREEDY_OPERATOR, {"temperature": 0.0}
    else:
        operator_name = "sample"
        params = {"temperature": config.temperature} if config.temperature is not None else {}
    return AttemptSpec(state["task_id"], attempt_id=f"{state['run_id']}:{operator_name}:{i}", run_id=state["run_id"],
                       operator=operator_name, model_params=params)


def select(state: BestOfNState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    return finish_result("best_of_n", state, runtime.context, state.get("stop_reason", ""),
                         writer=runtime.stream_writer)


def build_best_of_n_graph() -> StateGraph:
    graph = StateGraph(BestOfNState, context_schema=SearchContext)
    graph.add_node("plan", plan)
    graph.add_node("attempt", attempt_node)
    graph.add_node("select", select)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, ["attempt", "select"])
    graph.add_edge("attempt", "plan")
    graph.add_edge("select", END)
    return graph


def best_of_n(ctx: SearchContext, config: BestOfNConfig | None = None, *, run_id: str | None = None,
              max_concurrency: int = 4, **options: Any) -> SearchResult:
    """Run best-of-N on `ctx.task` (options: `BestOfNConfig` fields); resumes the run `run_id` if it exists."""
    resolved = BestOfNConfig.build(config, options, max_concurrency)
    return run_search(build_best_of_n_graph, "best_of_n", resolved, ctx, run_id=run_id,
                      max_concurrency=max_concurrency)


register_strategy("best_of_n", best_of_n, BestOfNConfig)

__all__ = ["BestOfNConfig", "best_of_n", "build_best_of_n_graph", "new_attempt_id"]
