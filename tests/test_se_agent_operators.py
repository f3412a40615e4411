"""SE-Agent's three operators with the scripted FAKE model (test_se_agent.Scenario) on a tiny git repo: what each
reads (the parent's summary and its own review), the guidance its children get, which trajectories revision and
refinement pick, the refined child starting from its parent's edits, no hidden verdict in any prompt, a budget
spent while planning, and resume after kill -9 in the middle of a generation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_9_when_recorded
from test_se_agent import HIDDEN_MARK, STRATS, Scenario, agent_prompt, lineage, make_task, prompts_run

from agent_selfevolve.envs.base import Evaluation
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.search.se_agent import se_agent
from agent_selfevolve.search.se_agent_ops import refinement_replay
from agent_selfevolve.search.summary import summarize_trajectory
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

NOTE = "echo '# note' >> notes.py"
"""STRAT-A's only edit (test_se_agent.plan_for): the state a refined child of it must start from."""


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Task, TrajectoryStore]:
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(tmp_path / "cache"))
    return make_task(tmp_path), TrajectoryStore(tmp_path / "runs" / "store.sqlite")


@pytest.fixture()
def marked_verdicts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The real grader's verdict with HIDDEN_MARK in its details, as the hidden tests' output would carry it."""
    real = CodingEnvironment.evaluate
    seen: list[dict[str, Any]] = []

    def evaluate(self: CodingEnvironment, outcome: dict[str, Any] | None = None) -> Evaluation:
        ev = real(self, outcome)
        ev.details = {**ev.details, "test_output": f"FAILED test_add - AssertionError: {HIDDEN_MARK}"}
        seen.append(ev.to_dict())
        return ev

    monkeypatch.setattr(CodingEnvironment, "evaluate", evaluate)
    return seen


def reviewed(user: str) -> str:
    """A FAKE rating whose lessons name the strategy they were drawn from (RISK-OF-A for STRAT-A ...)."""
    letter = next((c for c in "ABCD" if f"STRAT-{c}" in user), "X")
    quality = {"A": 9, "B": 6}.get(letter, 3)
    return json.dumps({"quality": quality, "blind_spots": [f"BLIND-OF-{letter}"], "risks": [f"RISK-OF-{letter}"],
                       "worked": f"WORKED-OF-{letter}"})


def calls_of(scenario: Scenario, kind: str) -> list[str]:
    return [u for k, u in scenario.op_calls if k == kind]


def actions(traj: Trajectory) -> list[str]:
    return [str((s.action or {}).get("arguments", {}).get("command", (s.action or {}).get("name")))
            for s in traj.step_records()]


def model_calls(step: dict[str, Any]) -> int:
    return int((step.get("usage") or {}).get("calls", 0))


# --- the refined child's starting turns (a pure function) ---------------------------------------------------------

def _turn(command: str) -> dict[str, Any]:
    call = {"name": "bash", "arguments": json.dumps({"command": command})}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": command, "type": "function", "function": call}]}


def _made_up(states: list[str | None], status: str = "submitted", web: bool = False) -> Trajectory:
    """A trajectory of one bash call per turn; `None` in `states` is a format error; a submitted one ends with a
    closing turn (its observation ends the attempt, so it keys no state)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    steps: list[dict[str, Any]] = []
    for i, state in enumerate([*states, "done"] if status == "submitted" else states):
        if state is None:
            messages += [{"role": "assistant", "content": "no action"}, {"role": "user", "content": "Format error"}]
            steps.append({"index": i, "action": None, "format_error": "no action"})
            continue
        messages += [_turn(f"cmd{i}"), {"role": "tool", "tool_call_id": f"cmd{i}", "content": "ok"}]
        info = {} if web or state == "done" else {"state": state}
        steps.append({"index": i, "action": {"name": "bash", "arguments": {"command": f"cmd{i}"}}, "info": info})
    return Trajectory("t", "calc-1", status=status, messages=messages, steps=steps)


def test_refinement_replay_keeps_only_the_turns_that_changed_the_workspace() -> None:
    def commands(turns: list[dict[str, Any]]) -> list[str]:
        return [json.loads(t["tool_calls"][0]["function"]["arguments"])["command"] for t in turns]

    # reads (state unchanged), a format error and the closing submit are redundant; both edits are kept
    traj = _made_up(["base", "s1", None, "s1", "s2"])
    assert commands(refinement_replay(traj, 10)) == ["cmd1", "cmd4"]
    assert commands(refinement_replay(traj, 1)) == ["cmd1"]  # a prefix: the child keeps steps of its own
    # an attempt stopped at its step limit has no closing submit: its last turn counts like any other
    assert commands(refinement_replay(_made_up(["base", "s1", "s2"], status="step_limit"), 10)) == ["cmd1", "cmd2"]
    # a web page keys no state: every turn but format errors and the closing one is kept
    assert commands(refinement_replay(_made_up(["base", None, "s1"], web=True), 10)) == ["cmd0", "cmd2"]
    broken = _made_up(["base", "s1"])
    broken.messages = broken.messages[:-1]  # messages and steps no longer line up: nothing is replayed
    assert refinement_replay(broken, 10) == []


