"""Best-of-N: N independent attempts, fanned out in waves with `Send`, the best by selection reward kept.

The baseline every other strategy is compared with at equal budget. Waves (of `wave_size` attempts) let the
budget be checked between them, so the search stops cleanly with the best result so far.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.search.common import (
    SearchContext,
    SearchResult,
    attempt_node,
    budget_reason,
    finish_result,
    new_attempt_id,
    run_search,
    sends,
)


class BestOfNState(TypedDict, total=False):
    run_id: str
    task_id: str
    n: int
    wave_size: int
    temperature: float
    planned: int
    attempts: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    result: dict[str, Any]


def plan(state: BestOfNState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Decide the next wave (or none); ids are fixed here so a resume re-runs exactly the same attempts."""
    n, planned = state.get("n", 4), state.get("planned", 0)
    reason = budget_reason(state, runtime.context)
    if reason:
        return {"stop_reason": f"budget: {reason}"}
    if planned >= n:
        return {"stop_reason": f"completed {n} attempts"}
    return {"planned": min(n, planned + state.get("wave_size", n))}


def route(state: BestOfNState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    done = len(state.get("attempts", []))
    params = {"temperature": state["temperature"]} if state.get("temperature") is not None else {}
    specs = [AttemptSpec(state["task_id"], attempt_id=f"{state['run_id']}:sample:{i}", run_id=state["run_id"],
                         operator="sample", model_params=params) for i in range(done, state["planned"])]
    return sends(specs, state)


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


def best_of_n(ctx: SearchContext, n: int = 4, wave_size: int | None = None, temperature: float | None = 0.7,
              run_id: str | None = None, max_concurrency: int = 4) -> SearchResult:
    """Run best-of-N on `ctx.task`; resumes the run `run_id` if it exists."""
    inputs = {"n": n, "wave_size": wave_size or max_concurrency, "temperature": temperature}
    return run_search(build_best_of_n_graph, "best_of_n", inputs, ctx, run_id=run_id, max_concurrency=max_concurrency)


__all__ = ["best_of_n", "build_best_of_n_graph", "new_attempt_id"]
