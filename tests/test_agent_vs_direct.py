"""bench/agent_vs_direct.py: the direct answer is graded as the file it stands for, pairs are counted right, and
a run resumes; on factory-style repository tasks the direct arm (oracle files) and the agent arms run, the first
edit is replayed whatever tool made it, and neither the gold patch nor the hidden tests reach a prompt. FAKE models
only (scripted replies, not an LLM)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_bench_module

from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.sources.humaneval import load_problems


def _repo_module() -> ModuleType:
    """bench/agent_vs_direct_repo.py, as the bench script imports it."""
    _bench()
    return sys.modules["agent_vs_direct_repo"]


def _bench() -> ModuleType:
    return load_bench_module("agent_vs_direct")


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


# A factory-style project built by hand (faster than a factory run, and with markers placed where only a leak could
# carry them): two tasks, each a base commit with one bug, a gold patch whose added lines carry GOLD, and hidden
# tests (absent from the checkout) that carry HIDDEN.
GOLD, HIDDEN = "zq_gold_patch_marker", "zq_hidden_test_marker"
CORE = '''"""Small helpers."""


def clamp(x, lo=0, hi=10):
    """Bound x to [lo, hi].

    >>> clamp(42)
    10
    """
    if x < lo:
        return lo
    if x > hi:
        return {clamp_high}
    return x


def double(x):
    return {double}
'''
HIDDEN_TESTS = f"""# {HIDDEN}: only the grader has this file
from tinylib import clamp, double


def test_clamp_high():
    assert clamp(42) == 10


def test_clamp_inside():
    assert clamp(5) == 5


def test_double():
    assert double(2) == 4
"""
FACTORY_TEST_CMD = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest --no-header -rA --tb=no -p no:cacheprovider " \
                   "{tests}"
ISSUE = ("tiny 1.0: 1 test of the project's own suite fails\n\nThe following test fails:\n\n- `{test}`\n\n"
         "```\nin {name}:\n    {line}\nE   {error}\n```\n\nThese tests are not in the checkout. Fix the library.\n")


def _git(cwd: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _factory_project(root: Path) -> list[dict]:
    """The tiny project's repository under `root` and its two task records (clamp: easy, double: medium)."""
    from agent_selfevolve.sources.humaneval import file_diff

    repo = root / "tiny"
    (repo / "tinylib").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "tinylib" / "__init__.py").write_text("from tinylib.core import clamp, double\n")
    (repo / "tests" / "test_visible.py").write_text("from tinylib import clamp\n\n\ndef test_clamp_low():\n"
                                                    "    assert clamp(-3) == 0\n")
    _git(repo, "init", "-q")
    bugs = [("clamp", "easy", {"clamp_high": "x", "double": "x * 2"}, {"clamp_high": f"hi  # {GOLD}"},
             "clamp(42) == 10", "assert 42 == 10"),
            ("double", "medium", {"clamp_high": "hi", "double": "x * 3"}, {"double": f"x * 2  # {GOLD}"},
             "double(2) == 4", "assert 6 == 4")]
    records = []
    for name, level, base, fix, call, error in bugs:
        (repo / "tinylib" / "core.py").write_text(CORE.format(**base))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "tiny 1.0")
        _git(repo, "tag", f"base-{name}")
        test = "tests/test_hidden.py::test_" + name + ("_high" if name == "clamp" else "")
        records.append({
            "instance_id": f"factory__tiny-{name}", "repo": "factory/tiny", "repo_path": str(repo),
            "base_commit": _git(repo, "rev-parse", "HEAD"), "version": "1.0", "difficulty": level,
            "problem_statement": ISSUE.format(test=test, name=test.split("::")[1], line=f"assert {call}",
                                              error=error),
            "patch": file_diff("tinylib/core.py", CORE.format(**base), CORE.format(**{**base, **fix})),
            "test_patch": file_diff("tests/test_hidden.py", None, HIDDEN_TESTS), "test_cmd": FACTORY_TEST_CMD,
            "test_files": ["tests/test_hidden.py"], "FAIL_TO_PASS": [test], "test_timeout_s": 60,
            "PASS_TO_PASS": [t for t in ("tests/test_hidden.py::test_clamp_high",
                                         "tests/test_hidden.py::test_clamp_inside", "tests/test_hidden.py::test_double")
                             if t != test]})
    return records


