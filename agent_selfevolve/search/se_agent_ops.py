"""SE-Agent's three evolution operators (revision, recombination, refinement) and the helpers its nodes share.

Each operator is one small function that turns parent trajectories into planned child attempts (ids fixed by the
caller's node, guidance from one operator LLM call or its deterministic fallback). Kept apart from the graph wiring
in `se_agent.py`; every function here reads only this run's and this task's attempts, and shows an operator a
reward only when its source hides nothing (`summary.VISIBLE_SOURCES`). See docs/se_agent.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langgraph.runtime import Runtime

from agent_selfevolve.attempt import AttemptSpec
from agent_selfevolve.envs.base import INITIAL_STATE
from agent_selfevolve.events import OperatorEvent
from agent_selfevolve.infra import emit
from agent_selfevolve.search.common import SearchContext, budget_reason
from agent_selfevolve.search.operators import (
    RECOMBINATION_MODES,
    OperatorCall,
    best_pairs,
    call_operator,
    fallback_recombination,
    fallback_refinement,
    fallback_revision,
    insights_text,
    parse_plan,
    rated_text,
    recombination_prompt,
    refined_guidance,
    refinement_prompt,
    revision_prompt,
    select_diverse,
    trajectory_features,
)
from agent_selfevolve.search.records import AttemptRecord
from agent_selfevolve.search.summary import VISIBLE_SOURCES, reward_text, summarize_trajectory
from agent_selfevolve.trajectory import CRASHES, Status, Step, Trajectory

if TYPE_CHECKING:
    from agent_selfevolve.search.se_agent import SEAgentConfig, SEAgentState

REPLAY_SHARE = 0.5
"""A refined child re-runs at most this share of the per-attempt step limit, so it keeps steps of its own."""


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
    """The generation being planned (the one just scored plus one)."""
    scores: dict[str, dict[str, Any]]
    records: dict[str, AttemptRecord]
    trajs: dict[str, Trajectory]
    tried: list[str]
    """Strategies of the population so far, plus those planned in this step."""
    usage: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, state: SEAgentState, runtime: Runtime[SearchContext], config: SEAgentConfig) -> Generation:
        trajs = population(state, runtime.context)
        planned = [s.get("strategy", "") for s in state.get("queue", [])]
        tried = list(dict.fromkeys(s for s in [*(t.strategy for t in trajs.values()), *planned] if s))
        return cls(state, runtime, config, state.get("generation", 0) + 1, state.get("scores", {}),
                   {r["attempt_id"]: r for r in state.get("attempts", [])}, trajs, tried)

    @property
    def ctx(self) -> SearchContext:
        return self.runtime.context

    @property
    def score(self) -> dict[str, float]:
        return {i: s["score"] for i, s in self.scores.items()}

    @property
    def feats(self) -> dict[str, frozenset[str]]:
        return {i: trajectory_features(self.trajs.get(i)) for i in self.scores}

    def child_id(self, operator_name: str, k: int) -> str:
        return f"{self.state['run_id']}:g{self.gen}:{operator_name}:{k}"

    def live(self) -> list[str]:
        """The live population: the elites plus the generation just scored (older trajectories are retired)."""
        elites = set(self.state.get("elite_ids", []))
        return [i for i, s in self.scores.items() if i in elites or s["generation"] == self.gen - 1]

    def worth_improving(self) -> list[str]:
        """Live trajectories not yet perfect by the selection reward: revised ones and elites included."""
        return [i for i in self.live() if self.scores[i]["reward"] < self.config.improve_below]

    def over_budget(self) -> str:
        reason = budget_with(self.state, self.ctx, self.usage)
        return f"budget: {reason}" if reason else ""

    def ask(self, kind: str, prompt: str, parents: list[str], child: str) -> dict[str, Any] | None:
        """One operator call, counted and logged; its plan, or None when the reply is unusable."""
        call = call_operator(self.ctx.op_model, kind, prompt)
        self.usage.append(call.usage)
        plan = parse_plan(call.text) if not call.error else None
        self.log.append(log_call(self.runtime, call, self.gen, parents, child, plan is not None))
        return plan

    def spec(self, child: str, guidance: str, strategy: str, operator_name: str, parents: list[str],
             replay: list[dict[str, Any]] | None = None) -> AttemptSpec:
        return AttemptSpec(self.state["task_id"], attempt_id=child, run_id=self.state["run_id"], guidance=guidance,
                           strategy=strategy, operator=operator_name, parent_ids=parents, node_id=f"g{self.gen}",
                           model_params=sampling_params(self.config.temperature), replay=list(replay or []))


# --- revision -----------------------------------------------------------------------------------------------------

def plan_revisions(g: Generation) -> tuple[list[AttemptSpec], str]:
    """Revision: `config.revisions` live trajectories worth improving (by score and diversity), each reflected on."""
    chosen = select_diverse(g.worth_improving(), g.score, g.feats, g.config.revisions, g.config.diversity_weight)
    specs: list[AttemptSpec] = []
    for k, pid in enumerate(chosen):
        stop = g.over_budget()
        if stop:
            return specs, stop
        specs.append(revise(g, pid, g.child_id("revision", k), k))
    return specs, ""


def revise(g: Generation, pid: str, child: str, k: int) -> AttemptSpec:
    """Reflect on one trajectory's summary and review, and plan an orthogonal retry with an untried strategy."""
    parent, record = g.trajs.get(pid), g.records[pid]
    prompt = revision_prompt(g.ctx.task.problem_statement, summary_of(parent, record), rated_text(g.scores[pid]),
                             insights_text(g.scores), g.tried, scored=shown_reward(record) is not None)
    plan = g.ask("revise", prompt, [pid], child)
    strategies = g.config.pool_strategies()
    untried = next((s for s in strategies if s not in g.tried), strategies[(k + g.gen) % len(strategies)])
    plan = plan or fallback_revision(parent.strategy if parent else "", record["status"], shown_reward(record),
                                     untried)
    strategy = plan["strategy"] or untried
    g.tried.append(strategy)
    return g.spec(child, plan["guidance"], strategy, "revision", [pid])


