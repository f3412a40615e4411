"""SE-Agent evolution with the scripted FAKE model on a tiny git repo: operator order and inputs, guidance
reaching the child's prompt, elites, budget stop, lineage, task scoping, and resume after kill -9.
(The operators' own children and guidance: test_se_agent_operators.py.)"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import kill_9_when_recorded

from agent_selfevolve.models.base import Message
from agent_selfevolve.models.fake import Reply, ScriptedFakeModel, bash, tool_call
from agent_selfevolve.search.common import Budget, SearchContext
from agent_selfevolve.search.operators import (
    best_pairs,
    jaccard_distance,
    operator_kind,
    parse_plan,
    parse_rating,
    select_diverse,
    trajectory_features,
)
from agent_selfevolve.search.se_agent import se_agent
from agent_selfevolve.search.summary import summarize_trajectory
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
STRATS = ["STRAT-A read the code.", "STRAT-B look at the tests.", "STRAT-C submit at once.", "STRAT-D guess."]
HIDDEN_MARK = "HIDDEN-VERDICT-MARK-7a1"
"""In the hidden test's failure message: it is in every failing attempt's evaluation, and must never be in a prompt."""
TEST_PATCH = "\n".join([
    "diff --git a/tests/test_calc.py b/tests/test_calc.py", "--- a/tests/test_calc.py", "+++ b/tests/test_calc.py",
    "@@ -2,3 +2,6 @@ from calc import add", " ", " def test_zero():", "     assert add(1, 0) == 1", "+",
    "+def test_add():", f"+    assert add(2, 3) == 5, '{HIDDEN_MARK}'", ""])


def make_task(root: Path) -> Task:
    """A repo whose add() subtracts; the hidden test (test_patch) checks 2 + 3."""
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\ndef test_zero():\n"
                                                 "    assert add(1, 0) == 1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    return Task(instance_id="calc-1", problem_statement="add(2, 3) returns -1 instead of 5", repo_path=str(repo),
                base_commit=git("rev-parse", "HEAD").strip(), test_patch=TEST_PATCH,
                FAIL_TO_PASS=["tests/test_calc.py::test_add"], PASS_TO_PASS=["tests/test_calc.py::test_zero"],
                test_cmd="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest --no-header -rA --tb=no "
                         "-p no:cacheprovider {tests}")


def plan_for(prompt: str) -> list[Reply]:
    """The fake agent's moves, chosen by markers in its first prompt (strategy or guidance)."""
    submit = tool_call("submit", {})
    if "FIX-IT" in prompt:
        return [bash("grep -n return calc.py"), bash("sed -i 's/a - b/a + b/' calc.py"), submit]
    if "STRAT-A" in prompt:
        return [bash("cat calc.py"), bash("echo '# note' >> notes.py"), submit]  # a change the proxy cannot check
    if "STRAT-B" in prompt:
        return [bash("ls tests"), bash("echo x > notes.txt"), submit]
    return [submit]


def default_rate(user: str) -> str:
    quality = 5
    for marker, q in (("Be terse", 8.5), ("STRAT-A", 9), ("STRAT-B", 6), ("STRAT-C", 2), ("STRAT-D", 1)):
        if marker in user:
            quality = q
            break
    return json.dumps({"quality": quality, "blind_spots": ["did not run the tests"], "risks": [],
                       "worked": "reading calc.py" if "STRAT-A" in user else ""})


