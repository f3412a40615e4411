"""HGM tree search (Huxley-Gödel Machine, arXiv 2510.21614) as a LangGraph graph: plan -> Send wave -> plan ...

The tree's nodes are agent *variants*: `{"strategy", "guidance", "model_params"}` (plain JSON that goes into
the agent's first prompt and the model call) plus the node's evaluated attempts. Each planning step decides,
slot by slot for a wave of up to `wave_size` concurrent actions:

* expand or evaluate: UCB-Air, expand when N^alpha >= nodes - 1 + pending expansions, where N counts the
  evaluations allocated so far (finished plus planned in this wave);
* which node to expand: Thompson sampling on Beta(tau(1 + n_s^C), tau(1 + n_f^C)) (clade counts), with
  tau = B / max(1, B - N), B = `max_evals`; only nodes with at least one finished evaluation can be expanded
  (a diagnosis needs attempts to read), and none when the evaluations left all fit in the current wave (the
  child could never be evaluated);
* which node to evaluate: Thompson sampling on the node's own Beta(1 + s, 1 + f).

An *evaluation* is one independent attempt of a node's variant on `ctx.task` (a fresh sample at the variant's
temperature, optionally with its own `seed`): per-task search has one task, so "an unseen task" becomes "an
unseen sample". Its outcome enters the Beta counts fractionally (`counts="fractional"`, the default: s += r,
f += 1 - r for a reward r in [0, 1]), so a proxy reward that rarely reaches 1.0 still ranks variants; with
`counts="threshold"` success means reward >= `threshold`. A warning says when `threshold` (also the stop rule
of `stop_at_success` and the line between failed and other attempts) is above what the reward can reach. An
*expansion* is one operator LLM call (`ctx.op_model`) that diagnoses the parent's failed attempts from
`summarize_trajectory` summaries (proxy or judge reward only; an oracle run shows none) and writes the child's
variant; its usage goes into `op_usage`, so the search budget covers it. The final variant is the one with the
highest epsilon-quantile of Beta(1 + s, 1 + f); the answer is its best attempt by selection reward (with
`greedy_first`, the root's first evaluation is greedy and stays a candidate beside them, winning reward ties).

Ids (node ids, attempt ids) and the random generator of each decision (`decision_rng(seed, counter)`) are fixed
in checkpointed state before any work starts, so a run killed with `kill -9` resumes the same decisions and
re-runs only unfinished attempts.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.events import HGMExpanded
from agent_selfevolve.infra import emit
from agent_selfevolve.models.base import Usage
from agent_selfevolve.search.common import (
    GREEDY_OPERATOR,
    SearchContext,
    SearchResult,
    attempt_node,
    best_record,
    budget_reason,
    finish_result,
    run_search,
    sends,
)
from agent_selfevolve.search.hgm_diagnosis import DIAGNOSIS_SYSTEM, diagnosis_messages, parse_variant
from agent_selfevolve.search.hgm_math import (
    beta_quantile,
    clade_counts,
    cmp_all,
    decision_rng,
    final_selection,
    tau_schedule,
    thompson_evaluate,
    thompson_expand,
    ucb_air_should_expand,
)
from agent_selfevolve.search.records import AttemptRecord, HGMAction, HGMExpansion, HGMNode, Variant
from agent_selfevolve.search.registry import StrategyConfig, register_strategy
from agent_selfevolve.search.summary import VISIBLE_SOURCES, summarize_trajectory

ROOT = "n0"

@dataclass(frozen=True)
class HGMConfig(StrategyConfig):
    max_evals: int = 8
    """Evaluations (attempts) in all."""
    alpha: float = 0.6
    epsilon: float = 0.1
    threshold: float = 1.0
    counts: Literal["fractional", "threshold"] = "fractional"
    """'fractional' (s += r, f += 1 - r) or 'threshold' (success iff reward >= threshold)."""
    wave_size: int | None = None
    """Actions per wave; None: `max_concurrency`."""
    strategy: str = ""
    guidance: str = ""
    temperature: float | None = 0.7
    """`strategy`, `guidance` and `temperature` form the root variant."""
    seed: str | int | None = None
    """Fixes every random decision (None: the run id)."""
    max_summaries: int = 3
    seed_evaluations: bool = False
    stop_at_success: bool = False
    final_answer: Literal["variant", "any"] = "variant"
    """'any' returns the best attempt of the whole tree instead of the final variant's."""
    greedy_first: bool = False
    """The root's first evaluation runs at temperature 0 (operator 'greedy'), and the answer is chosen from the
    final variant's attempts and that greedy one, which wins reward ties: as for best-of-N's option of that name,
    the model's most likely attempt then stays a candidate wherever the tree goes."""

    def resolve(self, max_concurrency: int) -> HGMConfig:
        return replace(self, wave_size=self.wave_size or max_concurrency,
                       seed="" if self.seed is None else str(self.seed))

    def root_variant(self) -> Variant:
        params = {"temperature": self.temperature} if self.temperature is not None else {}
        return Variant(strategy=self.strategy, guidance=self.guidance, model_params=params)

    def report(self) -> dict[str, Any]:
        """The options a run's report lists."""
        return {"max_evals": self.max_evals, "alpha": self.alpha, "epsilon": self.epsilon,
                "threshold": self.threshold, "counts": self.counts, "wave_size": self.wave_size,
                "final_answer": self.final_answer, "greedy_first": self.greedy_first}