@pytest.fixture
def factory_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding the tiny project's factory task file, as `selfevolve tasks make tiny` leaves it."""
    cache = tmp_path / "cache"
    (cache / "tasks" / "factory").mkdir(parents=True)
    records = _factory_project(tmp_path)
    (cache / "tasks" / "factory" / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(cache))
    return cache


def _fixed(name: str, good: bool, attempt: int = 0) -> str:
    if name == "clamp":
        return ('def clamp(x, lo=0, hi=10):\n    """Bound x.\n\n    >>> clamp(42)\n    10\n    """\n    if x < lo:\n'
                f"        return lo\n    if x > hi:\n        return {'hi' if good else 'lo'}\n    return x\n")
    return f"def double(x):\n    return {'x * 2' if good else f'x + x + {attempt + 1}'}\n"


def test_factory_tasks_are_picked_by_project_level_and_slice(factory_cache: Path) -> None:
    avd = _bench()
    ids = lambda source, s=":": [t.instance_id for t in avd.factory_tasks(source, s)]  # noqa: E731
    assert ids("factory:tiny") == ["factory__tiny-clamp", "factory__tiny-double"]
    assert ids("factory:tiny:easy") == ["factory__tiny-clamp"] and ids("factory:all:medium") == ["factory__tiny-double"]
    assert ids("factory:tiny", "1:2") == ["factory__tiny-double"]
    assert ids("factory:all", "0:1") == ids("factory:tiny:easy")
    assert all(t.repo_path for t in avd.factory_tasks("factory:tiny", ":"))
    with pytest.raises(SystemExit):
        avd.factory_tasks("factory:tiny:trivial", ":")
    with pytest.raises(SystemExit):
        avd.factory_tasks("factory:nosuchproject", ":")


def test_all_factory_projects_take_turns_so_a_slice_mixes_them() -> None:
    from agent_selfevolve.tasks import Task

    ids = ["factory__more_itertools-a1", "factory__more_itertools-a2", "factory__more_itertools-a3",
           "factory__funcy-b1", "factory__toolz-c1", "factory__toolz-c2"]
    tasks = [Task(instance_id=i, repo_path="/nonexistent", problem_statement="x") for i in ids]
    order = [t.instance_id for t in _repo_module().projects_in_turn(tasks)]
    assert order == ["factory__more_itertools-a1", "factory__funcy-b1", "factory__toolz-c1",
                     "factory__more_itertools-a2", "factory__toolz-c2", "factory__more_itertools-a3"]


def test_merge_reply_takes_the_first_block_that_merges() -> None:
    merge_reply = _repo_module().merge_reply
    files = {"pkg/core.py": CORE.format(clamp_high="x", double="x * 2")}
    merged, status = merge_reply(
        "Here:\n```python\ndef unknown():\n    pass\n```\n```python\n" + _fixed("clamp", True) + "```", files)
    assert status == "answered" and merged.path == "pkg/core.py" and merged.replaced == ["clamp"]
    assert "return hi" in merged.text and "def double(x):\n    return x * 2" in merged.text  # the rest is kept
    assert merge_reply("no code", files) == (None, "no_code_block")
    assert merge_reply("```python\ndef unknown():\n    pass\n```", files)[1] == "unmergeable"