class Scenario:
    """A responder for one fake model that answers agent calls and operator calls (told apart by the system
    prompt), and logs every operator call as (kind, user prompt) in order."""

    def __init__(self, ops: dict[str, Callable[[str], Reply]] | None = None):
        self.ops: dict[str, Callable[[str], Reply]] = {
            "rate": default_rate,
            "revise": lambda u: json.dumps({"strategy": "STRAT-R orthogonal: test first.", "failure_points": ["x"],
                                            "guidance": "REVISION-GUIDANCE: FIX-IT by making add return a + b."}),
            "recombine": lambda u: "```json\n" + json.dumps({"strategy": "STRAT-X merged.",
                                                             "guidance": "RECOMB-GUIDANCE: read then edit."}) + "\n```",
            "refine": lambda u: json.dumps({"strategy": "STRAT-F finish it.", "risks": ["REFINE-RISK: notes only"],
                                            "guidance": "REFINE-GUIDANCE: keep the note, then FIX-IT."}),
            **(ops or {})}
        self.op_calls: list[tuple[str, str]] = []

    def __call__(self, messages: list[Message]) -> Reply:
        kind = operator_kind(messages)
        if kind is not None:
            user = messages[-1]["content"]
            self.op_calls.append((kind, user))
            return self.ops[kind](user)
        if "CRASH-ME" in messages[1]["content"]:
            raise RuntimeError("the agent's model blew up")
        moves = plan_for(messages[1]["content"])
        done = sum(1 for m in messages if m["role"] == "assistant")
        return moves[min(done, len(moves) - 1)]


def assistant_turns(request: list[Message]) -> int:
    return sum(1 for m in request if m["role"] == "assistant")


def agent_requests(model: ScriptedFakeModel, prompt: str | None = None) -> list[list[Message]]:
    """Every request the agent (not an operator) sent, or only those of the attempt whose first prompt is `prompt`."""
    return [r for r in model.requests if operator_kind(r) is None and prompt in (None, r[1]["content"])]


def prompts_run(model: ScriptedFakeModel) -> set[str]:
    """The first user prompt of every attempt the agent model worked on (replayed turns cost no request)."""
    return {r[1]["content"] for r in agent_requests(model)}


def agent_prompt(model: ScriptedFakeModel, store: TrajectoryStore, attempt_id: str) -> str:
    """The first user prompt of the attempt `attempt_id`, as the model received it (every attempt of these
    searches has its own strategy or guidance, so its first prompt names it)."""
    traj = store.get(attempt_id)
    assert traj is not None, f"no attempt {attempt_id}"
    prompt = traj.messages[1]["content"]
    requests = agent_requests(model, prompt)
    first = min((assistant_turns(r) for r in requests), default=-1)  # after the replayed turns, if any
    assert sum(assistant_turns(r) == first for r in requests) == 1, f"the model never (or twice) started {attempt_id}"
    return prompt


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Task, TrajectoryStore]:
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(tmp_path / "cache"))
    return make_task(tmp_path), TrajectoryStore(tmp_path / "runs" / "store.sqlite")


def lineage(store: TrajectoryStore, run_id: str) -> dict[str, tuple[str, list[str]]]:
    rows = store._conn.execute("SELECT id, operator, parent_ids FROM attempts WHERE run_id=? AND task_id=?",
                               (run_id, "calc-1")).fetchall()
    return {r[0]: (r[1], json.loads(r[2])) for r in rows}


# --- pure functions ---------------------------------------------------------------------------------------------

def test_diversity_elites_and_pairs_prefer_score_plus_diversity() -> None:
    feats = {"a": frozenset({"x", "y"}), "a2": frozenset({"x", "y"}), "b": frozenset({"z", "w"}),
             "c": frozenset({"x", "q"})}
    score = {"a": 0.9, "a2": 0.88, "b": 0.7, "c": 0.2}
    assert jaccard_distance(feats["a"], feats["a2"]) == 0.0
    assert jaccard_distance(feats["a"], feats["b"]) == 1.0
    assert jaccard_distance(frozenset(), frozenset()) == 0.0
    assert select_diverse(list(score), score, feats, 2, weight=0.0) == ["a", "a2"]
    assert select_diverse(list(score), score, feats, 2, weight=0.5) == ["a", "b"]
    assert best_pairs(list(score), score, feats, 1, weight=0.0) == [("a", "a2")]
    assert best_pairs(list(score), score, feats, 1, weight=0.5) == [("a", "b")]
    assert best_pairs(list(score), score, feats, 1, 0.5, exclude={frozenset(("a", "b"))}) == [("a2", "b")]


