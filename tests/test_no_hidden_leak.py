"""Nothing from the hidden evaluation ever reaches a model: every strategy, every selection mode (the oracle
included), every prompt the FAKE models receive (the agent's, the operators', the value model's, the judge's).

Markers are planted where a leak would carry them: in the hidden tests' content (`test_patch`), in the hidden
test ids (FAIL_TO_PASS, which also name the hidden file and function) and in the verdict's details (added to what
the real grader returns). A hidden reward would show as '(tests)' after it; in an oracle run (selection by hidden
tests) no reward may show at all.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.agent import Limits
from agent_selfevolve.envs.base import Evaluation
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.base import Message
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.search import best_of_n, hgm, mcts, se_agent
from agent_selfevolve.search.common import SearchContext, SearchResult
from agent_selfevolve.search.hgm import DIAGNOSIS_SYSTEM
from agent_selfevolve.search.operators import operator_kind
from agent_selfevolve.search.rewards import llm_judge
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

MARK_PATCH = "HIDDENPATCH_MARK_31f7"
MARK_ID = "hiddenid_mark_88c2"
MARK_VERDICT = "HIDDENVERDICT_MARK_5d0e"
MARKERS = (MARK_PATCH, MARK_ID, MARK_VERDICT)
FIX = "FIX-IT"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_task(root: Path) -> Task:
    """calc.add subtracts; a visible test and a docstring example let the proxy check a patch; the hidden test
    (file, function and content all marked) checks 2 + 3."""
    repo = root / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text('def add(a, b):\n    """\n    >>> add(2, 3)\n    5\n    """\n    return a - b\n')
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\n\ndef test_zero():\n"
                                                 "    assert add(1, 0) == 1\n")
    (repo / "conftest.py").write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    hidden = f"# {MARK_PATCH}\nfrom calc import add\n\n\ndef test_{MARK_ID}():\n    assert add(2, 3) == 5\n"
    name = f"tests/test_{MARK_ID}.py"
    test_patch = (f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n"
                  f"@@ -0,0 +1,{len(hidden.splitlines())} @@\n" + "".join(f"+{ln}\n" for ln in hidden.splitlines()))
    return Task(instance_id="leak-1", problem_statement="add(2, 3) returns -1 instead of 5", repo_path=str(repo),
                base_commit=_git(repo, "rev-parse", "HEAD"), test_patch=test_patch,
                FAIL_TO_PASS=[f"{name}::test_{MARK_ID}"], PASS_TO_PASS=["tests/test_calc.py::test_zero"],
                test_cmd="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest -rA --tb=no -p no:cacheprovider {tests}")


def responder(messages: list[Message]) -> Any:
    """Agent, SE-Agent operators, MCTS value model and HGM diagnosis in one FAKE model. After writing a
    reproduction script the agent edits add(): right when an operator told it to (FIX-IT in its first prompt),
    wrong otherwise."""
    kind = operator_kind(messages)
    if kind == "rate":
        return json.dumps({"quality": 5, "blind_spots": ["x"], "risks": [], "worked": "read calc.py"})
    if kind == "revise":  # unusable: SE-Agent falls back to its own guidance text, which reaches the agent
        return "I would try harder."
    if kind == "recombine":
        return json.dumps({"strategy": "edit calc.add", "guidance": f"{FIX}: make add return a + b"})
    if kind == "value":
        return json.dumps({"value": 50, "explanation": f"{FIX}: edit calc.add next"})
    if messages[0]["content"] == DIAGNOSIS_SYSTEM:
        return json.dumps({"diagnosis": "never edited", "strategy": "edit", "guidance": f"{FIX}: a + b"})
    turn = sum(1 for m in messages if m["role"] == "assistant")
    edit = "return a + b" if FIX in str(messages[1]["content"]) else "return a * b"
    moves = [bash("cat calc.py"),
             bash("printf 'from calc import add\\nprint(add(2, 3))\\n' > reproduce_bug.py && python reproduce_bug.py"),
             tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": edit}),
             tool_call("submit", {})]
    return moves[min(turn, len(moves) - 1)]


STRATEGIES = {
    "best_of_n": lambda ctx, rid: best_of_n(ctx, n=2, run_id=rid, max_concurrency=2),
    "se_agent": lambda ctx, rid: se_agent(ctx, pool_size=2, generations=1, elites=2, revisions=1, recombinations=1,
                                          strategies=["read first", "grep first"], run_id=rid, max_concurrency=2),
    "hgm": lambda ctx, rid: hgm(ctx, max_evals=3, wave_size=1, max_concurrency=1, seed=1, run_id=rid),
    "mcts": lambda ctx, rid: mcts(ctx, max_iterations=2, children=2, step_chunk=2, stop_at_success=False,
                                  run_id=rid, max_concurrency=2),
}


@pytest.fixture
def marked_verdicts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The real grader's verdict, with a marker in its details (as test names and output would be)."""
    real = CodingEnvironment.evaluate
    seen: list[dict[str, Any]] = []

    def evaluate(self: CodingEnvironment, outcome: dict[str, Any] | None = None) -> Evaluation:
        ev = real(self, outcome)
        ev.details = {**ev.details, "note": f"{MARK_VERDICT}: resolved={ev.resolved}", "test_output": MARK_VERDICT}
        seen.append(ev.to_dict())
        return ev

    monkeypatch.setattr(CodingEnvironment, "evaluate", evaluate)
    return seen