def test_factory_direct_and_agent_arms_table_and_ingredients_never_show_the_fix_or_hidden_tests(
        factory_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE model. Direct: the right clamp, a wrong double. Agent (selfcheck): on clamp a wrong first edit (its
    docstring example fails), then the right one; on double a wrong one only. No prompt the fake model received
    holds the gold patch's added lines or the hidden tests (markers planted in both)."""
    avd = _bench()
    tasks = avd.factory_tasks("factory:tiny", ":")
    assert all(GOLD in t.patch and HIDDEN in t.test_patch for t in tasks)  # planted where a leak would come from
    prompts: list[str] = []

    def respond(messages: list[dict]) -> str:
        text = "\n".join(str(m.get("content") or "") for m in messages)
        prompts.append(text)
        name = "clamp" if "test_clamp_high" in text else "double"
        if len(messages) == 1:  # the direct turn
            assert "Fix this issue" in text and "tinylib/core.py" in text and "def double(x):" in text
            return f"```python\n{_fixed(name, name == 'clamp')}```"
        edits = sum(m["role"] == "assistant" for m in messages) + messages[-1]["content"].count("failed the checks")
        return f"```python\n{_fixed(name, name == 'clamp' and edits >= 1, edits)}```"

    monkeypatch.setattr(avd, "fake_model", lambda: ScriptedFakeModel(respond, supports_tools=False))
    summary = avd.main(["--model", "fake", "--source", "factory:tiny", "--arms", "direct,agent:selfcheck",
                        "--max-steps", "3", "--out", str(tmp_path / "out")])
    assert summary["source"] == "factory:tiny" and summary["tasks"] == ":"
    arms = summary["arms"]
    assert arms["direct"]["resolved"] == 1 and arms["direct"]["statuses"] == {"answered": 2}
    assert arms["agent:selfcheck"]["resolved"] == 1 and arms["agent:selfcheck"]["vs_direct"]["both"] == 1
    got = summary["ingredients"]["agent:selfcheck"]
    assert got["tasks"] == 2 and got["first_edit_resolved"] == 0 and got["revision_gained"] == 1
    assert got["first_edit_vs_direct"] == {"only_direct": 1, "only_first_edit": 0, "mcnemar_p": 1.0}
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "agent_vs_direct-fake-factory-tiny-all.jsonl").read_text().splitlines()]
    assert {(r["arm"], r["task_id"], r["resolved"]) for r in rows} == {
        ("direct", "factory__tiny-clamp", True), ("direct", "factory__tiny-double", False),
        ("agent:selfcheck", "factory__tiny-clamp", True), ("agent:selfcheck", "factory__tiny-double", False)}
    assert sum("Fix this issue" in p for p in prompts) == 2 and len(prompts) > 4
    assert not [p for p in prompts if GOLD in p or HIDDEN in p]