# --- whole searches -----------------------------------------------------------------------------------------------

def test_each_operator_guides_its_children_from_the_parents_summary_and_review_never_the_hidden_verdict(
        env: tuple[Task, TrajectoryStore], marked_verdicts: list[dict[str, Any]]) -> None:
    task, store = env
    scenario = Scenario({"rate": reviewed})
    model = ScriptedFakeModel(scenario)
    se_agent(SearchContext(task=task, model=model, store=store), pool_size=4, generations=1, elites=3, revisions=1,
             recombinations=1, refinements=1, strategies=STRATS, run_id="se-ops", max_concurrency=2)
    ops = lineage(store, "se-ops")
    child = {op: (cid, parents) for cid, (op, parents) in ops.items() if op in ("revision", "recombination",
                                                                                  "refinement")}
    assert set(child) == {"revision", "recombination", "refinement"}

    def summary(aid: str) -> str:
        return summarize_trajectory(store.get(aid))

    def letter(aid: str) -> str:
        return next(c for c in "ABCD" if f"STRAT-{c}" in store.get(aid).strategy)

    # revision reflects on its parent's summary and the parent's own review
    rev_id, (rev_parent,) = child["revision"]
    (revise,) = calls_of(scenario, "revise")
    assert summary(rev_parent) in revise and f"RISK-OF-{letter(rev_parent)}" in revise
    assert "REVISION-GUIDANCE" in agent_prompt(model, store, rev_id)
    # recombination reads both parents (the stronger first) with both reviews
    rec_id, (a, b) = child["recombination"]
    (recombine,) = calls_of(scenario, "recombine")
    assert recombine.index(summary(a)) < recombine.index(summary(b))
    assert f"WORKED-OF-{letter(a)}" in recombine and f"RISK-OF-{letter(b)}" in recombine
    assert "RECOMB-GUIDANCE" in agent_prompt(model, store, rec_id)
    # refinement: the best trajectory not yet perfect (A), its summary and risks in the operator's prompt and in the
    # child's guidance; the child starts by re-running A's edit (no model call), not A's read nor its submit
    ref_id, (ref_parent,) = child["refinement"]
    assert ref_parent == "se-ops:g0:initial:0"
    (refine,) = calls_of(scenario, "refine")
    assert summary(ref_parent) in refine and "RISK-OF-A" in refine and "1 of its turns" in refine
    prompt = agent_prompt(model, store, ref_id)
    assert "REFINE-GUIDANCE" in prompt and "Risks to check: RISK-OF-A; BLIND-OF-A; REFINE-RISK" in prompt
    parent, refined = store.get(ref_parent), store.get(ref_id)
    assert actions(parent) == ["cat calc.py", NOTE, "submit"]
    assert actions(refined)[0] == NOTE and model_calls(refined.steps[0]) == 0
    assert "cat calc.py" not in actions(refined) and refined.resolved  # FIX-IT from the refine guidance
    # the hidden verdict (marked) was there to leak, and no prompt of the agent or of an operator carries it
    assert marked_verdicts and any(HIDDEN_MARK in json.dumps(t.evaluation) for t in store.attempts(run_id="se-ops"))
    assert not [r for r in model.requests if HIDDEN_MARK in json.dumps(r)]


