"""Tree search over agent steps (MCTS in the manner of LATS and SWE-Search), the fourth strategy.

A tree node is an agent *state*: the actions taken so far. Expanding a node runs `children` attempts that
replay the node's actions in fresh sandboxes (`AttemptSpec.replay`: no model calls, the tools re-execute) and
then let the model take up to `step_chunk` more steps at a sampling temperature. Each child gets a value:
- an attempt that ended (submitted, or stopped by format errors, the step limit or a crash) is worth its
  selection reward (proxy, judge, or in an oracle run the hidden tests);
- an unfinished one (status 'unfinished': stopped at its chunk cap, never graded by the hidden tests) is judged
  by a value model, SWE-Search's hybrid value: a number (0-100) for the search and an explanation that is
  passed to that node's own children as guidance (the qualitative half). Its prompt shows a proxy or judge
  reward at most, never a hidden verdict.
Selection descends by UCT, values are backed up to the root, and the best attempt by selection reward is the
answer. Every child is a stored attempt whose parent is the node it branched from, so siblings share a
prefix: exactly the pairs the DPO and recovery rows of the trainer want.

The tree is plain JSON in the graph state and the child ids are fixed when planned, so a run resumed after
`kill -9` re-runs only the unfinished expansion.
"""

from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.events import MCTSNodeValued
from agent_selfevolve.infra import emit, parse_json_object
from agent_selfevolve.search.common import (
    SearchContext,
    SearchResult,
    attempt_node,
    budget_reason,
    finish_result,
    run_search,
    sends,
)
from agent_selfevolve.search.operators import call_operator
from agent_selfevolve.search.records import AttemptRecord, MCTSNode
from agent_selfevolve.search.registry import StrategyConfig, register_strategy
from agent_selfevolve.search.summary import summarize_trajectory
from agent_selfevolve.trajectory import Status, Trajectory

VALUE_FORMAT = ('{"value": <0-100: how likely this attempt, continued, ends in a correct solution>, '
                '"explanation": "<what is right or wrong so far, and the next step to take, two or three sentences>"}')
NEUTRAL_VALUE = 0.5


@dataclass(frozen=True)
class MCTSConfig(StrategyConfig):
    max_iterations: int = 8
    """Expansions, each of `children` attempts."""
    children: int = 2
    step_chunk: int = 2
    """Steps each child takes beyond its parent (up to `ctx.limits.max_steps`)."""
    c_uct: float = 1.0
    temperature: float | None = 0.7
    stop_at_success: bool = True
    """Stop at the first reward of 1.0."""


class MCTSState(TypedDict, total=False):
    run_id: str
    task_id: str
    config: dict[str, Any]
    """`MCTSConfig` as JSON."""
    tree: dict[str, MCTSNode]
    iteration: int
    expanding: str
    """The node whose children the current iteration runs."""
    planned: list[dict[str, Any]]
    """Its children's AttemptSpecs (as dicts), fixed when planned so a resume runs exactly these."""
    attempts: Annotated[list[AttemptRecord], operator.add]
    op_usage: Annotated[list[dict[str, Any]], operator.add]
    value_fallbacks: int
    stop_reason: str
    result: dict[str, Any]


def new_node(node_id: str = "n0", parent: str | None = None, attempt_id: str | None = None) -> MCTSNode:
    return MCTSNode(id=node_id, parent=parent, attempt_id=attempt_id, steps=0, terminal=False, closed=False,
                    visits=0, value_sum=0.0, value=None, feedback="", children=[])


def uct(child: MCTSNode, parent_visits: int, c: float) -> float:
    """Mean backed-up value plus the exploration bonus; an unvisited child comes first."""
    if child["visits"] == 0:
        return math.inf
    return child["value_sum"] / child["visits"] + c * math.sqrt(math.log(max(1, parent_visits)) / child["visits"])


def select_leaf(tree: dict[str, MCTSNode], c: float) -> str | None:
    """Descend from the root by UCT through expanded nodes to an open leaf; None when every path is closed."""
    node = tree["n0"]
    while node["children"]:
        open_children = [tree[k] for k in node["children"] if not tree[k]["closed"]]
        if not open_children:
            return None
        node = max(open_children, key=lambda ch: (uct(ch, node["visits"], c), -int(ch["id"][1:])))
    return None if node["closed"] else node["id"]


def close_upwards(tree: dict[str, MCTSNode], node_id: str | None) -> None:
    """A node is closed when it is terminal, or expanded with every child closed: selection skips it."""
    while node_id is not None:
        node = tree[node_id]
        if not (node["terminal"] or (node["children"] and all(tree[k]["closed"] for k in node["children"]))):
            return
        node["closed"] = True
        node_id = node["parent"]


def backup(tree: dict[str, MCTSNode], node_id: str | None, value: float) -> None:
    while node_id is not None:
        tree[node_id]["visits"] += 1
        tree[node_id]["value_sum"] += value
        node_id = tree[node_id]["parent"]


