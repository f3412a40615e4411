"""bench/revision_diversity.py asks each policy exactly the revision context the agent asked (the first turn with the
failed check, never the wrong code), knows which answer was being revised, tells functions apart by their code and
not their docstrings, and counts the paired summary right. The attempt runs through the real agent and sandbox,
answered by a FAKE scripted model (not an LLM)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType

import pytest
from conftest import WORDS_STUB, load_bench_module, solution_task, words_with

from agent_selfevolve.action_format import FencedText
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.setups import get_setup
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

WRONG_MARK = "WRONG_CODE_MARK_5c1"
RIGHT = words_with("    return s.replace(',', ' ').split()")
WRONG = words_with(f"    {WRONG_MARK} = 1\n    return s.split(',')")


def _bench() -> ModuleType:
    return load_bench_module("revision_diversity")


def _recorded_revision(tmp_path: Path, instance_id: str) -> tuple[Task, ScriptedFakeModel]:
    """A task whose attempt (real agent and sandbox, FAKE scripted model) answers wrong, then revises it right; the
    attempt is recorded in `tmp_path/runs.sqlite`."""
    hidden = "from solution import words\n\n\ndef test_hidden():\n    assert words('x,y z') == ['x', 'y', 'z']\n"
    task = solution_task(tmp_path, WORDS_STUB, hidden, "test_hidden", instance_id)
    model = ScriptedFakeModel([f"```python\n{WRONG}```", f"```python\n{RIGHT}```"], supports_tools=False)  # FAKE
    traj = run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id="a1", run_id="r1"),
                       agent=get_setup("selfcheck"))
    assert traj.resolved and len(model.requests) == 2
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    store.record(traj)
    store.close()
    return task, model


def test_the_prompt_is_the_fresh_revision_the_agent_asked(tmp_path: Path) -> None:
    bench = _bench()
    _, model = _recorded_revision(tmp_path, "humaneval__7")
    prompts = bench.revision_prompts([tmp_path / "runs.sqlite"], {"humaneval__7"}, 5)
    assert [p["task_id"] for p in prompts] == ["humaneval__7"]
    shown = FencedText().render_history(copy.deepcopy(prompts[0]["messages"]))
    assert shown == model.requests[1]  # what the agent sent for the revision, to the message
    assert WRONG_MARK not in str(prompts[0]["messages"]) and "Expected" in str(prompts[0]["messages"])
    assert WRONG_MARK in prompts[0]["failed_reply"]
    assert bench.revision_prompts([tmp_path / "runs.sqlite"], {"humaneval__8"}, 5) == []  # not held out: not asked


def test_functions_differing_only_in_docstrings_or_layout_are_one_answer() -> None:
    key = _bench().function_key
    assert key(RIGHT) == key(RIGHT.replace("Split s at commas and spaces.", "Other words.").replace("(',', ' ')",
                                                                                                    "(',',' ')"))
    assert key(RIGHT) != key(WRONG)
    assert key(None) == "no-code" and key("def f(:\n") != key("def g(:\n")


def _row(policy: str, task: str, keys: list[str], passed: list[bool], failed: str = "w") -> dict:
    return {"policy": policy, "task_id": task, "failed_key": failed,
            "samples": [{"key": k, "resolved": r, "tokens": 10, "logprob_sum": -1.0} for k, r in zip(keys, passed,
                                                                                                      strict=True)]}


def test_the_summary_pairs_policies_by_prompt() -> None:
    bench = _bench()
    prompts = [{"task_id": t} for t in ("humaneval__1", "humaneval__2", "humaneval__3")]
    lines = [_row("base", "humaneval__1", ["a", "b", "c"], [True, False, False]),
             _row("adapter", "humaneval__1", ["a", "a", "a"], [True, True, True]),
             _row("base", "humaneval__2", ["w", "b", "b"], [False, False, False]),
             _row("adapter", "humaneval__2", ["w", "w", "x"], [False, False, True]),
             _row("base", "humaneval__3", ["a", "b", "c"], [True, False, False])]  # no adapter line: left out
    out = bench.summarize(lines, prompts)
    assert out["prompts"] == 2
    base, adapter = out["policies"]["base"], out["policies"]["adapter"]
    assert base["samples"] == adapter["samples"] == 6
    assert base["distinct_per_prompt"] == pytest.approx(2.5) and adapter["distinct_per_prompt"] == pytest.approx(1.5)
    assert base["gave_back_failed_answer"] == 1 and adapter["gave_back_failed_answer"] == 2
    assert base["prompts_with_a_pass"] == 1 and adapter["prompts_with_a_pass"] == 2
    assert adapter["pass_rate"] == pytest.approx(4 / 6) and base["mean_logprob_per_token"] == pytest.approx(-0.1)
    assert out["adapter_distinct_vs_base"] == {"fewer": 1, "same": 1, "more": 0}
    assert out["pass_at_k_base_to_adapter"]["gained"] == 1 and out["pass_at_k_base_to_adapter"]["lost"] == 0


def test_a_factory_reply_goes_through_the_agents_python_tool(tmp_path: Path) -> None:
    """Factory prompts: the suite's own held-out attempts only, and each sampled reply written by the `python` tool
    on a fresh checkout, then graded there; giving back the code the task started with is counted as such."""
    bench = _bench()
    task, _ = _recorded_revision(tmp_path, "factory__words-1a2b")
    held = {"factory__words-1a2b", "humaneval__7"}
    prompts = bench.revision_prompts([tmp_path / "runs.sqlite"], held, 5, "factory")
    assert [p["task_id"] for p in prompts] == ["factory__words-1a2b"]
    assert bench.revision_prompts([tmp_path / "runs.sqlite"], held, 5) == []  # the HumanEval suite: none
    assert WRONG_MARK in prompts[0]["failed_reply"] and WRONG_MARK not in str(prompts[0]["messages"])

    right = bench.grade_in_repo(task, f"Fixed.\n```python\n{RIGHT}```")
    assert right[1:] == (True, False) and right[0] == bench.function_key(RIGHT)
    assert bench.grade_in_repo(task, f"```python\n{WRONG}```")[1:] == (False, False)
    assert bench.grade_in_repo(task, f"```python\n{WORDS_STUB}```")[1:] == (False, True)  # the original code back
    assert bench.grade_in_repo(task, "The code looks right to me.") == (bench.function_key(None), False, False)


def test_the_summary_counts_original_code_only_where_it_was_graded() -> None:
    bench = _bench()
    prompts = [{"task_id": "factory__a-1"}]
    lines = [_row("base", "factory__a-1", ["a", "b"], [False, True]), _row("adapter", "factory__a-1", ["o", "o"],
                                                                            [False, False])]
    for line, original in zip(lines, ([False, False], [True, True]), strict=True):
        for s, o in zip(line["samples"], original, strict=True):
            s["original"] = o
    out = bench.summarize(lines, prompts)
    assert out["policies"]["base"]["gave_back_original_code"] == 0
    assert out["policies"]["adapter"]["gave_back_original_code"] == 2
    assert "gave_back_original_code" not in bench.summarize([_row("base", "factory__a-1", ["a"], [True]),
                                                             _row("adapter", "factory__a-1", ["a"], [True])],
                                                            prompts)["policies"]["base"]


def test_factory_prompts_take_the_held_out_projects_in_turn() -> None:
    order = _bench()._in_order
    ids = ["factory__b-2", "factory__a-1", "factory__a-2", "factory__a-3", "factory__b-1", "factory__c-1"]
    assert [p["task_id"] for p in order([{"task_id": i} for i in ids])] == \
        ["factory__a-1", "factory__b-1", "factory__c-1", "factory__a-2", "factory__b-2", "factory__a-3"]
    assert [p["task_id"] for p in order([{"task_id": i} for i in ("humaneval__10", "humaneval__9")])] == \
        ["humaneval__9", "humaneval__10"]