def test_operator_replies_are_parsed_robustly() -> None:
    assert parse_rating('Sure!\n```json\n{"quality": "7/10", "blind_spots": "no tests"}\n```') == {
        "quality": 0.7, "blind_spots": ["no tests"], "risks": [], "worked": ""}
    assert parse_rating('{"quality": 42}')["quality"] == 1.0
    assert parse_rating("I would give it a seven") is None
    assert parse_rating('{"quality": true}') is None
    assert parse_plan('text {"guidance": "do X", "strategy": 3, "risks": "a risk"} tail') == {
        "guidance": "do X", "strategy": "", "failure_points": [], "risks": ["a risk"]}
    assert parse_plan('{"strategy": "only a strategy"}') is None
    assert parse_plan("{not json") is None


def test_features_capture_files_commands_and_paths() -> None:
    traj = Trajectory("t", "calc-1", patch="diff --git a/calc.py b/calc.py\n", steps=[
        {"index": 0, "action": {"name": "bash", "arguments": {"command": "grep -rn add src/calc.py | head -n 3"}}},
        {"index": 1, "action": {"name": "str_replace", "arguments": {"path": "calc.py"}}},
        {"index": 2, "action": None, "format_error": "x"}])
    assert trajectory_features(traj) == {"file:calc.py", "bash:grep", "bash:head", "path:src/calc.py",
                                         "str_replace:calc.py"}


# --- whole searches ---------------------------------------------------------------------------------------------