# --- recombination ------------------------------------------------------------------------------------------------

def plan_recombinations(g: Generation) -> tuple[list[AttemptSpec], str]:
    """Recombination: the elite pairs maximising score sum + diversity (each pair once), modes in rotation."""
    done = {frozenset(r.get("parent_ids", [])) for r in g.records.values() if r.get("operator") == "recombination"}
    pairs = best_pairs(g.state.get("elite_ids", []), g.score, g.feats, g.config.recombinations,
                       g.config.diversity_weight, done)
    modes = list(RECOMBINATION_MODES)
    specs: list[AttemptSpec] = []
    for k, (a, b) in enumerate(pairs):
        stop = g.over_budget()
        if stop:
            return specs, stop
        specs.append(recombine(g, a, b, g.child_id("recombination", k), modes[(g.gen + k) % len(modes)]))
    return specs, ""


def recombine(g: Generation, a: str, b: str, child: str, mode: str) -> AttemptSpec:
    """Crossover, transfer (A's strength into B's weak point) or restructure of two trajectories into one plan."""
    ta, tb = g.trajs.get(a), g.trajs.get(b)
    prompt = recombination_prompt(g.ctx.task.problem_statement, mode, summary_of(ta, g.records[a]),
                                  rated_text(g.scores[a]), summary_of(tb, g.records[b]), rated_text(g.scores[b]),
                                  insights_text(g.scores))
    plan = g.ask("recombine", prompt, [a, b], child) or fallback_recombination(
        mode, ta.strategy if ta else "", tb.strategy if tb else "",
        [g.scores[a].get("worked", ""), g.scores[b].get("worked", "")])
    g.tried.append(plan["strategy"])
    return g.spec(child, plan["guidance"], plan["strategy"], "recombination", [a, b])


# --- refinement (the child-producing half; scoring and elites are the `assess` node) ------------------------------

def plan_refinements(g: Generation) -> tuple[list[AttemptSpec], str]:
    """Refinement: the `config.refinements` most promising live trajectories not yet perfect (best refinement score,
    with diversity), each not refined before and not a crash, are refined into a child that starts from them."""
    refined = {p for r in g.records.values() if r.get("operator") == "refinement" for p in r.get("parent_ids", [])}
    cands = [i for i in g.worth_improving() if i not in refined and g.records[i]["status"] not in CRASHES]
    chosen = select_diverse(cands, g.score, g.feats, g.config.refinements, g.config.diversity_weight)
    specs: list[AttemptSpec] = []
    for k, pid in enumerate(chosen):
        stop = g.over_budget()
        if stop:
            return specs, stop
        specs.append(refine(g, pid, g.child_id("refinement", k)))
    return specs, ""


def refine(g: Generation, pid: str, child: str) -> AttemptSpec:
    """The child re-runs the parent's state-changing turns (its edits, without redundant steps), then continues
    with a plan to check the parent's risks and finish the job."""
    parent, record = g.trajs.get(pid), g.records[pid]
    max_turns = int(g.ctx.limits.max_steps * REPLAY_SHARE)
    replay = refinement_replay(parent, max_turns) if parent is not None and g.config.refine_from_state else []
    prompt = refinement_prompt(g.ctx.task.problem_statement, summary_of(parent, record), rated_text(g.scores[pid]),
                               insights_text(g.scores), len(replay))
    strategy = parent.strategy if parent else ""
    plan = g.ask("refine", prompt, [pid], child) or fallback_refinement(strategy, len(replay))
    risks = [*g.scores[pid].get("risks", []), *g.scores[pid].get("blind_spots", [])]
    return g.spec(child, refined_guidance(plan, risks), plan["strategy"] or strategy, "refinement", [pid], replay)


def turns(traj: Trajectory) -> list[tuple[dict[str, Any], list[Step]]] | None:
    """Each assistant turn with the steps it produced (one per observation or format-error reply after it); None
    when the messages and the steps do not line up."""
    counts: list[list[Any]] = []
    for m in traj.messages:
        if m.get("role") == "assistant":
            counts.append([m, 0])
        elif counts:
            counts[-1][1] += 1
    steps = traj.step_records()
    if sum(n for _, n in counts) != len(steps):
        return None
    out, i = [], 0
    for message, n in counts:
        out.append((message, steps[i:i + n]))
        i += n
    return out


def refinement_replay(traj: Trajectory, max_turns: int) -> list[dict[str, Any]]:
    """The parent's turns that brought its workspace to its final state, in order, at most `max_turns`.

    Redundant turns are left out: format errors, the closing turn of a submitted attempt and, where the environment
    keys its state (`info["state"]`, a coding sandbox), every turn that changed nothing (reads, searches, runs).
    Without state keys (a web page) every other turn is kept."""
    grouped = turns(traj)
    if grouped is None or max_turns <= 0:
        return []
    if traj.status == Status.SUBMITTED and grouped:
        grouped = grouped[:-1]
    keyed = any("state" in s.info for _, steps in grouped for s in steps)
    kept: list[dict[str, Any]] = []
    state = INITIAL_STATE
    for message, steps in grouped:
        if not steps or any(s.format_error for s in steps):
            continue
        states = [s.info["state"] for s in steps if "state" in s.info]
        if keyed and all(st == state for st in states):
            continue
        state = states[-1] if states else state
        kept.append(message)
    return kept[:max_turns]
