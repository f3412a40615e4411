"""HGM: estimators against hand-computed trees, decision rules, Beta quantiles, and the graph with FAKE models.

The graph tests use a tiny git repo (a bug in calc.py, whose docstring example the proxy reward runs, plus a
hidden test) and two scripted FAKE models: the agent fixes the bug only when its first prompt holds the word
APPLY_FIX, and the operator writes that word into the child's guidance. So the root's attempts fail, an
expansion diagnoses them, and the child succeeds; attempts are chosen by the default (proxy) reward.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_selfevolve.agent import Limits
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.search.hgm import absorb, hgm, new_node, parse_variant, plan, unreachable_threshold
from agent_selfevolve.search.hgm_math import (
    beta_quantile,
    betainc,
    clade_counts,
    cmp,
    cmp_all,
    decision_rng,
    final_selection,
    tau_schedule,
    thompson_evaluate,
    thompson_expand,
    ucb_air_should_expand,
)
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

HIDDEN_MARKER = "HIDDEN_TEST_MARKER_9f3c"


def hand_tree() -> dict[str, dict[str, Any]]:
    """n0 (1/3) -> n1 (0/2) -> n3 (1/1) -> n4 (0/0); n0 -> n2 (2/0). Own (successes/failures)."""
    return {"n0": {"parent": None, "s": 1, "f": 3}, "n1": {"parent": "n0", "s": 0, "f": 2},
            "n2": {"parent": "n0", "s": 2, "f": 0}, "n3": {"parent": "n1", "s": 1, "f": 1},
            "n4": {"parent": "n3", "s": 0, "f": 0}}


# ---------------------------------------------------------------------------------------------- estimators
def test_clade_counts_and_cmp_match_hand_computed_tree() -> None:
    tree = hand_tree()
    assert clade_counts(tree) == {"n0": (4, 6), "n1": (1, 3), "n2": (2, 0), "n3": (1, 1), "n4": (0, 0)}
    assert cmp(tree, "n0") == pytest.approx(0.4)  # root: 4 / 10
    assert cmp(tree, "n1") == pytest.approx(0.25)  # inner: (0+1) / (0+1 + 2+1)
    assert cmp(tree, "n2") == pytest.approx(1.0)  # leaf with evaluations
    assert cmp(tree, "n4") is None  # leaf without evaluations
    assert cmp_all(tree) == {"n0": pytest.approx(0.4), "n1": pytest.approx(0.25), "n2": 1.0, "n3": 0.5, "n4": None}


def test_expansion_does_not_change_ancestors_own_counts() -> None:
    """The aliasing bug: descendants' outcomes copied into ancestors on every expansion. Own counts must stay,
    clade sums must be recomputed (not accumulated), and the input tree must not be mutated."""
    tree = hand_tree()
    before = copy.deepcopy(tree)
    for _ in range(3):  # repeated calls must not accumulate
        assert clade_counts(tree)["n0"] == (4, 6)
    assert tree == before
    tree["n5"] = {"parent": "n4", "s": 0, "f": 0}  # expand a leaf: nothing changes yet
    assert clade_counts(tree)["n0"] == (4, 6)
    tree["n5"]["s"], tree["n5"]["f"] = 2, 1  # its evaluations reach every ancestor's clade ...
    clade = clade_counts(tree)
    assert [clade[n] for n in ("n5", "n4", "n3", "n1", "n0", "n2")] == [(2, 1), (2, 1), (3, 2), (3, 4), (6, 7), (2, 0)]
    for nid in before:  # ... but never their own counts
        assert (tree[nid]["s"], tree[nid]["f"]) == (before[nid]["s"], before[nid]["f"])
    tree["n6"] = {"parent": "n0", "s": 0, "f": 1}  # a second expansion of the root
    assert clade_counts(tree)["n0"] == (6, 8)
    assert clade_counts(tree)["n1"] == (3, 4)  # a sibling's outcome is not in n1's clade


def test_cycle_is_rejected() -> None:
    with pytest.raises(ValueError):
        clade_counts({"a": {"parent": "b", "s": 1, "f": 0}, "b": {"parent": "a", "s": 0, "f": 0}})


def test_absorb_counts_each_node_own_attempts_only() -> None:
    """The graph's tree builder: own counts come from the node's own records, expansions add nodes once."""
    def rec(aid: str, node: str, reward: float) -> dict[str, Any]:
        return {"attempt_id": aid, "node_id": node, "reward": reward}

    state: dict[str, Any] = {
        "threshold": 1.0,
        "nodes": {"n0": {"id": "n0", "parent": None, "operator": "root", "variant": {}, "depth": 0,
                         "parent_ids": [], "diagnosis": "", "children": [], "attempt_ids": [], "s": 0, "f": 0}},
        "attempts": [rec("a0", "n0", 0.0), rec("a1", "n0", 1.0)],
        "expansions": [{"node": "n1", "parent": "n0", "variant": {"guidance": "g"}, "parent_ids": ["a0"]}]}
    nodes = absorb(state)
    assert (nodes["n0"]["s"], nodes["n0"]["f"], nodes["n1"]["s"], nodes["n1"]["f"]) == (1, 1, 0, 0)
    assert nodes["n0"]["children"] == ["n1"] and nodes["n1"]["parent_ids"] == ["a0"]
    state["nodes"] = nodes
    state["attempts"] += [rec("a2", "n1", 1.0), rec("a3", "n1", 1.0), rec("a4", "n1", 0.5)]
    nodes2 = absorb(state)  # absorbing again: no duplicated child, root's own counts unchanged
    assert nodes2["n0"]["children"] == ["n1"]
    assert (nodes2["n0"]["s"], nodes2["n0"]["f"]) == (1, 1)
    assert (nodes2["n1"]["s"], nodes2["n1"]["f"]) == (2.5, 0.5)  # fractional: 0.5 is half a success
    assert clade_counts(nodes2)["n0"] == (3.5, 1.5)
    binary = absorb({**state, "counts": "threshold"})
    assert (binary["n1"]["s"], binary["n1"]["f"]) == (2, 1)  # 0.5 < threshold 1.0 is a failure
    assert state["nodes"]["n1"]["attempt_ids"] == []  # the input state is not mutated


def test_fractional_rewards_rank_variants_that_never_reach_the_threshold() -> None:
    """A proxy reward that tops out below 1.0 (here 0.2 vs 0.8) leaves every threshold count at zero, so Thompson
    sampling and the final choice cannot tell the variants apart; fractional Beta updates can."""
    recs = [{"attempt_id": f"{n}{i}", "node_id": n, "reward": r} for n, r in (("n0", 0.2), ("n1", 0.8))
            for i in range(6)]
    base = {"nodes": {"n0": new_node("n0", None, {}, "root", 0), "n1": new_node("n1", "n0", {}, "expand", 1)},
            "attempts": recs, "threshold": 1.0}
    binary = absorb({**base, "counts": "threshold"})
    assert [binary[n]["s"] for n in ("n0", "n1")] == [0, 0] and final_selection(binary, 0.1) == "n0"  # a tie
    frac = absorb(base)
    assert frac["n0"]["s"] == pytest.approx(1.2) and frac["n1"]["s"] == pytest.approx(4.8)
    assert final_selection(frac, 0.1) == "n1"
    picks = [thompson_evaluate(frac, random.Random(seed)) for seed in range(200)]
    assert picks.count("n1") > 170


def test_a_threshold_no_reward_can_reach_is_reported() -> None:
    capped = [{"reward": 0.2, "reward_ceiling": 0.2, "reward_source": "proxy"}] * 3
    warning = unreachable_threshold(capped, 1.0)
    assert warning is not None and "above the highest reward" in warning and "0.2" in warning
    assert unreachable_threshold(capped, 0.2) is None and unreachable_threshold([], 1.0) is None
    assert unreachable_threshold([*capped, {"reward": 0.2, "reward_ceiling": 1.0}], 1.0) is None
    assert unreachable_threshold([*capped, {"reward": 0.0, "reward_ceiling": None}], 1.0) == warning  # unknown
    assert unreachable_threshold([{"reward": 0.0, "reward_ceiling": None}], 1.0) is None


# ------------------------------------------------------------------------------------------ decision rules
def test_ucb_air_decisions() -> None:
    assert ucb_air_should_expand(0, 1) is True  # 0^0.6 = 0 >= 0
    assert ucb_air_should_expand(2, 2) is True  # 1.516 >= 1
    assert ucb_air_should_expand(2, 3) is False  # 1.516 < 2
    assert ucb_air_should_expand(4, 3) is True  # 2.297 >= 2
    assert ucb_air_should_expand(4, 3, pending_expansions=1) is False  # 2.297 < 3: an expansion in flight
    assert ucb_air_should_expand(4, 3, alpha=0.4) is False  # 1.741 < 2
    # A sequential run from N=1, one node: x = expand, . = evaluate. Expansions where N^0.6 crosses an integer.
    n, nodes, seq = 1, 1, ""
    for _ in range(15):
        if ucb_air_should_expand(n, nodes, 0, 0.6):
            nodes, seq = nodes + 1, seq + "x"
        else:
            n, seq = n + 1, seq + "."
    assert seq == "xx...x...x....x"


def test_tau_schedule() -> None:
    assert tau_schedule(10, 0) == 1.0
    assert tau_schedule(10, 5) == 2.0
    assert tau_schedule(10, 9) == 10.0
    assert tau_schedule(10, 10) == 10.0  # b never drops below 1
    assert tau_schedule(10, 12) == 10.0


def test_thompson_choices_match_hand_draws() -> None:
    tree = hand_tree()
    cands = ["n0", "n1", "n2", "n3"]
    for seed in range(20):
        tau = 2.5
        ref = random.Random(seed)
        clade = {"n0": (4, 6), "n1": (1, 3), "n2": (2, 0), "n3": (1, 1)}
        draws = [ref.betavariate(tau * (1 + clade[c][0]), tau * (1 + clade[c][1])) for c in cands]
        assert thompson_expand(tree, random.Random(seed), tau, cands) == cands[draws.index(max(draws))]
        ref = random.Random(seed)
        own = [(tree[c]["s"], tree[c]["f"]) for c in tree]
        draws = [ref.betavariate(1 + s, 1 + f) for s, f in own]
        assert thompson_evaluate(tree, random.Random(seed)) == list(tree)[draws.index(max(draws))]
    # A large tau concentrates each Beta at its mean: the best clade (n2, mean 3/4) wins every time.
    assert {thompson_expand(tree, random.Random(s), 5000.0, cands) for s in range(20)} == {"n2"}


def test_decision_rng_is_stable_across_processes() -> None:
    code = "from agent_selfevolve.search.hgm_math import decision_rng; print(decision_rng('run-x', 7).random())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": h}).stdout.strip() for h in ("1", "2")}
    assert outs == {repr(decision_rng("run-x", 7).random())}
    assert decision_rng("run-x", 7).random() != decision_rng("run-x", 8).random()


# ---------------------------------------------------------------------------------------------- quantiles
@pytest.mark.parametrize("q", [1e-9, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999])
def test_beta_quantile_closed_forms(q: float) -> None:
    assert beta_quantile(q, 1, 1) == pytest.approx(q, abs=1e-10)
    assert beta_quantile(q, 2, 1) == pytest.approx(math.sqrt(q), abs=1e-10)
    assert beta_quantile(q, 1, 2) == pytest.approx(1 - math.sqrt(1 - q), abs=1e-10)
    assert beta_quantile(q, 5, 1) == pytest.approx(q ** 0.2, abs=1e-10)
    x = beta_quantile(q, 4, 2)  # I_x(4, 2) = 5x^4 - 4x^5
    assert 5 * x**4 - 4 * x**5 == pytest.approx(q, abs=1e-9)
    assert betainc(3, 7, 0.3) == pytest.approx(1 - betainc(7, 3, 0.7), abs=1e-12)


def test_beta_quantile_edges() -> None:
    assert beta_quantile(0.0, 3, 4) == 0.0 and beta_quantile(1.0, 3, 4) == 1.0
    with pytest.raises(ValueError):
        beta_quantile(1.5, 1, 1)
    assert beta_quantile(0.1, 400, 600) == pytest.approx(0.38, abs=0.01)  # large counts: no overflow


def test_beta_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(1, 1), (2, 5), (0.5, 0.5), (30, 2), (1, 60), (200, 300)]:
        for q in (0.001, 0.05, 0.1, 0.5, 0.95):
            assert beta_quantile(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), abs=1e-9)


def test_final_selection_uses_epsilon_quantile() -> None:
    tree = {"A": {"parent": None, "s": 1, "f": 0}, "B": {"parent": "A", "s": 3, "f": 1},
            "C": {"parent": "A", "s": 0, "f": 0}, "D": {"parent": "B", "s": 0, "f": 2}}
    # q=0.1: A = sqrt(0.1) = 0.316, B = 0.416 (5x^4 - 4x^5 = 0.1), D = 1 - 0.9^(1/3) = 0.035; C unevaluated.
    assert final_selection(tree, 0.1) == "B"
    # q=0.9: A = sqrt(0.9) = 0.949 beats B (0.894): an optimistic quantile trusts one lucky success.
    assert final_selection(tree, 0.9) == "A"
    assert final_selection({"C": {"parent": None, "s": 0, "f": 0}}, 0.1) is None
    tie = {"x": {"parent": None, "s": 1, "f": 1}, "y": {"parent": "x", "s": 1, "f": 1}}
    assert final_selection(tie, 0.1) == "x"  # ties: earlier node


def test_parse_variant_inherits_and_falls_back() -> None:
    parent = {"strategy": "S", "guidance": "G", "model_params": {"temperature": 0.7}}
    child, diag = parse_variant('Here:\n```json\n{"diagnosis": "d", "guidance": "new", "temperature": 9}\n```',
                                parent)
    assert child == {"strategy": "S", "guidance": "new", "model_params": {"temperature": 1.2}} and diag == "d"
    child, diag = parse_variant("just try harder", parent)
    assert child["guidance"] == "just try harder" and child["strategy"] == "S"
    assert parent == {"strategy": "S", "guidance": "G", "model_params": {"temperature": 0.7}}


def _plan_state(max_evals: int, wave_size: int) -> dict[str, Any]:
    root = new_node("n0", None, {"guidance": ""}, "root", 0)
    recs = [{"attempt_id": f"r:n0:e{i}", "node_id": "n0", "reward": 0.0, "usage": {}} for i in range(4)]
    return {"run_id": "r", "task_id": "t", "max_evals": max_evals, "wave_size": wave_size, "alpha": 0.6,
            "threshold": 1.0, "nodes": {"n0": root}, "attempts": recs, "evals_planned": 4, "decisions": 4,
            "next_node": 1}


def test_plan_counts_pending_expansions_and_is_deterministic() -> None:
    runtime = SimpleNamespace(context=SimpleNamespace(budget=Budget(), started_at=0.0))
    out = plan(_plan_state(max_evals=20, wave_size=4), runtime)  # type: ignore[arg-type]
    # N = 4, 4^0.6 = 2.30: expand while 2.30 >= 0, 1, 2 pending expansions, then evaluate
    assert [a["kind"] for a in out["pending"]] == ["expand", "expand", "expand", "evaluate"]
    assert [a.get("child") for a in out["pending"][:3]] == ["n1", "n2", "n3"] and out["next_node"] == 4
    assert out["evals_planned"] == 5 and out["decisions"] == 8
    assert out["nodes"]["n0"]["f"] == 4 and plan(_plan_state(20, 4), runtime) == out  # type: ignore[arg-type]
    # 2 evaluations left after a wave of 2 expansions: the children can be evaluated in the next wave
    out = plan(_plan_state(max_evals=6, wave_size=2), runtime)  # type: ignore[arg-type]
    assert [a["kind"] for a in out["pending"]] == ["expand", "expand"]
    # 1 evaluation left and it fits in this wave: a child could never be evaluated, so no expansion
    out = plan(_plan_state(max_evals=5, wave_size=2), runtime)  # type: ignore[arg-type]
    assert [a["kind"] for a in out["pending"]] == ["evaluate"]
    out = plan({**_plan_state(max_evals=4, wave_size=2)}, runtime)  # type: ignore[arg-type]
    assert out["stop_reason"] == "completed 4 evaluations" and out["pending"] == []


# ------------------------------------------------------------------------------------------ graph, FAKE models
def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_task(root: Path) -> Task:
    repo = root / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text('def add(a, b):\n    """\n    >>> add(2, 3)\n    5\n    """\n    return a - b\n')
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    test = f"from calc import add\n\n\ndef test_add():\n    # {HIDDEN_MARKER}\n    assert add(2, 3) == 5\n"
    lines = test.splitlines()
    test_patch = ("diff --git a/tests/test_calc.py b/tests/test_calc.py\nnew file mode 100644\n"
                  f"--- /dev/null\n+++ b/tests/test_calc.py\n@@ -0,0 +1,{len(lines)} @@\n"
                  + "".join(f"+{ln}\n" for ln in lines))
    return Task(instance_id="calc-1", problem_statement="add(2, 3) returns -1 instead of 5.", repo_path=str(repo),
                base_commit=_git(repo, "rev-parse", "HEAD"), test_patch=test_patch,
                FAIL_TO_PASS=["tests/test_calc.py::test_add"],
                test_cmd="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest -rA --tb=no -p no:cacheprovider {tests}")


def agent_responder(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Fix the bug only when told APPLY_FIX in the first prompt; otherwise give up at once."""
    told = "APPLY_FIX" in str(messages[1].get("content"))
    if told and not any(m["role"] == "assistant" for m in messages):
        return tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"})
    return tool_call("submit", {})