def test_direct_function_arm_shows_only_the_edited_definition_and_pairs_the_agent_with_both_direct_arms(
        factory_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FAKE model. `direct:function` is shown `clamp` alone (not the file's `double`, nor the gold patch's added
    line or the hidden tests), and its reply is merged back into the file and graded."""
    avd = _bench()
    prompts: list[str] = []

    def respond(messages: list[dict]) -> str:
        text = str(messages[-1].get("content") or "")
        prompts.append(text)
        name = "clamp" if "test_clamp_high" in text else "double"
        return f"```python\n{_fixed(name, True)}```" if len(messages) == 1 else "```submit\n```"

    monkeypatch.setattr(avd, "fake_model", lambda: ScriptedFakeModel(respond, supports_tools=False))
    summary = avd.main(["--model", "fake", "--source", "factory:tiny:easy", "--arms",
                        "direct,direct:function,agent:selfcheck", "--max-steps", "2", "--out", str(tmp_path)])
    shown = [p for p in prompts if "The code to fix:" in p]
    assert len(shown) == 1 and "tinylib/core.py, lines 4-14:" in shown[0]
    assert "def clamp(x, lo=0, hi=10):" in shown[0] and "def double" not in shown[0]
    assert not [p for p in prompts if GOLD in p or HIDDEN in p]
    arms = summary["arms"]
    assert arms["direct:function"]["resolved"] == 1 and arms["direct:function"]["vs_direct"]["paired"] == 1
    assert {"vs_direct", "vs_direct:function"} <= set(arms["agent:selfcheck"]) and "vs_direct:function" not in \
        arms["direct"]
    row = json.loads((tmp_path / "agent_vs_direct-fake-factory-tiny-easy-all.jsonl").read_text().splitlines()[1])
    assert row["arm"] == "direct:function" and row["completion_tokens"] > 0
    with pytest.raises(SystemExit):
        avd.main(["--model", "fake", "--tasks", "0:1", "--arms", "direct:function", "--out", str(tmp_path)])


def test_edited_definitions_are_the_innermost_around_each_hunk_in_patch_order() -> None:
    from agent_selfevolve.sources.humaneval import file_diff

    old = ("import os\n\n\nclass Box:\n    def put(self, x):\n        return x\n\n    def take(self):\n"
           "        return 1\n\n\ndef helper():\n    return 2\n")
    new = old.replace("return 1", "return 0").replace("return 2", "return 3")
    patch = file_diff("pkg/box.py", old, new) + file_diff("pkg/other.py", "X = 1\n", "X = 2\n")
    files = {"pkg/box.py": old, "pkg/other.py": "X = 1\n"}
    found = _repo_module().edited_definitions(patch, files)
    assert [(d.path, d.qualname) for d in found] == [("pkg/box.py", "Box.take"), ("pkg/box.py", "helper")]
    assert _repo_module().edited_definitions(patch, {"pkg/other.py": "X = 1\n"}) == []  # module level only


def _read_sed_python_steps() -> list[dict[str, Any]]:
    """Recorded steps: a read, an edit by `sed` through bash, then a (wrong) edit by the python tool."""
    read = {"action": {"name": "bash", "arguments": {"command": "cat tinylib/core.py"}}, "info": {"state": "base"}}
    sed = {"action": {"name": "bash", "arguments": {"command": "sed -i 's/x \\* 3/x * 2/' tinylib/core.py"}},
           "info": {"state": "s1"}}
    python = {"action": {"name": "python", "arguments": {"code": _fixed("double", False)}}, "info": {"state": "s2"}}
    return [read, sed, python]


def test_first_edit_is_replayed_whatever_tool_made_it(factory_cache: Path) -> None:
    """The first edit is a `sed` through bash (the old solution.py-only reading took the later python edit); reads
    before it are skipped, and an attempt that never edits has no first edit."""
    from agent_selfevolve.trajectory import Trajectory

    avd = _bench()
    task = avd.factory_tasks("factory:tiny:medium", ":")[0]
    read, sed, python = _read_sed_python_steps()
    replay = _repo_module().first_edit_patch
    patch = replay(task, Trajectory("a", task.instance_id, steps=[read, sed, python]), "selfcheck")
    assert patch and "+    return x * 2" in patch and "x + x" not in patch
    assert avd.CodingEnvironment(task, "first").evaluate({"patch": patch}).resolved
    assert replay(task, Trajectory("b", task.instance_id, steps=[read, read]), "selfcheck") is None


def test_the_patch_after_k_steps_is_what_the_attempt_had_then(factory_cache: Path) -> None:
    """`step_budget.py`'s reading of a shorter budget: after 2 steps the `sed` edit is there and the later python
    edit is not; after all 3 the python edit replaced the function; a read alone leaves no patch."""
    from agent_selfevolve.trajectory import Trajectory

    avd = _bench()
    task = avd.factory_tasks("factory:tiny:medium", ":")[0]
    read, sed, python = _read_sed_python_steps()
    traj = Trajectory("a", task.instance_id, steps=[read, sed, python])
    after = _repo_module().patch_after_steps
    two, three = after(task, traj, "selfcheck", 2), after(task, traj, "selfcheck", 3)
    assert "+    return x * 2" in two and "x + x" not in two
    assert two != three and "x + x" in three
    assert after(task, traj, "selfcheck", 1) == ""