def plan(state: MCTSState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Stop, or pick the leaf to expand (UCT) and fix its children's ids."""
    ctx, config = runtime.context, MCTSConfig.of(state)
    tree = state.get("tree") or {"n0": new_node()}
    reason = budget_reason(state, ctx)
    if reason:
        return {"tree": tree, "stop_reason": f"budget: {reason}"}
    if state.get("iteration", 0) >= config.max_iterations:
        return {"tree": tree, "stop_reason": f"completed {config.max_iterations} expansions"}
    if config.stop_at_success and any(r["reward"] >= 1.0 for r in state.get("attempts", [])):
        return {"tree": tree, "stop_reason": "an attempt reached reward 1.0"}
    leaf = select_leaf(tree, config.c_uct)
    if leaf is None:
        return {"tree": tree, "stop_reason": "every branch ended"}
    tree = {k: MCTSNode(**v) for k, v in tree.items()}
    first = len(tree)
    kids = [f"n{first + i}" for i in range(config.children)]
    for kid in kids:
        tree[kid] = new_node(kid, leaf, f"{state['run_id']}:mcts:{kid}")
    node = tree[leaf]
    node["children"] = list(node["children"]) + kids
    parent = ctx.store.get(node["attempt_id"]) if node["attempt_id"] else None
    replay = [m for m in parent.messages if m.get("role") == "assistant"] if parent else []
    params = {"temperature": config.temperature} if config.temperature is not None else {}
    specs = [asdict(AttemptSpec(state["task_id"], attempt_id=tree[kid]["attempt_id"], run_id=state["run_id"],
                                operator="mcts", node_id=kid, parent_ids=[node["attempt_id"]] if parent else [],
                                guidance=node["feedback"], model_params=params, replay=replay,
                                max_steps=node["steps"] + config.step_chunk)) for kid in kids]
    return {"tree": tree, "expanding": leaf, "planned": specs, "iteration": state.get("iteration", 0) + 1}


def route(state: MCTSState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "finish"
    done = {r["attempt_id"] for r in state.get("attempts", [])}
    specs = [AttemptSpec(**spec) for spec in state.get("planned", []) if spec["attempt_id"] not in done]
    return sends(specs, state) if specs else "evaluate"


def _actions(traj: Trajectory) -> int:
    return sum(1 for s in traj.step_records() if s.action)


def evaluate(state: MCTSState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Value the new children (reward if ended, value model if not), back the values up, close dead ends."""
    ctx = runtime.context
    tree = {k: MCTSNode(**v) for k, v in state["tree"].items()}
    records = {r["attempt_id"]: r for r in state.get("attempts", [])}
    usage: list[dict[str, Any]] = []
    fallbacks = state.get("value_fallbacks", 0)
    for kid in tree[state["expanding"]]["children"]:
        node = tree[kid]
        if node["visits"]:
            continue  # valued before a resume
        traj, rec = ctx.store.get(node["attempt_id"]), records.get(node["attempt_id"])
        node["steps"] = _actions(traj) if traj else 0
        node["terminal"] = traj is None or traj.status != Status.UNFINISHED
        if node["terminal"]:
            node["value"] = float(rec["reward"]) if rec else 0.0
        else:
            value, feedback, used, ok = value_of(ctx, traj)
            node.update(value=value, feedback=feedback)
            usage.append(used)
            fallbacks += not ok
        backup(tree, kid, node["value"])
        close_upwards(tree, kid)
        event = MCTSNodeValued(event="mcts_node", task_id=ctx.task.instance_id, run_id=state["run_id"], node=kid,
                               parent=node["parent"], value=node["value"], terminal=node["terminal"])
        emit(dict(event), runtime.stream_writer, ctx.on_event)
    return {"tree": tree, "op_usage": usage, "value_fallbacks": fallbacks}


def value_of(ctx: SearchContext, traj: Trajectory) -> tuple[float, str, dict[str, Any], bool]:
    """(value in 0..1, explanation, usage, parsed?) from the value model; a bad reply is worth NEUTRAL_VALUE."""
    user = (f"<issue>\n{ctx.task.problem_statement}\n</issue>\n\nThe attempt so far (unfinished):\n"
            f"{summarize_trajectory(traj, limit=2500)}\n\nReply with one JSON object in a ```json block:\n"
            f"{VALUE_FORMAT}")
    call = call_operator(ctx.op_model, "value", user)
    data = parse_json_object(call.text) if not call.error else None
    raw = data.get("value") if data else None
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        return NEUTRAL_VALUE, "", call.usage, False
    return min(1.0, max(0.0, float(raw) / 100.0)), str(data.get("explanation", ""))[:1000], call.usage, True


def finish(state: MCTSState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    tree = state.get("tree", {})
    extra = {"tree": tree, "iterations": state.get("iteration", 0),
             "value_calls": len(state.get("op_usage", [])), "value_fallbacks": state.get("value_fallbacks", 0)}
    return finish_result("mcts", state, runtime.context, state.get("stop_reason", ""), extra=extra,
                         writer=runtime.stream_writer)


def build_mcts_graph() -> StateGraph:
    graph = StateGraph(MCTSState, context_schema=SearchContext)
    graph.add_node("plan", plan)
    graph.add_node("attempt", attempt_node)
    graph.add_node("evaluate", evaluate)
    graph.add_node("finish", finish)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, ["attempt", "evaluate", "finish"])
    graph.add_edge("attempt", "evaluate")
    graph.add_edge("evaluate", "plan")
    graph.add_edge("finish", END)
    return graph


def mcts(ctx: SearchContext, config: MCTSConfig | None = None, *, run_id: str | None = None, max_concurrency: int = 4,
         **options: Any) -> SearchResult:
    """Run the step-level tree search on `ctx.task` (options: `MCTSConfig` fields); resumes the run `run_id` if it
    exists.

    `max_iterations` expansions of `children` attempts each, every child `step_chunk` steps deeper than its
    parent (up to `ctx.limits.max_steps`). Stops at the budget, at the first reward of 1.0 (`stop_at_success`),
    or when every branch has ended.
    """
    resolved = MCTSConfig.build(config, options, max_concurrency)
    return run_search(build_mcts_graph, "mcts", resolved, ctx, run_id=run_id, max_concurrency=max_concurrency)


register_strategy("mcts", mcts, MCTSConfig)
