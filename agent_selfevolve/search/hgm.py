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
highest epsilon-quantile of Beta(1 + s, 1 + f); the answer is its best attempt by selection reward.

Ids (node ids, attempt ids) and the random generator of each decision (`decision_rng(seed, counter)`) are fixed
in checkpointed state before any work starts, so a run killed with `kill -9` resumes the same decisions and
re-runs only unfinished attempts.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.infra import emit, parse_json_object
from agent_selfevolve.models.base import Message, Usage
from agent_selfevolve.search.common import (
    SearchContext,
    SearchResult,
    attempt_node,
    best_record,
    budget_reason,
    finish_result,
    run_search,
    sends,
)
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
from agent_selfevolve.search.summary import VISIBLE_SOURCES, head_tail, summarize_trajectory

ROOT = "n0"

DIAGNOSIS_SYSTEM = """You improve a software-engineering agent by changing its configuration, not its code. \
The agent gets an issue and a repository, and its first prompt holds an *approach* (strategy) and *guidance* \
text that you control. You see summaries of its attempts at the issue and how each one scored. Diagnose why \
they failed, then write a new strategy and guidance that avoid those failures: concrete, actionable, short."""

DIAGNOSIS_FORMAT = """Reply with one JSON object in a ```json block:
{"diagnosis": "<why the attempts failed>", "strategy": "<approach, one or two sentences>",
 "guidance": "<advice for the next attempts, at most 10 lines>", "temperature": <number 0..1.2, optional>}"""


class HGMState(TypedDict, total=False):
    run_id: str
    task_id: str
    max_evals: int
    alpha: float
    epsilon: float
    threshold: float
    counts: str
    """'fractional' (s += r, f += 1 - r) or 'threshold' (success iff reward >= threshold)."""
    warnings: list[str]
    wave_size: int
    seed: str
    root_variant: dict[str, Any]
    max_summaries: int
    seed_evaluations: bool
    stop_at_success: bool
    final_answer: str
    nodes: dict[str, dict[str, Any]]
    """The tree, written only by `plan`: {id: {id, parent, operator, variant, parent_ids, diagnosis, children,
    attempt_ids, s, f, depth}}; `s`/`f` are the node's own (possibly fractional) outcomes, recomputed from
    `attempts`."""
    next_node: int
    evals_planned: int
    decisions: int
    pending: list[dict[str, Any]]
    """This wave's actions: {"kind": "evaluate", node, attempt_id} or {"kind": "expand", node (parent), child}."""
    decision_log: list[dict[str, Any]]
    attempts: Annotated[list[dict[str, Any]], operator.add]
    expansions: Annotated[list[dict[str, Any]], operator.add]
    op_usage: Annotated[list[dict[str, Any]], operator.add]
    stop_reason: str
    result: dict[str, Any]


def new_node(node_id: str, parent: str | None, variant: dict[str, Any], operator_name: str, depth: int,
             parent_ids: list[str] | None = None, diagnosis: str = "") -> dict[str, Any]:
    return {"id": node_id, "parent": parent, "operator": operator_name, "variant": variant, "depth": depth,
            "parent_ids": list(parent_ids or []), "diagnosis": diagnosis, "children": [], "attempt_ids": [],
            "s": 0, "f": 0}


def absorb(state: HGMState) -> dict[str, dict[str, Any]]:
    """The tree with every finished expansion and attempt folded in: a new structure, idempotent.

    Own counts are recomputed from the node's own attempt records only, never from a child's.
    """
    nodes = copy.deepcopy(state.get("nodes") or {})
    threshold, fractional = state.get("threshold", 1.0), state.get("counts", "fractional") == "fractional"
    for exp in state.get("expansions", []):
        child, parent = exp["node"], exp["parent"]
        if child in nodes or parent not in nodes:
            continue
        nodes[child] = new_node(child, parent, exp["variant"], "expand", nodes[parent]["depth"] + 1,
                                exp.get("parent_ids"), exp.get("diagnosis", ""))
        if exp.get("error"):
            nodes[child]["error"] = exp["error"]
        nodes[parent]["children"].append(child)
    by_node: dict[str, list[dict[str, Any]]] = {}
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


def _evaluated(nodes: dict[str, dict[str, Any]]) -> list[str]:
    return [nid for nid, n in nodes.items() if n["s"] + n["f"] > 0]


