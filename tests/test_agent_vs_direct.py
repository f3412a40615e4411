"""bench/agent_vs_direct.py: the direct answer is graded as the file it stands for, pairs are counted right, and
a run resumes. FAKE models only (scripted replies, not an LLM)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.sources.humaneval import load_problems


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "agent_vs_direct.py"
    spec = importlib.util.spec_from_file_location("agent_vs_direct", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_vs_direct"] = module
    spec.loader.exec_module(module)
    return module


PROMPT = 'from typing import List\n\n\ndef helper(x):\n    return x * 2\n\n\ndef twice(xs: List[int]) -> List[int]:\n' \
         '    """Each doubled."""\n'


def test_program_keeps_the_prompts_imports_and_helpers_the_reply_left_out() -> None:
    avd = _bench()
    reply = "Sure:\n```python\ndef twice(xs: List[int]) -> List[int]:\n    return [helper(x) for x in xs]\n```"
    program = avd.program_from_reply(reply, PROMPT, "twice")
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 (our own test program)
    assert namespace["twice"]([1, 2]) == [2, 4]
    redefined = avd.program_from_reply("```python\ndef helper(x):\n    return 0\ndef twice(xs):\n    return xs\n```",
                                       PROMPT, "twice")
    assert redefined.count("def helper") == 1  # the reply's own helper wins
    assert avd.program_from_reply("no code here", PROMPT, "twice") is None
    assert avd.program_from_reply("```python\ndef other():\n    pass\n```", PROMPT, "twice") is None


def test_exact_mcnemar_and_the_paired_table() -> None:
    avd = _bench()
    six_to_none = [{"arm": arm, "task_id": str(i), "resolved": arm == "direct", "status": "x", "tokens": 1,
                    "seconds": 1} for i in range(6) for arm in ("direct", "agent:x")]
    vs = avd.table(six_to_none, ["direct", "agent:x"], [str(i) for i in range(6)])["agent:x"]["vs_direct"]
    assert vs["only_direct"] == 6 and vs["only_arm"] == 0 and vs["mcnemar_p"] == pytest.approx(0.0312, abs=1e-4)
    rows = [{"arm": "direct", "task_id": "a", "resolved": True, "status": "answered", "tokens": 10, "seconds": 1},
            {"arm": "direct", "task_id": "b", "resolved": False, "status": "answered", "tokens": 10, "seconds": 1},
            {"arm": "agent:x", "task_id": "a", "resolved": False, "status": "step_limit", "tokens": 30, "seconds": 3},
            {"arm": "agent:x", "task_id": "b", "resolved": True, "status": "submitted", "tokens": 50, "seconds": 5}]
    out = avd.table(rows, ["direct", "agent:x"], ["a", "b"])
    assert out["direct"]["resolved"] == 1 and "vs_direct" not in out["direct"]
    assert out["agent:x"]["vs_direct"] == {"paired": 2, "only_direct": 1, "only_arm": 1, "both": 0,
                                           "mcnemar_p": 1.0, "one_sided_p": 0.75}
    assert out["agent:x"]["tokens_per_task"] == 40


def test_direct_arm_grades_the_answer_with_the_hidden_tests_and_resumes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    avd = _bench()
    gold = {p["entry_point"]: p["prompt"] + p["canonical_solution"] for p in load_problems()[:2]}
    calls = []

    def respond(messages: list[dict]) -> str:
        calls.append(1)
        name = next(n for n in gold if f"def {n}(" in messages[-1]["content"])
        return f"```python\n{gold[name] if name == 'has_close_elements' else 'def ' + name + '(x):  return []'}\n```"

    monkeypatch.setattr(avd, "fake_model", lambda: ScriptedFakeModel(respond, supports_tools=False))
    summary = avd.main(["--model", "fake", "--tasks", "0:2", "--arms", "direct", "--out", str(tmp_path)])
    assert summary["arms"]["direct"]["resolved"] == 1  # the gold answer to 0 passes, the wrong one to 1 fails
    again = avd.main(["--model", "fake", "--tasks", "0:2", "--arms", "direct", "--out", str(tmp_path)])
    assert len(calls) == 2 and again["arms"] == summary["arms"]  # resumed: nothing asked twice
    report = avd.main(["--model", "fake", "--tasks", "0:2", "--arms", "direct", "--out", str(tmp_path),
                       "--tag", "fake-0-2", "--report-only"])
    assert len(calls) == 2 and report["arms"] == summary["arms"]  # a report of a run still going asks nothing
    lines = (tmp_path / "agent_vs_direct-fake-0-2.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["humaneval__0", "humaneval__1"]


def test_ingredients_grade_the_first_edit_alone_and_count_what_revising_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE model: on problem 0 the selfcheck agent first writes a wrong function, then the gold one; on problem 1 a
    wrong one only. The first edit alone resolves nothing; revising gained problem 0."""
    avd = _bench()
    problems = load_problems()[:2]
    gold = {p["entry_point"]: p["prompt"] + p["canonical_solution"] for p in problems}

    def respond(messages: list[dict]) -> str:
        name = next(n for n in gold if f"def {n}(" in messages[1 if len(messages) > 1 else 0]["content"])
        if len(messages) == 1:
            return f"```python\ndef {name}(*a):\n    return None\n```"
        # a revision: earlier turns in view, or (the selfcheck set-up's fresh revision) the failed check after the task
        edits = sum(m["role"] == "assistant" for m in messages) + messages[-1]["content"].count("failed the checks")
        if name == "has_close_elements" and edits >= 1:
            return f"```python\n{gold[name]}\n```"
        return f"```python\ndef {name}(*a):\n    return {edits}\n```"

    monkeypatch.setattr(avd, "fake_model", lambda: ScriptedFakeModel(respond, supports_tools=False))
    summary = avd.main(["--model", "fake", "--tasks", "0:2", "--arms", "direct,agent:selfcheck", "--max-steps", "3",
                        "--out", str(tmp_path)])
    assert summary["arms"]["agent:selfcheck"]["resolved"] == 1
    got = summary["ingredients"]["agent:selfcheck"]
    assert got["first_edit_resolved"] == 0 and got["revision_gained"] == 1 and got["revision_lost"] == 0
    assert got["first_edit_vs_direct"] == {"only_direct": 0, "only_first_edit": 0, "mcnemar_p": 1.0}