def operator_responder(messages: list[dict[str, Any]]) -> str:
    return ('```json\n{"diagnosis": "the agent submitted without editing calc.py", "strategy": "edit then submit",'
            ' "guidance": "APPLY_FIX: replace the minus in calc.add with a plus", "temperature": 0.3}\n```')


def make_ctx(tmp: Path, task: Task, budget: Budget | None = None, latency_s: float = 0.0,
             on_event: Any = None) -> SearchContext:
    store = TrajectoryStore(tmp / "runs" / "store.sqlite")
    return SearchContext(task=task, model=ScriptedFakeModel(agent_responder, latency_s=latency_s), store=store,
                         limits=Limits(max_steps=4), budget=budget or Budget(),
                         operator_model=ScriptedFakeModel(operator_responder, name="fake/operator"),
                         env_options={"isolate": False}, on_event=on_event)


@pytest.fixture()
def task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Task:
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(tmp_path / "cache"))
    return make_task(tmp_path)


def test_graph_diagnoses_failures_and_child_guidance_reaches_prompt(tmp_path: Path, task: Task) -> None:
    ctx = make_ctx(tmp_path, task)
    res = hgm(ctx, max_evals=6, wave_size=2, max_concurrency=2, seed=3, run_id="hgm-flow")
    tree = res.extra["tree"]
    root = tree["n0"]
    assert root["s"] == 0 and root["f"] >= 2  # the root never fixes the bug
    children = [n for n in tree.values() if n["parent"] == "n0"]
    assert children, "the root must have been expanded"
    op = ctx.operator_model
    assert isinstance(op, ScriptedFakeModel)
    assert len(op.requests) == len(tree) - 1  # one diagnosis per expansion
    first = op.requests[0][-1]["content"]
    for aid in children[0]["parent_ids"]:  # the diagnosis read the parent's failed attempts
        assert aid in root["attempt_ids"] and f"Attempt {aid}" in first
    assert "Failed attempts" in first and "reward=0.00 (proxy)" in first  # the proxy's reward, nothing hidden
    for request in op.requests:  # never the hidden tests, nor their verdict
        text = json.dumps(request)
        assert HIDDEN_MARKER not in text and "test_add" not in text and task.test_patch not in text
        assert "(tests)" not in text
    # the child's guidance reached its attempts' first prompt, and they succeeded
    trajs = {t.attempt_id: t for t in ctx.store.attempts(run_id="hgm-flow")}
    child_attempts = [trajs[a] for c in children for a in c["attempt_ids"]]
    assert child_attempts, "a child must have been evaluated"
    for traj in child_attempts:
        assert traj.operator == "evaluate" and traj.node_id in {c["id"] for c in children}
        assert "APPLY_FIX" in traj.guidance and "APPLY_FIX" in traj.messages[1]["content"]
        assert traj.parent_ids and set(traj.parent_ids) <= set(root["attempt_ids"])
        assert traj.resolved
    assert all(trajs[a].operator == "root" for a in root["attempt_ids"])
    # tree bookkeeping, CMP, final choice and budget accounting
    assert res.attempts == 6 == len(trajs) and res.stop_reason == "completed 6 evaluations"
    assert root["clade_s"] == sum(n["s"] for n in tree.values()) and root["cmp"] is not None
    assert tree[res.extra["final_node"]]["s"] > 0 and res.resolved and res.best_reward == 1.0
    assert res.best_attempt_id in tree[res.extra["final_node"]]["attempt_ids"]
    agent_calls = sum(t.total_usage.calls for t in trajs.values())
    assert res.usage["calls"] == agent_calls + len(op.requests)
    child = children[0]
    assert child["operator"] == "expand" and child["variant"]["model_params"] == {"temperature": 0.3}


