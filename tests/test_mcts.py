"""Step-level tree search (MCTS/LATS/SWE-Search style) with a FAKE model: UCT and backup on hand trees, replayed
prefixes that cost no model calls, the value model's explanation reaching the children, stop rules, lineage."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import kill_9_when_recorded

from agent_selfevolve.agent import Limits
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.search import mcts
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.search.mcts import backup, close_upwards, select_leaf, uct
from agent_selfevolve.search.operators import operator_kind
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task


def node(nid: str, parent: str | None, visits: int = 0, value_sum: float = 0.0, children: list[str] | None = None,
         terminal: bool = False) -> dict[str, Any]:
    return {"id": nid, "parent": parent, "attempt_id": None, "steps": 0, "terminal": terminal, "closed": terminal,
            "visits": visits, "value_sum": value_sum, "value": None, "feedback": "", "children": children or []}


def test_uct_select_backup_and_closing_on_a_hand_tree() -> None:
    tree = {"n0": node("n0", None, 3, 1.4, ["n1", "n2"]), "n1": node("n1", "n0", 2, 0.4, ["n3", "n4"]),
            "n2": node("n2", "n0", 1, 1.0), "n3": node("n3", "n1", 1, 0.2), "n4": node("n4", "n1")}
    # n1: 0.2 + sqrt(ln 3 / 2) = 0.941; n2: 1.0 + sqrt(ln 3 / 1) = 2.048
    assert uct(tree["n1"], 3, 1.0) == pytest.approx(0.2 + math.sqrt(math.log(3) / 2))
    assert uct(tree["n4"], 2, 1.0) == math.inf  # unvisited first
    assert select_leaf(tree, 1.0) == "n2"
    assert select_leaf(tree, 0.0) == "n2"  # pure exploitation: mean 1.0 beats 0.2
    tree["n2"].update(terminal=True, closed=True)
    assert select_leaf(tree, 1.0) == "n4"  # n2 ended, so the search goes down n1 to its unvisited child
    backup(tree, "n4", 0.5)
    assert (tree["n4"]["visits"], tree["n1"]["visits"], tree["n0"]["visits"]) == (1, 3, 4)
    assert tree["n0"]["value_sum"] == pytest.approx(1.9)
    for leaf in ("n3", "n4"):
        tree[leaf]["terminal"] = True
        close_upwards(tree, leaf)
    assert tree["n1"]["closed"] and tree["n0"]["closed"]  # every branch ended
    assert select_leaf(tree, 1.0) is None


class Agent:
    """FAKE agent: explores (cat, ls, pwd...) unless its prompt carries the value model's EDIT-NOW advice, then it
    fixes add() and submits. FAKE value model: a fixed value and that advice."""

    def __init__(self, value_reply: str | None = None):
        self.value_reply = value_reply or json.dumps({"value": 40, "explanation": "EDIT-NOW: make add return a + b"})

    def __call__(self, messages: list[dict[str, Any]]) -> Any:
        if operator_kind(messages) == "value":
            return self.value_reply
        turns = [m for m in messages if m["role"] == "assistant"]
        if "EDIT-NOW" in messages[1]["content"]:
            edited = any("str_replace" in json.dumps(m.get("tool_calls") or []) for m in turns)
            return tool_call("submit", {}) if edited else tool_call(
                "str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"})
        return bash(["cat calc.py", "ls", "pwd", "ls tests", "git status", "echo hi"][min(len(turns), 5)])


def make_ctx(tmp_path: Any, task: Task, agent: Agent, budget: Budget | None = None) -> SearchContext:
    return SearchContext(task=task, model=ScriptedFakeModel(agent), store=TrajectoryStore(tmp_path / "s.sqlite"),
                         limits=Limits(max_steps=6), budget=budget or Budget(), env_options={"isolate": False})


def test_replay_then_branch_with_the_value_models_advice(tmp_path: Any, demo_task: Task) -> None:
    ctx = make_ctx(tmp_path, demo_task, Agent())
    res = mcts(ctx, max_iterations=5, children=2, step_chunk=2, run_id="m1", max_concurrency=2)
    tree = res.extra["tree"]
    assert res.stop_reason == "an attempt reached reward 1.0" and res.resolved and res.best_reward == 1.0
    # iteration 1 expanded the root (n1, n2: two exploring steps each, unfinished, valued 0.4);
    # iteration 2 took n1 (a UCT tie, lowest id) and its children followed n1's advice to a fix
    assert tree["n0"]["children"] == ["n1", "n2"] and tree["n1"]["children"] == ["n3", "n4"]
    assert tree["n1"]["value"] == pytest.approx(0.4) and not tree["n1"]["terminal"]
    assert tree["n3"]["terminal"] and tree["n3"]["value"] == 1.0
    assert tree["n0"]["visits"] == 4 and tree["n0"]["value_sum"] == pytest.approx(2.8)
    assert tree["n1"]["closed"] and not tree["n0"]["closed"]
    n1, n3 = ctx.store.get("m1:mcts:n1"), ctx.store.get("m1:mcts:n3")
    assert n1 is not None and n3 is not None
    assert [s["action"]["name"] for s in n3.steps] == ["bash", "bash", "str_replace", "submit"]
    assert [s["action"] for s in n3.steps[:2]] == [s["action"] for s in n1.steps]  # the prefix was replayed
    assert "EDIT-NOW" in n3.messages[1]["content"] and n3.parent_ids == ["m1:mcts:n1"] and n3.operator == "mcts"
    # n1 stopped at its chunk cap: unfinished, never graded by the hidden tests; n3 ended and was graded
    assert n1.status == "unfinished" and n1.evaluation is None and n3.evaluation is not None
    assert n1.selection is not None and n1.selection["source"] == "proxy"  # the default selection
    # replayed turns cost no model calls: 2 per child of the root, 2 new per grandchild, plus 2 value calls
    model = ctx.model
    assert isinstance(model, ScriptedFakeModel)
    value_requests = [r for r in model.requests if operator_kind(r) == "value"]
    assert len(value_requests) == 2 and res.usage["calls"] == 8 + 2 == len(model.requests)
    assert n3.total_usage.calls == 2
    prompt = value_requests[0][-1]["content"]
    assert "cat calc.py" in prompt and demo_task.test_patch not in prompt and "test_add_hidden" not in prompt
    assert res.extra["value_fallbacks"] == 0 and res.attempts == 4


def test_bad_value_replies_are_neutral_and_the_budget_stops_cleanly(tmp_path: Any, demo_task: Task) -> None:
    ctx = make_ctx(tmp_path, demo_task, Agent(value_reply="I think it is going fine!"), budget=Budget(max_calls=9))
    res = mcts(ctx, max_iterations=10, children=2, step_chunk=2, run_id="m2", max_concurrency=1)
    tree = res.extra["tree"]
    assert tree["n1"]["value"] == 0.5 and tree["n1"]["feedback"] == ""  # unparseable: neutral, no advice
    assert res.extra["value_fallbacks"] >= 2
    assert res.stop_reason.startswith("budget: LLM calls") and not res.resolved
    assert res.best_attempt_id is not None  # the best so far is still reported


def test_every_branch_ending_stops_the_search(tmp_path: Any, demo_task: Task) -> None:
    class Quitter(Agent):
        def __call__(self, messages: list[dict[str, Any]]) -> Any:
            return tool_call("submit", {})  # every attempt ends at once, unsolved

    ctx = make_ctx(tmp_path, demo_task, Quitter())
    res = mcts(ctx, max_iterations=5, children=3, run_id="m3")
    assert res.stop_reason == "every branch ended" and res.attempts == 3 and not res.resolved
    assert res.extra["value_calls"] == 0  # ended attempts are worth their reward; no value model needed


def test_a_chosen_unfinished_attempt_is_graded_after_the_choice(tmp_path: Any, demo_task: Task,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An unfinished attempt whose patch is already the fix can be the answer (by its proxy reward); the hidden
    tests grade it only once the search has chosen, for the report."""

    class EditThenLook(Agent):
        def __call__(self, messages: list[dict[str, Any]]) -> Any:
            if operator_kind(messages) == "value":
                return self.value_reply
            if not any(m["role"] == "assistant" for m in messages):
                return tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"})
            return bash("ls")

    log: list[str] = []
    real = CodingEnvironment.evaluate

    def logged(self: CodingEnvironment, outcome: Any = None) -> Any:
        log.append(f"graded {self.name}")
        return real(self, outcome)

    monkeypatch.setattr(CodingEnvironment, "evaluate", logged)
    ctx = make_ctx(tmp_path, demo_task, EditThenLook())
    ctx.on_event = lambda e: log.append(e["event"]) if e["event"] in ("attempt_finished", "search_finished") else None
    res = mcts(ctx, max_iterations=1, children=1, step_chunk=2, stop_at_success=False, run_id="m4")
    traj = ctx.store.get("m4:mcts:n1")
    assert traj is not None and traj.status == "unfinished" and traj.selection["reward"] == 1.0
    assert res.best_attempt_id == "m4:mcts:n1" and res.resolved and res.pass_at_n and not res.oracle
    assert log == ["attempt_finished", "graded m4:mcts:n1-grade", "search_finished"]  # graded after the choice
    assert traj.evaluation is not None and traj.evaluation["source"] == "tests"