def unreachable_threshold(records: list[dict[str, Any]], threshold: float) -> str | None:
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
    nodes = absorb(state)
    if not nodes:  # first call: the root variant
        nodes[ROOT] = new_node(ROOT, None, dict(state.get("root_variant") or {}), "root", 0)
    update: dict[str, Any] = {"nodes": nodes, "pending": []}
    warning = unreachable_threshold(state.get("attempts", []), state.get("threshold", 1.0))
    if warning and warning not in state.get("warnings", []):
        warnings.warn(warning, stacklevel=2)
        update["warnings"] = [*state.get("warnings", []), warning]
    max_evals, planned = state.get("max_evals", 8), state.get("evals_planned", 0)
    reason = budget_reason(state, runtime.context)
    if reason:
        return {**update, "stop_reason": f"budget: {reason}"}
    threshold = state.get("threshold", 1.0)
    if state.get("stop_at_success") and any(r["reward"] >= threshold for r in state.get("attempts", [])):
        return {**update, "stop_reason": "an attempt reached the success threshold"}
    if planned >= max_evals:
        return {**update, "stop_reason": f"completed {max_evals} evaluations"}
    alpha, seed = state.get("alpha", 0.6), state.get("seed") or state["run_id"]
    counter, next_node = state.get("decisions", 0), state.get("next_node", 1)
    expandable = _evaluated(nodes)
    actions: list[dict[str, Any]] = []
    log = list(state.get("decision_log", []))
    pending_exp = 0
    wave_size = state.get("wave_size", 4)
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
            actions.append({"kind": "expand", "node": parent, "child": child})
            log.append({"decision": counter, "kind": "expand", "node": parent, "child": child, "tau": tau,
                        "n_evals": planned})
        else:
            nid = thompson_evaluate(nodes, rng)
            attempt_id = f"{state['run_id']}:{nid}:e{planned}"
            planned += 1
            actions.append({"kind": "evaluate", "node": nid, "attempt_id": attempt_id})
            log.append({"decision": counter, "kind": "evaluate", "node": nid, "attempt_id": attempt_id})
        counter += 1
    return {**update, "pending": actions, "evals_planned": planned, "decisions": counter, "next_node": next_node,
            "decision_log": log}


def _eval_spec(state: HGMState, action: dict[str, Any]) -> AttemptSpec:
    node = state["nodes"][action["node"]]
    variant = node["variant"]
    params = dict(variant.get("model_params") or {})
    if state.get("seed_evaluations"):
        params["seed"] = int(action["attempt_id"].rsplit(":e", 1)[-1])
    return AttemptSpec(state["task_id"], attempt_id=action["attempt_id"], run_id=state["run_id"],
                       guidance=variant.get("guidance", ""), strategy=variant.get("strategy", ""),
                       operator="root" if node["id"] == ROOT else "evaluate", parent_ids=list(node["parent_ids"]),
                       node_id=node["id"], model_params=params)


def route(state: HGMState) -> list[Send] | str:
    if state.get("stop_reason"):
        return "select"
    actions = state.get("pending", [])
    out = sends([_eval_spec(state, a) for a in actions if a["kind"] == "evaluate"], state)
    threshold, limit = state.get("threshold", 1.0), state.get("max_summaries", 3)
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