def test_graph_stops_on_budget(tmp_path: Path, task: Task) -> None:
    ctx = make_ctx(tmp_path, task, budget=Budget(max_calls=3))
    res = hgm(ctx, max_evals=20, wave_size=2, max_concurrency=2, run_id="hgm-budget")
    assert res.stop_reason.startswith("budget: LLM calls")
    assert res.attempts < 20 and res.usage["calls"] <= 5


def test_graph_stops_at_first_success_when_asked(tmp_path: Path, task: Task) -> None:
    ctx = make_ctx(tmp_path, task)
    res = hgm(ctx, max_evals=12, wave_size=2, max_concurrency=2, stop_at_success=True, run_id="hgm-stop")
    assert res.stop_reason == "an attempt reached the success threshold"
    assert res.attempts < 12 and res.resolved and res.extra["tree"][res.extra["final_node"]]["s"] >= 1


def test_a_threshold_above_the_proxys_reach_warns_in_a_run(tmp_path: Path, task: Task) -> None:
    """Without a docstring example nothing can check a patch, so the proxy tops out at its parse credit."""
    calc = Path(task.repo_path or "") / "calc.py"
    calc.write_text("def add(a, b):\n    return a - b\n")
    _git(calc.parent, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "no doctest")
    bare = task.model_copy(update={"base_commit": _git(calc.parent, "rev-parse", "HEAD")})
    with pytest.warns(UserWarning, match="above the highest reward"):
        res = hgm(make_ctx(tmp_path, bare), max_evals=4, wave_size=2, max_concurrency=2, seed=3, run_id="hgm-cap")
    assert res.extra["warnings"] and res.best_reward == pytest.approx(0.2) and res.resolved


