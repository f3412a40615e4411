"""SE-Agent's evolve step (revision and recombination) and the helpers its nodes share.

Kept apart from the graph wiring in `se_agent.py`; every function here reads only this run's and this task's
attempts, and shows an operator a reward only when its source hides nothing (`summary.VISIBLE_SOURCES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.events import OperatorEvent
from agent_selfevolve.infra import emit
from agent_selfevolve.search.common import SearchContext, budget_reason
from agent_selfevolve.search.operators import (
    RECOMBINATION_MODES,
    OperatorCall,
    best_pairs,
    call_operator,
    fallback_recombination,
    fallback_revision,
    insights_text,
    parse_plan,
    recombination_prompt,
    revision_prompt,
    select_diverse,
    trajectory_features,
)
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.summary import VISIBLE_SOURCES, reward_text, summarize_trajectory
from agent_selfevolve.trajectory import Trajectory

if TYPE_CHECKING:
    from agent_selfevolve.search.se_agent import SEAgentConfig, SEAgentState


def population(state: SEAgentState, ctx: SearchContext) -> dict[str, Trajectory]:
    """This run's and this task's attempts only (never another run's or task's history)."""
    ids = {r["attempt_id"] for r in state.get("attempts", [])}
    trajs = ctx.store.attempts(run_id=state["run_id"], task_id=state["task_id"])
    return {t.attempt_id: t for t in trajs if t.attempt_id in ids}


def summary_of(traj: Trajectory | None, record: AttemptRecord) -> str:
    """The operator's view of an attempt; a reward only when its source hides nothing (summary.VISIBLE_SOURCES)."""
    if traj is None:
        shown = reward_text(record["reward"], record.get("reward_source", ""))
        return f"Attempt {record['attempt_id']}: status={record['status']}; {shown}".rstrip("; ")
    return summarize_trajectory(traj)


def shown_reward(record: AttemptRecord) -> float | None:
    return record["reward"] if record.get("reward_source") in VISIBLE_SOURCES else None


def budget_with(state: SEAgentState, ctx: SearchContext, extra: list[dict[str, Any]]) -> str | None:
    return budget_reason({**state, "op_usage": list(state.get("op_usage", [])) + extra}, ctx)


def sampling_params(temperature: float | None) -> dict[str, Any]:
    return {"temperature": temperature} if temperature is not None else {}


def log_call(runtime: Runtime[SearchContext], call: OperatorCall, generation: int, parents: list[str], child: str,
         ok: bool) -> dict[str, Any]:
    """Record one operator call (a fallback keeps the malformed reply for inspection) and emit it as an event."""
    error = call.error or ("" if ok else "unparseable reply: used the fallback")
    event = OperatorEvent(event="operator", generation=generation, operator=call.kind, parent_ids=parents,
                          child_id=child, ok=ok, error=error)
    emit(dict(event), runtime.stream_writer, runtime.context.on_event)
    return {**{k: v for k, v in event.items() if k != "event"}, "reply": call.text[:800]}


@dataclass
class Generation:
    """What the operators of one evolve step read, and the operator usage and log they add."""

    state: SEAgentState
    runtime: Runtime[SearchContext]
    config: SEAgentConfig
    gen: int
    scores: dict[str, dict[str, Any]]
    records: dict[str, AttemptRecord]
    trajs: dict[str, Trajectory]
    tried: list[str]
    """Strategies of the population so far, plus those planned in this step."""
    usage: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ctx(self) -> SearchContext:
        return self.runtime.context

    @property
    def score(self) -> dict[str, float]:
        return {i: s["score"] for i, s in self.scores.items()}

    @property
    def feats(self) -> dict[str, frozenset[str]]:
        return {i: trajectory_features(self.trajs.get(i)) for i in self.scores}

    def over_budget(self) -> str:
        reason = budget_with(self.state, self.ctx, self.usage)
        return f"budget: {reason}" if reason else ""

    def spec(self, child: str, plan_: dict[str, str], strategy: str, operator_name: str,
             parents: list[str]) -> AttemptSpec:
        return AttemptSpec(self.state["task_id"], attempt_id=child, run_id=self.state["run_id"],
                           guidance=plan_["guidance"], strategy=strategy, operator=operator_name, parent_ids=parents,
                           node_id=f"g{self.gen}", model_params=sampling_params(self.config.temperature))