def test_revision_picks_revised_and_elite_trajectories_refinement_the_best_not_yet_perfect(
        env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    scenario = Scenario({"rate": reviewed,
                         "revise": lambda u: json.dumps({"strategy": "STRAT-R again.", "guidance": "look elsewhere"}),
                         "refine": lambda u: json.dumps({"strategy": "STRAT-F polish.", "guidance": "polish it"})})
    strategies = ["STRAT-A read the code.", "STRAT-B look at the tests.", "STRAT-P FIX-IT at once."]
    result = se_agent(SearchContext(task=task, model=ScriptedFakeModel(scenario), store=store), pool_size=3,
                      generations=2, elites=3, revisions=9, recombinations=0, refinements=1, stop_on_perfect=False,
                      patience=5, strategies=strategies, run_id="se-pick", max_concurrency=3)
    assert result.stop_reason == "completed 2 generations"
    ops = lineage(store, "se-pick")
    a, b, perfect = (f"se-pick:g0:initial:{i}" for i in range(3))
    assert store.get(perfect).selection["reward"] == 1.0 and result.best_attempt_id == perfect
    scores, history = result.extra["scores"], result.extra["history"]

    def parents(op: str, gen: int) -> set[str]:
        return {p for cid, (o, ps) in ops.items() if o == op and cid.startswith(f"se-pick:g{gen}:") for p in ps}

    def not_perfect(ids: set[str]) -> set[str]:
        return {i for i in ids if store.get(i).selection["reward"] < 1.0}

    # generation 1: every live trajectory not yet perfect is revised; the perfect one never is
    assert parents("revision", 1) == {a, b}
    # refinement refines the best-scored trajectory not yet perfect (the perfect one scores higher)
    assert scores[perfect] > scores[a] > scores[b] and parents("refinement", 1) == {a}
    # generation 2: the live population (elites + generation 1) not yet perfect, revised ones and elites included
    gen1 = {cid for cid in ops if cid.startswith("se-pick:g1:")}
    live = not_perfect(set(history[1]["elite_ids"]) | gen1)
    assert parents("revision", 2) == live and perfect not in parents("revision", 2)
    assert a in live & set(history[1]["elite_ids"])  # an elite revised before is revised again
    assert {c for c in gen1 if ops[c][0] == "revision"} <= live  # and so are revised children
    # refinement does not refine the same trajectory twice: the best other one not yet perfect
    assert parents("refinement", 2) == {max(live - {a}, key=lambda i: scores[i])}


def test_refined_child_without_replay_starts_afresh(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    model = ScriptedFakeModel(Scenario())
    se_agent(SearchContext(task=task, model=model, store=store), pool_size=1, generations=1, revisions=0,
             recombinations=0, refinements=1, refine_from_state=False, strategies=STRATS[:1], run_id="se-fresh")
    refined = store.get("se-fresh:g1:refinement:0")
    assert refined.parent_ids == ["se-fresh:g0:initial:0"] and model_calls(refined.steps[0]) == 1
    assert "REFINE-GUIDANCE" in agent_prompt(model, store, refined.attempt_id)


def test_budget_spent_while_planning_stops_before_any_child_runs(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    scenario = Scenario()
    # two pool attempts that submit at once (2 calls) and their ratings (2): one call left, for the revision
    ctx = SearchContext(task=task, model=ScriptedFakeModel(scenario), store=store, budget=Budget(max_calls=5))
    result = se_agent(ctx, pool_size=2, generations=3, elites=2, revisions=1, recombinations=1, refinements=1,
                      strategies=["STRAT-C", "STRAT-D"], run_id="se-plan-budget", max_concurrency=2)
    assert [k for k, _ in scenario.op_calls] == ["rate", "rate", "revise"]
    assert result.stop_reason == "budget: LLM calls 5 >= 5" and result.usage["calls"] == 5
    assert result.attempts == 2 and set(lineage(store, "se-plan-budget")) == {"se-plan-budget:g0:initial:0",
                                                                               "se-plan-budget:g0:initial:1"}


RESUME_SCRIPT = """
import sys
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.search.common import SearchContext
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.search.se_agent import se_agent
from test_se_agent import Scenario, STRATS
task = Task.model_validate_json(open(sys.argv[1]).read())
model = ScriptedFakeModel(Scenario(), latency_s=0.15)
se_agent(SearchContext(task=task, model=model, store=TrajectoryStore(sys.argv[2])), pool_size=4, generations=1,
         elites=3, revisions=1, recombinations=1, refinements=1, strategies=STRATS, run_id="se-mid", max_concurrency=1)
"""


def test_resume_after_kill_9_mid_generation_replans_nothing_and_reruns_nothing_stored(
        env: tuple[Task, TrajectoryStore], tmp_path: Path) -> None:
    task, store = env
    before = kill_9_when_recorded(RESUME_SCRIPT, task, store, "se-mid", 5, tmp_path)
    assert 5 <= len(before) < 7 and any(":g1:" in i for i in before)  # killed inside generation 1

    scenario = Scenario()
    model = ScriptedFakeModel(scenario)
    result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=4, generations=1, elites=3,
                      revisions=1, recombinations=1, refinements=1, strategies=STRATS, run_id="se-mid",
                      max_concurrency=1)
    # the generation's children were planned (ids fixed) and checkpointed before the kill: no operator plans again
    assert {k for k, _ in scenario.op_calls} <= {"rate"}
    assert not prompts_run(model) & {store.get(i).messages[1]["content"] for i in before}
    after = dict(store._conn.execute("SELECT id, created_at FROM attempts WHERE run_id='se-mid'").fetchall())
    assert all(after[i] == t for i, t in before.items())  # nothing stored was recorded again
    assert set(after) == {*(f"se-mid:g0:initial:{i}" for i in range(4)), "se-mid:g1:revision:0",
                          "se-mid:g1:recombination:0", "se-mid:g1:refinement:0"}
    assert result.attempts == 7 and store.get_run("se-mid")["status"] == "done"
