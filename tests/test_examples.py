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
from agent_selfevolve.sources.humaneval import file_diff
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


LEETCODE_STYLE = '''
N_MAX = 10


def pairs(arr, k):
    """Count pairs.

    Example 1:
        Input: arr = [1, 2, 3], k = 3
        Output: 1
    Example 2:
        Input: [4], 1
        Output: 0
    For arr = [1, 1], k = 2 the output should be 1.
    pairs([2, 2], 4) returns 1
    pairs([5], 5)   # => 0
    * pairs([], 0) -> 0
    pairs(x, N_MAX) = pairs(x, 10)
    pairs(n) = pairs(n - 1) + 1
    pairs([1], 1) == true
    """
    raise NotImplementedError


def solve(n):
    """For N = 4 the output should be "100"."""
'''


def test_named_arguments_returns_and_comment_forms_become_calls_of_the_docstrings_function() -> None:
    found = {(e.call, e.expected) for e in examples_in(LEETCODE_STYLE, "solution.py")}
    assert found == {("pairs(arr=[1, 2, 3], k=3)", "1"), ("pairs([4], 1)", "0"), ("pairs(arr=[1, 1], k=2)", "1"),
                     ("pairs([2, 2], 4)", "1"), ("pairs([5], 5)", "0"), ("pairs([], 0)", "0"),
                     ("solve(4)", '"100"')}  # `N = 4` names no parameter: one argument, so it is positional
    # `x`, `n` and `true` are no names of the module: definitions and typos are no runnable examples


def test_humaneval_canonical_solutions_pass_nearly_every_example_found() -> None:
    """The examples steer revisions: the reference solutions must pass them (3 HumanEval docstrings contradict
    their own tests: 116, 130, 148)."""
    import tempfile

    from agent_selfevolve.sources.humaneval import load_problems, solution_source, stub_source

    failing, with_examples = [], 0
    for problem in load_problems():
        examples = examples_in(stub_source(problem), "solution.py")
        if not examples:
            continue
        with_examples += 1
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "solution.py").write_text(solution_source(problem))
            out = subprocess.run([sys.executable, "-c", check_script(examples)], cwd=d, capture_output=True,
                                 text=True, timeout=120).stdout
        if "FAILED" in out:
            failing.append(problem["task_id"])
    assert with_examples >= 80
    assert failing == ["HumanEval/116", "HumanEval/130", "HumanEval/148"]