RESUME_SCRIPT = """
import sys
from pathlib import Path
from agent_selfevolve.agent import Limits
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.search import mcts
from agent_selfevolve.search.common import SearchContext
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from test_mcts import Agent

task = Task.model_validate_json(Path(sys.argv[1]).read_text())
ctx = SearchContext(task=task, model=ScriptedFakeModel(Agent(), latency_s=0.4), store=TrajectoryStore(sys.argv[2]),
                    limits=Limits(max_steps=6), env_options={"isolate": False})
mcts(ctx, max_iterations=3, children=2, step_chunk=2, stop_at_success=False, run_id="m-kill", max_concurrency=2)
"""


def test_resume_after_kill_9_reruns_nothing_finished(tmp_path: Any, demo_task: Task) -> None:
    store = TrajectoryStore(tmp_path / "s.sqlite")
    before = kill_9_when_recorded(RESUME_SCRIPT, demo_task, store, "m-kill", 3, tmp_path)
    assert 3 <= len(before) < 6

    ctx = make_ctx(tmp_path, demo_task, Agent())
    ctx.store = store
    res = mcts(ctx, max_iterations=3, children=2, step_chunk=2, stop_at_success=False, run_id="m-kill")
    after = dict(store._conn.execute("SELECT id, created_at FROM attempts WHERE run_id='m-kill'").fetchall())
    assert all(after[i] == t for i, t in before.items())  # nothing finished ran or was recorded again
    assert len(after) == res.attempts == 6 and res.extra["iterations"] == 3
    tree = res.extra["tree"]
    assert sorted(k for k in tree if k != "n0") == [f"n{i}" for i in range(1, 7)]
    for kid in ("n3", "n4"):  # the second expansion branched from n1, the third from one of n1's children or n2
        traj = store.get(f"m-kill:mcts:{kid}")
        assert traj is not None and traj.parent_ids == ["m-kill:mcts:n1"]