RESUME_ARGS: dict[str, Any] = {"max_evals": 5, "wave_size": 2, "max_concurrency": 2, "seed": "s1"}
CHILD = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import test_hgm
from agent_selfevolve.tasks import Task
task = Task.model_validate_json(Path({task!r}).read_text())
finished = []
def on_event(ev):
    if ev.get("event") == "attempt_finished":
        finished.append(ev["attempt_id"])
        if {kill_after} and len(finished) >= {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
ctx = test_hgm.make_ctx(Path({tmp!r}), task, latency_s=0.05, on_event=on_event)
res = test_hgm.hgm(ctx, **test_hgm.RESUME_ARGS, run_id={run_id!r})
print("RESULT", __import__("json").dumps(res.to_dict()))
"""


def _run_child(tmp: Path, task_file: Path, run_id: str, kill_after: int) -> subprocess.CompletedProcess[str]:
    code = CHILD.format(tests=str(Path(__file__).parent), task=str(task_file), tmp=str(tmp), run_id=run_id,
                        kill_after=kill_after)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ})


def test_resume_after_kill_9_has_no_duplicates_and_same_decisions(tmp_path: Path, task: Task) -> None:
    task_file = tmp_path / "task.json"
    task_file.write_text(task.model_dump_json())
    killed = _run_child(tmp_path, task_file, "hgm-kill", kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = TrajectoryStore(tmp_path / "runs" / "store.sqlite")
    assert 3 <= store.count("hgm-kill") < 5
    resumed = _run_child(tmp_path, task_file, "hgm-kill", kill_after=0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    res = json.loads(resumed.stdout.split("RESULT", 1)[1])
    rows = store._conn.execute("SELECT id FROM attempts WHERE run_id='hgm-kill'").fetchall()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 5 == res["attempts"]
    assert sorted(ids) == sorted(a for n in res["extra"]["tree"].values() for a in n["attempt_ids"])
    # an uninterrupted run with the same seed takes exactly the same decisions
    ref = hgm(make_ctx(tmp_path, task), **RESUME_ARGS, run_id="hgm-clean").to_dict()

    def strip(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "attempt_id"} for d in log]

    assert strip(res["extra"]["decisions"]) == strip(ref["extra"]["decisions"])
    assert res["extra"]["final_node"] == ref["extra"]["final_node"]


def test_greedy_first_makes_the_roots_first_evaluation_greedy_and_keeps_it_a_candidate(
        tmp_path: Path, task: Task) -> None:
    """FAKE models. The root's first evaluation runs at temperature 0 (no sampling seed) as operator 'greedy'.
    When the tree finds a better reward, that wins; when nothing does (every attempt submits at reward 0), the
    greedy attempt is the answer even though the final variant is another node."""
    ctx = make_ctx(tmp_path, task)
    res = hgm(ctx, max_evals=6, wave_size=2, max_concurrency=2, seed=3, greedy_first=True, seed_evaluations=True,
              run_id="hgm-greedy")
    greedy = ctx.store.get("hgm-greedy:n0:e0")
    assert greedy is not None and greedy.operator == "greedy" and greedy.node_id == "n0"
    model = ctx.model
    assert isinstance(model, ScriptedFakeModel)
    greedy_calls = [p for p in model.params if p.get("temperature") == 0.0]
    calls = sum(m["role"] == "assistant" for m in greedy.messages)
    assert calls and greedy_calls == [{"temperature": 0.0}] * calls  # its calls only, unseeded
    assert all("seed" in p for p in model.params if p.get("temperature") != 0.0)  # the others: seeded samples
    assert res.resolved and res.best_attempt_id != "hgm-greedy:n0:e0"  # a higher reward beats greedy

    def no_fix(messages: list[dict[str, Any]]) -> str:
        return '{"diagnosis": "unclear", "strategy": "look around", "guidance": "read calc.py"}'

    for greedy_first, run_id in ((True, "hgm-tie"), (False, "hgm-tie-off")):
        ctx = make_ctx(tmp_path, task)
        ctx.operator_model = ScriptedFakeModel(no_fix, name="fake/operator")
        res = hgm(ctx, max_evals=5, wave_size=1, max_concurrency=1, seed=3, greedy_first=greedy_first,
                  run_id=run_id)
        assert res.best_reward == 0.0 and res.extra["final_node"] != "n0"
        chosen = ctx.store.get(res.best_attempt_id or "")
        assert chosen is not None and (chosen.operator == "greedy") == greedy_first