def diagnosis_messages(problem: str, variant: dict[str, Any], summaries: list[str], previous_diagnosis: str,
                       all_failed: bool | None) -> list[Message]:
    """The operator prompt: the public issue, the parent's variant and its attempt summaries; no hidden tests.

    `all_failed=None` (an oracle run: failure would be a hidden-test verdict) labels the attempts neutrally."""
    params = variant.get("model_params") or {}
    parts = [f"<issue>\n{head_tail(problem, 4000)}\n</issue>",
             "Current agent configuration:\n"
             f"strategy: {variant.get('strategy') or '(none)'}\nguidance: {variant.get('guidance') or '(none)'}\n"
             f"temperature: {params.get('temperature', 'default')}"]
    if previous_diagnosis:
        parts.append(f"Diagnosis that produced this configuration:\n{previous_diagnosis}")
    label = ("Attempts" if all_failed is None else "Failed attempts" if all_failed
             else "Attempts (none failed; make the agent more reliable)")
    parts.append(f"{label} with this configuration:\n\n" + "\n\n".join(summaries or ["(no summaries available)"]))
    parts.append(DIAGNOSIS_FORMAT)
    return [{"role": "system", "content": DIAGNOSIS_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_variant(text: str, parent: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(child variant, diagnosis) from the operator's reply; fields it leaves out are inherited.

    A reply that is not JSON becomes the child's guidance, so a chatty operator still changes something.
    """
    data = parse_json_object(text)
    params = dict(parent.get("model_params") or {})
    if not isinstance(data, dict):
        guidance = text.strip()[:2000]
        return {"strategy": parent.get("strategy", ""), "guidance": guidance or parent.get("guidance", ""),
                "model_params": params}, guidance
    temp = data.get("temperature")
    if isinstance(temp, int | float) and not isinstance(temp, bool):
        params["temperature"] = round(min(1.2, max(0.0, float(temp))), 3)
    variant = {"strategy": str(data.get("strategy") or parent.get("strategy", ""))[:1000],
               "guidance": str(data.get("guidance") or parent.get("guidance", ""))[:2000], "model_params": params}
    return variant, str(data.get("diagnosis", ""))[:2000]


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
    result: dict[str, Any] = {"node": payload["child"], "parent": payload["parent"],
                              "parent_ids": list(payload["attempt_ids"])}
    usage = Usage()
    try:
        reply = ctx.op_model.chat(messages)
        usage = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.cost,
                      max(1, reply.usage.calls))
        variant, diagnosis = parse_variant(reply.message.get("content") or "", payload["variant"])
        result.update(variant=variant, diagnosis=diagnosis)
    except Exception as exc:  # the search goes on with an unchanged child
        result.update(variant=copy.deepcopy(payload["variant"]), diagnosis="",
                      error=f"{type(exc).__name__}: {exc}"[:500])
    event = {"event": "hgm_expanded", "task_id": ctx.task.instance_id, "run_id": payload["run_id"],
             "parent": payload["parent"], "node": payload["child"], "error": result.get("error", "")}
    emit(event, runtime.stream_writer, ctx.on_event)
    return {"expansions": [result], "op_usage": [usage.to_dict()]}


def tree_view(nodes: dict[str, dict[str, Any]], epsilon: float) -> dict[str, dict[str, Any]]:
    """The tree for reports and visualisation: each node with clade counts, CMP and its final-selection score."""
    clade, cmps = clade_counts(nodes), cmp_all(nodes)
    out = {}
    for nid, n in nodes.items():
        out[nid] = {**copy.deepcopy(n), "clade_s": clade[nid][0], "clade_f": clade[nid][1], "cmp": cmps[nid],
                    "quantile": beta_quantile(epsilon, 1.0 + n["s"], 1.0 + n["f"]) if n["s"] + n["f"] else None}
    return out


def select(state: HGMState, runtime: Runtime[SearchContext]) -> dict[str, Any]:
    """Pick the final variant (epsilon-quantile) and its best attempt; report the tree with CMP values."""
    ctx = runtime.context
    nodes = absorb(state)
    epsilon = state.get("epsilon", 0.1)
    records = state.get("attempts", [])
    final = final_selection(nodes, epsilon)
    best_any = best_record(records)
    if state.get("final_answer", "variant") == "any" or final is None:
        best = best_any
    else:
        best = best_record([r for r in records if r.get("node_id") == final])
    extra = {"final_node": final, "root": ROOT, "tree": tree_view(nodes, epsilon),
             "evaluations": len(records), "expansions": len(nodes) - 1,
             "best_any_attempt_id": best_any["attempt_id"] if best_any else None,
             "best_any_reward": best_any["reward"] if best_any else 0.0,
             "params": {k: state.get(k) for k in ("max_evals", "alpha", "epsilon", "threshold", "counts",
                                                  "wave_size", "final_answer")},
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


def hgm(ctx: SearchContext, max_evals: int = 8, alpha: float = 0.6, epsilon: float = 0.1, threshold: float = 1.0,
        wave_size: int | None = None, strategy: str = "", guidance: str = "", temperature: float | None = 0.7,
        seed: str | int | None = None, max_summaries: int = 3, seed_evaluations: bool = False,
        stop_at_success: bool = False, final_answer: Literal["variant", "any"] = "variant",
        run_id: str | None = None, max_concurrency: int = 4,
        counts: Literal["fractional", "threshold"] = "fractional") -> SearchResult:
    """Run HGM on `ctx.task` with at most `max_evals` evaluations (attempts); resumes the run `run_id` if it exists.

    `strategy`/`guidance`/`temperature` form the root variant. `seed` (default: the run id) fixes every random
    decision. `final_answer="any"` returns the best attempt of the whole tree instead of the final variant's.
    `counts` says how an attempt's reward enters the Beta counts (see the module docstring).
    """
    if threshold > 1.0:
        warnings.warn(f"HGM threshold {threshold:g} is above 1.0, the most any reward reaches", stacklevel=2)
    root = {"strategy": strategy, "guidance": guidance,
            "model_params": {"temperature": temperature} if temperature is not None else {}}
    inputs = {"max_evals": max_evals, "alpha": alpha, "epsilon": epsilon, "threshold": threshold, "counts": counts,
              "wave_size": wave_size or max_concurrency, "root_variant": root,
              "seed": "" if seed is None else str(seed), "max_summaries": max_summaries,
              "seed_evaluations": seed_evaluations, "stop_at_success": stop_at_success, "final_answer": final_answer}
    return run_search(build_hgm_graph, "hgm", inputs, ctx, run_id=run_id, max_concurrency=max_concurrency)


__all__ = ["HGMState", "absorb", "build_hgm_graph", "diagnosis_messages", "hgm", "parse_variant", "tree_view"]