def plan_revisions(g: Generation) -> tuple[list[AttemptSpec], str]:
    """Revision: reflect on a failing live trajectory (not revised before) and plan an orthogonal retry."""
    ctx, config, gen, records, scores = g.ctx, g.config, g.gen, g.records, g.scores
    strategies, insights = config.pool_strategies(), insights_text(scores)
    revised = {p for r in records.values() if r.get("operator") == "revision" for p in r.get("parent_ids", [])}
    # the live population: the elites plus the generation just scored (the other trajectories are retired)
    live = set(g.state.get("elite_ids", [])) | {i for i, s in scores.items() if s["generation"] == gen - 1}
    failing = [i for i in scores if i in live and scores[i]["reward"] < config.revise_below and i not in revised]
    specs: list[AttemptSpec] = []
    for k, pid in enumerate(select_diverse(failing, g.score, g.feats, config.revisions, config.diversity_weight)):
        stop = g.over_budget()
        if stop:
            return specs, stop
        child = f"{g.state['run_id']}:g{gen}:revision:{k}"
        parent = g.trajs.get(pid)
        call = call_operator(ctx.op_model, "revise", revision_prompt(
            ctx.task.problem_statement, summary_of(parent, records[pid]), insights, g.tried,
            scored=shown_reward(records[pid]) is not None))
        g.usage.append(call.usage)
        parsed = parse_plan(call.text) if not call.error else None
        untried = next((s for s in strategies if s not in g.tried), strategies[(k + gen) % len(strategies)])
        plan_ = parsed or fallback_revision(parent.strategy if parent else "", records[pid]["status"],
                                            shown_reward(records[pid]), untried)
        g.log.append(log_call(g.runtime, call, gen, [pid], child, parsed is not None))
        strategy = plan_["strategy"] or untried
        g.tried.append(strategy)
        specs.append(g.spec(child, plan_, strategy, "revision", [pid]))
    return specs, ""


def plan_recombinations(g: Generation) -> tuple[list[AttemptSpec], str]:
    """Recombination: the elite pairs maximising score sum + diversity (each pair once) each plan one child."""
    ctx, config, gen, records, scores = g.ctx, g.config, g.gen, g.records, g.scores
    done_pairs = {frozenset(r.get("parent_ids", [])) for r in records.values() if r.get("operator") == "recombination"}
    pairs = best_pairs(g.state.get("elite_ids", []), g.score, g.feats, config.recombinations, config.diversity_weight,
                       done_pairs)
    modes, insights = list(RECOMBINATION_MODES), insights_text(scores)
    specs: list[AttemptSpec] = []
    for k, (a, b) in enumerate(pairs):
        stop = g.over_budget()
        if stop:
            return specs, stop
        child, mode = f"{g.state['run_id']}:g{gen}:recombination:{k}", modes[(gen + k) % len(modes)]
        ta, tb = g.trajs.get(a), g.trajs.get(b)
        call = call_operator(ctx.op_model, "recombine", recombination_prompt(
            ctx.task.problem_statement, mode, summary_of(ta, records[a]), summary_of(tb, records[b]), insights))
        g.usage.append(call.usage)
        parsed = parse_plan(call.text) if not call.error else None
        plan_ = parsed or fallback_recombination(mode, ta.strategy if ta else "", tb.strategy if tb else "",
                                                 [scores[a].get("worked", ""), scores[b].get("worked", "")])
        g.log.append(log_call(g.runtime, call, gen, [a, b], child, parsed is not None))
        specs.append(g.spec(child, plan_, plan_["strategy"], "recombination", [a, b]))
    return specs, ""
