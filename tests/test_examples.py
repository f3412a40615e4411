"""One-line docstring examples (`f(2) == 4`) as checks: found in the edited source, run sandboxed, and counted by
the proxy so that a right and a wrong implementation of a HumanEval-style function score apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent_selfevolve.envs.examples import check_script, examples_in, find_examples
from agent_selfevolve.envs.grading import parse_test_output
from agent_selfevolve.envs.proxy import PARSE_CREDIT
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.humaneval import file_diff
from agent_selfevolve.tasks import Task

STUB = '''
def words(s):
    """Split s at commas and spaces.

    For example:
    words("Hi, my name") == ["Hi", "my", "name"]
    words("a,b") ➞ ["a", "b"]
    words(x) is mentioned here -> but this is prose, not an example.
    >>> words("x")
    ['x']
    """
    raise NotImplementedError
'''
RIGHT = STUB.replace("    raise NotImplementedError", "    return s.replace(',', ' ').split()")
WRONG = STUB.replace("    raise NotImplementedError", "    return s.split(',')")


def test_examples_are_read_from_docstrings_only_when_both_sides_parse() -> None:
    found = examples_in(STUB, "solution.py")
    assert [(e.call, e.expected) for e in found] == [('words("Hi, my name")', '["Hi", "my", "name"]'),
                                                     ('words("a,b")', '["a", "b"]')]
    assert all(e.module == "solution" for e in found)
    assert examples_in(STUB, "tests/test_x.py")[0].module == "tests.test_x"  # find_examples skips test files
    assert examples_in("def f(:\n", "a.py") == []


def _run(tmp_path: Path, source: str) -> dict[str, str]:
    (tmp_path / "solution.py").write_text(source)  # not a git checkout: examples come from the file as it is
    examples = find_examples(tmp_path, ["solution.py"])
    out = subprocess.run([sys.executable, "-c", check_script(examples, timeout_s=2)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60).stdout
    return parse_test_output(out)


def test_the_check_script_passes_right_code_and_fails_wrong_slow_or_crashing_code(tmp_path: Path) -> None:
    assert sorted(_run(tmp_path, RIGHT).values()) == ["PASSED", "PASSED"]
    assert sorted(_run(tmp_path, WRONG).values()) == ["FAILED", "PASSED"]
    assert set(_run(tmp_path, STUB).values()) == {"FAILED"}
    looping = STUB.replace("    raise NotImplementedError", "    while True:\n        pass")
    assert set(_run(tmp_path, looping).values()) == {"FAILED"}  # each example is cut off, none hangs the rest


def test_the_proxy_scores_right_above_wrong_by_the_examples(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    plain = STUB.replace('    >>> words("x")\n    [\'x\']\n', "")  # no doctest: only the examples can tell
    (repo / "solution.py").write_text(plain)
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    task = Task(instance_id="ex__words-1", repo="local/words", repo_path=str(repo), base_commit="HEAD",
                problem_statement="Implement words")
    from agent_selfevolve.envs.proxy import evaluate_patch

    pool = WorktreePool(tmp_path / "cache")
    scores = {}
    for name, body in (("right", "    return s.replace(',', ' ').split()"), ("wrong", "    return s.split(',')")):
        patch = file_diff("solution.py", plain, plain.replace("    raise NotImplementedError", body))
        ev = evaluate_patch(task, pool, name, {"patch": patch}, isolate=False)
        scores[name] = ev.reward
        assert ev.details["checks"]["examples"]["total"] == 2
    assert scores["right"] == 1.0 and PARSE_CREDIT < scores["wrong"] < scores["right"]


def test_examples_come_from_the_base_version_so_dropping_the_docstring_drops_no_check(tmp_path: Path) -> None:
    (tmp_path / "solution.py").write_text(STUB)
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=tmp_path, check=True)
    (tmp_path / "solution.py").write_text("def words(s):\n    return s.split()\n")  # docstring gone
    examples = find_examples(tmp_path, ["solution.py"])
    assert len(examples) == 2
    out = subprocess.run([sys.executable, "-c", check_script(examples, timeout_s=2)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60).stdout
    assert sorted(parse_test_output(out).values()) == ["FAILED", "FAILED"]