def test_operators_order_inputs_guidance_elites_lineage_and_scoping(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    foreign = "FOREIGN-SECRET history"
    for run_id, task_id in (("other-run", "calc-1"), ("se-1", "other-task")):  # never to be read by this run
        store.record(Trajectory(f"{run_id}:{task_id}:x", task_id, run_id=run_id, strategy=foreign, status="submitted",
                                steps=[{"index": 0, "action": {"name": "bash", "arguments": {"command": foreign}}}]))
    scenario = Scenario()
    model = ScriptedFakeModel(scenario)
    ctx = SearchContext(task=task, model=model, store=store)
    result = se_agent(ctx, pool_size=5, generations=1, elites=3, revisions=1, recombinations=1, strategies=STRATS,
                      run_id="se-1", max_concurrency=2)

    ids = {k: f"se-1:g0:initial:{k}" for k in range(4)}
    a, b, c, a2 = ids[0], ids[1], ids[2], "se-1:g0:mutation:4"
    rev, rec, ref = "se-1:g1:revision:0", "se-1:g1:recombination:0", "se-1:g1:refinement:0"
    kinds = [k for k, _ in scenario.op_calls]
    assert kinds == ["rate"] * 5 + ["revise", "recombine", "refine"] + ["rate"] * 3
    assert all(foreign not in u for _, u in scenario.op_calls)
    # the revision reflects on the failing trajectory's own summary (the best-scored failure: A)
    assert summarize_trajectory(store.get(a)) in scenario.op_calls[5][1]
    assert "Strategies already tried:" in scenario.op_calls[5][1]
    # recombination: the best pair by score + diversity among the elites, not the last two (D, A2)
    recomb_prompt = scenario.op_calls[6][1]
    assert summarize_trajectory(store.get(a)) in recomb_prompt and summarize_trajectory(store.get(b)) in recomb_prompt
    assert "Attempt se-1:g0:mutation:4" not in recomb_prompt and "Attempt se-1:g0:initial:3" not in recomb_prompt
    # elites: A first, then B and C for diversity, not A2 (a near copy of A with a higher score than B)
    assert result.extra["history"][0]["elite_ids"] == [a, b, c]
    # the operator's guidance and strategy reach the child's first prompt
    prompt = agent_prompt(model, store, rev)
    assert "REVISION-GUIDANCE: FIX-IT" in prompt and "Approach to take: STRAT-R orthogonal" in prompt
    assert "RECOMB-GUIDANCE: read then edit." in agent_prompt(model, store, rec)
    # lineage in the store
    assert lineage(store, "se-1") == {
        **{i: ("initial", []) for i in ids.values()}, a2: ("mutation", [a]), rev: ("revision", [a]),
        rec: ("recombination", [a, b]), ref: ("refinement", [a])}
    assert result.best_attempt_id in (rev, ref) and result.best_reward == 1.0 and result.resolved
    scores = result.extra["scores"]
    assert scores[result.best_attempt_id] == max(scores.values())  # equal rewards: the best score wins
    assert result.stop_reason == "perfect reward after generation 1"
    agent_calls = sum(1 for r in model.requests if operator_kind(r) is None)
    assert result.usage["calls"] == agent_calls + 11  # operator calls count against the budget too
    assert result.extra["operator_calls"] == 11 and result.extra["operator_fallbacks"] == 0
    assert store.get_run("se-1")["status"] == "done"


def test_malformed_operator_replies_fall_back_and_the_search_goes_on(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    scenario = Scenario({"rate": lambda u: "great attempt, 8 out of 10", "revise": lambda u: "I cannot comply",
                         "recombine": lambda u: {"error": "provider down"}, "refine": lambda u: "{'no': json"})
    model = ScriptedFakeModel(scenario)
    result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=2, generations=1, elites=2,
                      revisions=1, recombinations=1, strategies=STRATS[:2], run_id="se-bad", max_concurrency=2)
    assert result.attempts == 5 and result.stop_reason == "completed 1 generations"
    log = result.extra["operators"]
    assert [e["operator"] for e in log] == ["rate", "rate", "revise", "recombine", "refine", "rate", "rate", "rate"]
    assert not any(e["ok"] for e in log) and result.extra["operator_fallbacks"] == 8
    assert "provider down" in log[3]["error"] and log[2]["reply"] == "I cannot comply"
    prompt = agent_prompt(model, store, "se-bad:g1:revision:0")
    assert "Do not repeat it" in prompt and STRATS[0] in prompt  # fallback guidance + an untried strategy
    assert "Two earlier attempts used different approaches" in agent_prompt(model, store, "se-bad:g1:recombination:0")
    assert "its work is already in place" in agent_prompt(model, store, "se-bad:g1:refinement:0")


def test_budget_stops_cleanly_with_the_best_so_far(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    scenario = Scenario()
    model = ScriptedFakeModel(scenario)
    # three pool attempts that submit at once (3 calls); the ratings then spend the rest of the budget
    ctx = SearchContext(task=task, model=model, store=store, budget=Budget(max_calls=5))
    result = se_agent(ctx, pool_size=3, generations=3, strategies=["STRAT-C", "STRAT-D", "STRAT-E"],
                      run_id="se-budget", max_concurrency=3)
    assert result.stop_reason.startswith("budget: LLM calls 5 >= 5")
    assert [k for k, _ in scenario.op_calls] == ["rate", "rate"]
    assert result.attempts == 3 and result.best_attempt_id is not None and result.usage["calls"] == 5
    # a budget hit between waves: no further wave is sent
    model2 = ScriptedFakeModel(Scenario())
    ctx2 = SearchContext(task=task, model=model2, store=store, budget=Budget(max_calls=2))
    result2 = se_agent(ctx2, pool_size=6, strategies=["STRAT-C"], run_id="se-budget2", max_concurrency=2)
    assert result2.attempts == 2 and result2.stop_reason.startswith("budget:") and result2.best_attempt_id


def test_converges_without_improvement_and_survives_a_crashed_attempt(env: tuple[Task, TrajectoryStore]) -> None:
    task, store = env
    scenario = Scenario({"rate": lambda u: '{"quality": 3}',
                         "revise": lambda u: json.dumps({"strategy": "STRAT-R", "guidance": "try again"}),
                         "refine": lambda u: json.dumps({"strategy": "STRAT-F", "guidance": "polish it"})})
    model = ScriptedFakeModel(scenario)
    result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=3, generations=5, elites=2,
                      revisions=1, recombinations=1, patience=1, strategies=["STRAT-C", "CRASH-ME", "STRAT-D"],
                      run_id="se-flat", max_concurrency=3)
    assert result.stop_reason.startswith("converged: best score") and result.extra["generations"] == 1
    assert result.attempts == 6 and store.get("se-flat:g0:initial:1").status == "error"
    assert store.get("se-flat:g1:refinement:0").parent_ids != ["se-flat:g0:initial:1"]  # a crash is not refined
    assert "RuntimeError" in store.get("se-flat:g0:initial:1").exit_message
    assert result.extra["scores"]["se-flat:g0:initial:1"] == 0.06  # reward 0, quality 0.3, efficiency 0
    assert result.best_attempt_id == result.extra["best_score_attempt_id"]  # equal rewards: the best score wins


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
se_agent(SearchContext(task=task, model=model, store=TrajectoryStore(sys.argv[2])), pool_size=6, generations=1,
         elites=3, revisions=1, recombinations=1, strategies=STRATS, run_id="se-kill", max_concurrency=2)
"""


def test_resume_after_kill_9_reruns_nothing_finished(env: tuple[Task, TrajectoryStore], tmp_path: Path) -> None:
    task, store = env
    before = kill_9_when_recorded(RESUME_SCRIPT, task, store, "se-kill", 3, tmp_path)
    assert 3 <= len(before) < 9

    model = ScriptedFakeModel(Scenario())
    result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=6, generations=1, elites=3,
                      revisions=1, recombinations=1, strategies=STRATS, run_id="se-kill", max_concurrency=2)
    after = dict(store._conn.execute("SELECT id, created_at FROM attempts WHERE run_id='se-kill'").fetchall())
    started = prompts_run(model)  # no finished attempt ran again, not even one step of it
    assert not started & {store.get(i).messages[1]["content"] for i in before}
    assert all(after[i] == t for i, t in before.items())  # nor was it recorded again
    assert len(after) == result.attempts == 9  # 6 pool + 1 revision + 1 recombination + 1 refinement, no duplicates
    assert len({r[0] for r in store._conn.execute("SELECT id FROM attempts")}) == store.count()
    ops = lineage(store, "se-kill")
    assert sorted(o for o, _ in ops.values()) == ["initial"] * 4 + ["mutation"] * 2 + ["recombination", "refinement",
                                                                                      "revision"]
    assert result.stop_reason and store.get_run("se-kill")["status"] == "done"


def test_greedy_first_puts_the_plain_greedy_attempt_in_the_pool_and_it_wins_reward_ties(
        env: tuple[Task, TrajectoryStore]) -> None:
    """FAKE model. With `greedy_first` the pool's first member runs without a planning strategy at temperature 0.
    In generation 0 every attempt submits unchanged code (equal proxy rewards) and the rater scores STRAT-D's
    highest: the plain search picks STRAT-D's, the greedy-first one the greedy attempt. A revised child that
    fixes the bug has a higher reward and beats it."""
    task, store = env
    strategies = ["STRAT-C submit at once.", "STRAT-D guess."]
    rate = {"rate": lambda u: json.dumps({"quality": 9 if "STRAT-D" in u else 1})}
    chosen = {}
    for greedy_first in (True, False):
        model = ScriptedFakeModel(Scenario(rate))
        run_id = f"se-greedy-{greedy_first}"
        result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=2, generations=0,
                          strategies=strategies, greedy_first=greedy_first, run_id=run_id, max_concurrency=1)
        attempts = {t.attempt_id: t for t in store.attempts(run_id=run_id)}
        assert len(attempts) == 2 and result.best_reward == 0.0 and not result.resolved
        best_score = result.extra["best_score_attempt_id"]
        assert "STRAT-D" in attempts[best_score].messages[1]["content"]
        chosen[greedy_first] = attempts[result.best_attempt_id or ""]
        if greedy_first:
            greedy = attempts[f"{run_id}:g0:greedy:0"]
            assert greedy.operator == "greedy" and "STRAT-" not in greedy.messages[1]["content"]
            agent_params = [p for p, r in zip(model.params, model.requests, strict=True) if operator_kind(r) is None]
            assert agent_params[0] == {"temperature": 0.0} and all(p.get("temperature") != 0.0
                                                                  for p in agent_params[1:])
    assert chosen[True].operator == "greedy"
    assert "STRAT-D" in chosen[False].messages[1]["content"]
    model = ScriptedFakeModel(Scenario(rate))
    result = se_agent(SearchContext(task=task, model=model, store=store), pool_size=2, generations=1, revisions=1,
                      recombinations=0, refinements=0, strategies=strategies, greedy_first=True,
                      run_id="se-greedy-fixed", max_concurrency=1)
    assert result.resolved and ":revision:" in (result.best_attempt_id or "")