def leaks(prompt: str, task: Task, oracle: bool) -> list[str]:
    found = [m for m in MARKERS if m.lower() in prompt.lower()]
    found += ["(tests)"] * ("(tests)" in prompt) + ["test_patch"] * (task.test_patch.strip() in prompt)
    if oracle:  # the selection reward is the hidden verdict: no reward, nor a word on failure, may appear
        found += re.findall(r"reward\W{0,3}\d|failed attempts|none failed|low-reward", prompt, re.I)
    return found


@pytest.mark.parametrize("select_with", ["proxy", "tests", "judge"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_no_prompt_carries_the_hidden_tests_or_their_verdict(strategy: str, select_with: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             marked_verdicts: list[dict[str, Any]]) -> None:
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(tmp_path / "cache"))
    task = make_task(tmp_path)
    model = ScriptedFakeModel(responder)
    judge_model = ScriptedFakeModel(lambda m: '{"score": 6, "reason": "plausible"}', name="fake/judge")
    ctx = SearchContext(task=task, model=model, store=TrajectoryStore(tmp_path / "s.sqlite"),
                        limits=Limits(max_steps=6), env_options={"isolate": False}, select_with=select_with,
                        judge=llm_judge(judge_model) if select_with == "judge" else None)
    result: SearchResult = STRATEGIES[strategy](ctx, f"{strategy}-{select_with}")

    assert result.oracle == (select_with == "tests") and result.selection_source == select_with
    assert marked_verdicts, "the hidden tests graded attempts, so there was a verdict to leak"
    trajs = ctx.store.attempts(run_id=f"{strategy}-{select_with}")
    assert trajs and all(t.selection is None or t.selection["source"] == select_with for t in trajs)
    prompts = [json.dumps(r) for r in model.requests + judge_model.requests]
    if strategy != "best_of_n" or select_with == "judge":
        assert any("Outcome: status=" in p for p in prompts), "operators, value model or judge read summaries"
    bad = {i: found for i, p in enumerate(prompts) if (found := leaks(p, task, select_with == "tests"))}
    assert not bad, f"hidden information in {len(bad)} prompt(s): {bad}"


def test_a_grading_crash_stays_in_the_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grader failure names hidden files in its message: it must not become the attempt's status or exit
    message (which summaries show), and a batch still counts the instance as an error."""
    from agent_selfevolve.attempt import run_attempt
    from agent_selfevolve.batch import BatchConfig, run_batch
    from agent_selfevolve.search.summary import summarize_trajectory

    def crash(self: CodingEnvironment, outcome: dict[str, Any] | None = None) -> Evaluation:
        raise RuntimeError(f"git checkout HEAD -- tests/test_{MARK_ID}.py failed")

    monkeypatch.setattr(CodingEnvironment, "evaluate", crash)
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(tmp_path / "cache"))
    task = make_task(tmp_path)
    traj = run_attempt(task, ScriptedFakeModel(responder), env_options={"isolate": False})
    assert traj.status == "submitted" and traj.selection is not None and traj.selection["source"] == "proxy"
    assert MARK_ID in traj.evaluation["details"]["grading_error"] and not traj.resolved
    assert MARK_ID not in summarize_trajectory(traj) and MARK_ID not in traj.exit_message

    from agent_selfevolve import models

    monkeypatch.setattr(models, "make_model", lambda spec, **kw: ScriptedFakeModel(responder))
    summary = run_batch([task], tmp_path / "out", BatchConfig(model="fake:x"), executor="inline")
    assert summary["error_ids"] == [task.instance_id] and summary["resolved_instances"] == 0