class HGMState(TypedDict, total=False):
    run_id: str
    task_id: str
    config: dict[str, Any]
    """`HGMConfig` as JSON."""
    warnings: list[str]
    nodes: dict[str, HGMNode]
    """The tree, written only by `plan`."""
    next_node: int
    evals_planned: int
    decisions: int
    pending: list[HGMAction]
    """This wave's actions."""
    decision_log: list[dict[str, Any]]
    attempts: Annotated[list[AttemptRecord], operator.add]
    expansions: Annotated[list[HGMExpansion], operator.add]
    op_usage: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    result: dict[str, Any]


def new_node(node_id: str, parent: str | None, variant: Variant, operator_name: str, depth: int,
             parent_ids: list[str] | None = None, diagnosis: str = "") -> HGMNode:
    return HGMNode(id=node_id, parent=parent, operator=operator_name, variant=variant, depth=depth,
                   parent_ids=list(parent_ids or []), diagnosis=diagnosis, children=[], attempt_ids=[], s=0, f=0)


def absorb(state: HGMState) -> dict[str, HGMNode]:
    """The tree with every finished expansion and attempt folded in: a new structure, idempotent.

    Own counts are recomputed from the node's own attempt records only, never from a child's.
    """
    nodes = copy.deepcopy(state.get("nodes") or {})
    config = HGMConfig.of(state)
    threshold, fractional = config.threshold, config.counts == "fractional"
    for exp in state.get("expansions", []):
        child, parent = exp["node"], exp["parent"]
        if child in nodes or parent not in nodes:
            continue
        nodes[child] = new_node(child, parent, exp["variant"], "expand", nodes[parent]["depth"] + 1,
                                exp.get("parent_ids"), exp.get("diagnosis", ""))
        if exp.get("error"):
            nodes[child]["error"] = exp["error"]
        nodes[parent]["children"].append(child)
    by_node: dict[str, list[AttemptRecord]] = {}
    for rec in state.get("attempts", []):
        by_node.setdefault(rec.get("node_id", ""), []).append(rec)
    for nid, node in nodes.items():
        recs = by_node.get(nid, [])
        node["attempt_ids"] = [r["attempt_id"] for r in recs]
        if fractional:
            node["s"] = round(sum(min(1.0, max(0.0, float(r["reward"]))) for r in recs), 6)
        else:
            node["s"] = sum(1 for r in recs if r["reward"] >= threshold)
        node["f"] = round(len(recs) - node["s"], 6)
    return nodes


def _evaluated(nodes: dict[str, HGMNode]) -> list[str]:
    return [nid for nid, n in nodes.items() if n["s"] + n["f"] > 0]


def unreachable_threshold(records: list[AttemptRecord], threshold: float) -> str | None:
    """A warning when no attempt so far could have reached `threshold` (a proxy with nothing to run tops out at
    its parse credit), so threshold successes and `stop_at_success` never happen; None otherwise."""
    known = [float(c) for c in (r.get("reward_ceiling", 1.0) for r in records) if c is not None]
    if not known or threshold <= max(known):
        return None
    ceiling = max(known)
    return (f"HGM threshold {threshold:g} is above the highest reward these attempts could reach ({ceiling:g}, "
            f"selection source '{records[0].get('reward_source', '')}'): no attempt can count as a success")


def plan(state: HGMState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Fold in the last wave, then decide the next one (or stop). Ids and random draws are fixed here."""
    config, nodes = HGMConfig.of(state), absorb(state)
    if not nodes:  # first call: the root variant
        nodes[ROOT] = new_node(ROOT, None, config.root_variant(), "root", 0)
    update: dict[str, Any] = {"nodes": nodes, "pending": []}
    threshold = config.threshold
    warning = unreachable_threshold(state.get("attempts", []), threshold)
    if warning and warning not in state.get("warnings", []):
        warnings.warn(warning, stacklevel=2)
        update["warnings"] = [*state.get("warnings", []), warning]
    max_evals, planned = config.max_evals, state.get("evals_planned", 0)
    reason = budget_reason(state, runtime.context)
    if reason:
        return {**update, "stop_reason": f"budget: {reason}"}
    if config.stop_at_success and any(r["reward"] >= threshold for r in state.get("attempts", [])):
        return {**update, "stop_reason": "an attempt reached the success threshold"}
    if planned >= max_evals:
        return {**update, "stop_reason": f"completed {max_evals} evaluations"}
    alpha, seed = config.alpha, str(config.seed or "") or state["run_id"]
    counter, next_node = state.get("decisions", 0), state.get("next_node", 1)
    expandable = _evaluated(nodes)
    actions: list[HGMAction] = []
    log = list(state.get("decision_log", []))
    pending_exp = 0
    wave_size = config.wave_size or 1  # a resolved config always sets it
    while len(actions) < wave_size and planned < max_evals:
        rng = decision_rng(seed, counter)
        # A child can only be evaluated in a later wave: skip expansions when this wave uses the last evaluations.
        later = max_evals - planned - (wave_size - len(actions) - 1) > 0
        if expandable and later and ucb_air_should_expand(planned, len(nodes), pending_exp, alpha):
            tau = tau_schedule(max_evals, planned)
            parent = thompson_expand(nodes, rng, tau, expandable)
            child = f"n{next_node}"
            next_node += 1
            pending_exp += 1
            actions.append(HGMAction(kind="expand", node=parent, child=child))
            log.append({"decision": counter, "kind": "expand", "node": parent, "child": child, "tau": tau,
                        "n_evals": planned})
        else:
            nid = thompson_evaluate(nodes, rng)
            attempt_id = f"{state['run_id']}:{nid}:e{planned}"
            planned += 1
            actions.append(HGMAction(kind="evaluate", node=nid, attempt_id=attempt_id))
            log.append({"decision": counter, "kind": "evaluate", "node": nid, "attempt_id": attempt_id})
        counter += 1
    return {**update, "pending": actions, "evals_planned": planned, "decisions": counter, "next_node": next_node,
            "decision_log": log}


def greedy_attempt_id(run_id: str) -> str:
    """The root's first evaluation: the greedy attempt when `greedy_first` is on."""
    return f"{run_id}:{ROOT}:e0"


def _eval_spec(state: HGMState, action: HGMAction) -> AttemptSpec:
    config, node = HGMConfig.of(state), state["nodes"][action["node"]]
    variant = node["variant"]
    params = dict(variant.get("model_params") or {})
    operator_name = "root" if node["id"] == ROOT else "evaluate"
    if config.greedy_first and action["attempt_id"] == greedy_attempt_id(state["run_id"]):
        params, operator_name = {**params, "temperature": 0.0}, GREEDY_OPERATOR
    elif config.seed_evaluations:
        params["seed"] = int(action["attempt_id"].rsplit(":e", 1)[-1])
    return AttemptSpec(state["task_id"], attempt_id=action["attempt_id"], run_id=state["run_id"],
                       guidance=variant.get("guidance", ""), strategy=variant.get("strategy", ""),
                       operator=operator_name, parent_ids=list(node["parent_ids"]), node_id=node["id"],
                       model_params=params)


def route(state: HGMState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    actions = state.get("pending", [])
    out = sends([_eval_spec(state, a) for a in actions if a["kind"] == "evaluate"], state)
    config = HGMConfig.of(state)
    threshold, limit = config.threshold, config.max_summaries
    records = {r["attempt_id"]: r for r in state.get("attempts", [])}
    for a in actions:
        if a["kind"] != "expand":
            continue
        parent = state["nodes"][a["node"]]
        recs = [records[i] for i in parent["attempt_ids"] if i in records]
        failed = [r for r in recs if r["reward"] < threshold]
        chosen = (failed or recs)[-limit:]
        scored = all(r.get("reward_source") in VISIBLE_SOURCES for r in chosen)  # an oracle run says nothing
        out.append(Send("expand", {"run_id": state["run_id"], "parent": parent["id"], "child": a["child"],
                                   "variant": parent["variant"], "diagnosis": parent.get("diagnosis", ""),
                                   "attempt_ids": [r["attempt_id"] for r in chosen],
                                   "all_failed": bool(failed) if scored else None, "threshold": threshold}))
    return out


def expand_node(payload: dict[str, Any], runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """One expansion: diagnose the parent's attempts with the operator model and write the child's variant.

    An operator failure still creates the child (the parent's variant, noted), so the tree always grows and
    UCB-Air cannot keep asking for the same expansion.
    """
    ctx = runtime.context
    summaries = []
    for aid in payload["attempt_ids"]:
        traj = ctx.store.get(aid)
        if traj is not None:
            summaries.append(summarize_trajectory(traj, limit=2500))
    messages = diagnosis_messages(ctx.task.problem_statement, payload["variant"], summaries,
                                  payload.get("diagnosis", ""), payload.get("all_failed"))
    usage = Usage()
    try:
        reply = ctx.op_model.chat(messages)
        usage = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.cost,
                      max(1, reply.usage.calls))
        variant, diagnosis = parse_variant(reply.message.get("content") or "", payload["variant"])
        result = HGMExpansion(node=payload["child"], parent=payload["parent"],
                              parent_ids=list(payload["attempt_ids"]), variant=variant, diagnosis=diagnosis)
    except Exception as exc:  # the search goes on with an unchanged child
        result = HGMExpansion(node=payload["child"], parent=payload["parent"],
                              parent_ids=list(payload["attempt_ids"]), variant=copy.deepcopy(payload["variant"]),
                              diagnosis="", error=f"{type(exc).__name__}: {exc}"[:500])
    event = HGMExpanded(event="hgm_expanded", task_id=ctx.task.instance_id, run_id=payload["run_id"],
                        parent=payload["parent"], node=payload["child"], error=result.get("error", ""))
    emit(dict(event), runtime.stream_writer, ctx.on_event)
    return {"expansions": [result], "op_usage": [usage.to_dict()]}


def tree_view(nodes: dict[str, HGMNode], epsilon: float) -> dict[str, dict[str, Any]]:
    """The tree for reports and visualisation: each node with clade counts, CMP and its final-selection score."""
    clade, cmps = clade_counts(nodes), cmp_all(nodes)
    out = {}
    for nid, n in nodes.items():
        out[nid] = {**copy.deepcopy(n), "clade_s": clade[nid][0], "clade_f": clade[nid][1], "cmp": cmps[nid],
                    "quantile": beta_quantile(epsilon, 1.0 + n["s"], 1.0 + n["f"]) if n["s"] + n["f"] else None}
    return out


def select(state: HGMState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Pick the final variant (epsilon-quantile) and its best attempt; report the tree with CMP values."""
    ctx, config = runtime.context, HGMConfig.of(state)
    nodes = absorb(state)
    epsilon = config.epsilon
    records = state.get("attempts", [])
    final = final_selection(nodes, epsilon)
    best_any = best_record(records)
    if config.final_answer == "any" or final is None:
        best = best_any
    else:
        greedy = greedy_attempt_id(state["run_id"]) if config.greedy_first else None
        best = best_record([r for r in records if r.get("node_id") == final or r["attempt_id"] == greedy])
    extra = {"final_node": final, "root": ROOT, "tree": tree_view(nodes, epsilon),
             "evaluations": len(records), "expansions": len(nodes) - 1,
             "best_any_attempt_id": best_any["attempt_id"] if best_any else None,
             "best_any_reward": best_any["reward"] if best_any else 0.0,
             "params": config.report(),
             "warnings": state.get("warnings", []),  # plan checked the threshold after every wave
             "decisions": state.get("decision_log", [])}
    out = finish_result("hgm", state, ctx, state.get("stop_reason", ""), extra, best=best,
                        writer=runtime.stream_writer)
    return {**out, "nodes": nodes}


def build_hgm_graph() -> StateGraph:
    graph = StateGraph(HGMState, context_schema=SearchContext)
    graph.add_node("plan", plan)
    graph.add_node("attempt", attempt_node)
    graph.add_node("expand", expand_node)
    graph.add_node("select", select)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", route, ["attempt", "expand", "select"])
    graph.add_edge("attempt", "plan")
    graph.add_edge("expand", "plan")
    graph.add_edge("select", END)
    return graph


def hgm(ctx: SearchContext, config: HGMConfig | None = None, *, run_id: str | None = None, max_concurrency: int = 4,
        **options: Any) -> SearchResult:
    """Run HGM on `ctx.task` with at most `max_evals` evaluations (attempts), options as `HGMConfig` fields;
    resumes the run `run_id` if it exists.

    `strategy`/`guidance`/`temperature` form the root variant. `seed` (default: the run id) fixes every random
    decision. `final_answer="any"` returns the best attempt of the whole tree instead of the final variant's.
    `counts` says how an attempt's reward enters the Beta counts (see the module docstring).
    """
    resolved = HGMConfig.build(config, options, max_concurrency)
    if resolved.threshold > 1.0:
        warnings.warn(f"HGM threshold {resolved.threshold:g} is above 1.0, the most any reward reaches", stacklevel=2)
    return run_search(build_hgm_graph, "hgm", resolved, ctx, run_id=run_id, max_concurrency=max_concurrency)


register_strategy("hgm", hgm, HGMConfig)

__all__ = ["DIAGNOSIS_SYSTEM", "HGMConfig", "HGMState", "absorb", "build_hgm_graph", "diagnosis_messages", "hgm",
           "parse_variant", "tree_view"]
