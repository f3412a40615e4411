"""The task factory on a tiny local project: valid mutants, kept ones fail before and pass after the gold patch
when graded the way every task is, untested ones are dropped, hidden tests stay out of the agent's checkout, the
issue text never shows the diff, and runs are deterministic, resumable after kill -9 and deduplicated."""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.envs.grading import grade
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.sources import factory_run as fr
from agent_selfevolve.sources import get_task_source, locate_tasks
from agent_selfevolve.sources.factory import Factory, Options
from agent_selfevolve.sources.factory_repo import (
    FactoryError,
    factory_repo,
    install_bundle,
    projects_made,
    repo_dir,
    resolve_spec,
    split_projects,
    task_file,
    write_bundle,
)
from agent_selfevolve.sources.mutations import OPERATORS, find_mutations, is_valid
from agent_selfevolve.tasks import Task, load_tasks

MARKER = "zq_marker_total"  # only ever written in the library's mutated lines, never in a test
LIB = f'''\
def clamp(x, lo=0, hi=10):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def step2(n):
    n += 1
    n += 1
    return n


def ratio(values):
    {MARKER} = sum(values)
    return values[0] / {MARKER}


def weakly_tested(a, b):
    return a * b


def untested(a, b):
    return a - b
'''
TEST_CLAMP = """from tinylib import clamp


def test_clamp_inside():
    assert clamp(5) == 5


def test_clamp_low():
    assert clamp(-3) == 0


def test_clamp_high():
    assert clamp(42) == 10
"""
TEST_MISC = """from tinylib import ratio, step2, weakly_tested


def test_step2():
    assert step2(1) == 3


def test_ratio():
    assert ratio([1, 3]) == 0.25


def test_weakly_tested_runs():
    weakly_tested(2, 3)
"""
OPTS = Options(seed=0, max_candidates=100, max_tasks=100, per_function=100)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tiny") / "tiny"
    (repo / "tests").mkdir(parents=True)
    (repo / "tinylib.py").write_text(LIB)
    (repo / "tests" / "test_clamp.py").write_text(TEST_CLAMP)
    (repo / "tests" / "test_misc.py").write_text(TEST_MISC)
    (repo / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "tiny")
    return repo


@pytest.fixture(scope="module")
def made(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full factory run over the tiny project (the reference the other tests compare with)."""
    cache = tmp_path_factory.mktemp("factory-cache")
    spec = resolve_spec("tiny", repo=tiny_repo, tests=["tests"])
    factory = Factory(spec, OPTS, cache, log=lambda *_: None)
    result = factory.make()
    return {"cache": cache, "spec": spec, "factory": factory, "summary": result,
            "tasks": load_tasks(task_file("tiny", cache)), "state": factory.load_state()}


def test_operators_produce_valid_small_changes() -> None:
    source = ("import os\n\n\nclass A:\n    def m(self, xs, k=2, flag=True):\n        '''doc'''\n"
              "        y = xs[1:k] + [x * 2 for x in range(len(xs) - 1)]  # keep\n"
              "        if k < 3 and not flag:\n            y += os.path.join('a', 'b')\n"
              "        while k >= 0 or xs == y:\n            k -= 1\n        return y if flag else xs[0]\n")
    mutations = find_mutations("m.py", source)
    assert {m.operator for m in mutations} == set(OPERATORS)
    original = ast.dump(ast.parse(source))
    for m in mutations:
        mutant = m.apply(source)
        assert is_valid(mutant, original), (m, mutant)
        assert m.function == "A.m"
        changed = [line for line in difflib.unified_diff(source.splitlines(), mutant.splitlines(), lineterm="", n=0)
                   if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        assert 0 < len(changed) <= 4, (m, changed)  # one statement at most (the `if` block is two lines)
        assert "# keep" in mutant or m.operator == "remove_stmt"  # the rest of the file is untouched
    invalid = "def f(x):\n    return x +\n"
    assert not is_valid(invalid, original) and not is_valid(source, original)


def test_kept_tasks_fail_before_and_pass_after_when_graded(made: dict[str, Any]) -> None:
    tasks: list[Task] = locate_tasks(made["tasks"], made["cache"])
    assert len(tasks) >= 5
    pool = WorktreePool(root=made["cache"])
    one_per_operator = {t.factory["operator"]: t for t in tasks}  # type: ignore[attr-defined]
    assert len(one_per_operator) >= 4
    for task in one_per_operator.values():
        assert task.FAIL_TO_PASS and task.difficulty in ("easy", "medium", "hard")  # type: ignore[attr-defined]
        empty, gold = grade(task, "", pool), grade(task, task.patch, pool)
        assert not empty.resolved and empty.tests_status["FAIL_TO_PASS"]["success"] == []
        assert empty.tests_status["PASS_TO_PASS"]["failure"] == []
        assert gold.resolved, (task.instance_id, gold.error, gold.test_output[-2000:])


def test_untested_mutations_are_dropped(made: dict[str, Any]) -> None:
    state = made["state"]
    weak = [r for r in state if r["function"] == "weakly_tested"]
    assert weak and all(r["outcome"] == "rejected" and r["reason"] == "no test fails" for r in weak)
    assert not any(r["function"] == "untested" for r in state)  # no test calls it: never even tried
    functions = {t.factory["function"] for t in made["tasks"]}  # type: ignore[attr-defined]
    assert "weakly_tested" not in functions and {"clamp", "step2", "ratio"} <= functions


def test_failing_tests_are_hidden_from_the_agents_checkout(made: dict[str, Any]) -> None:
    pool = WorktreePool(root=made["cache"])
    for task in locate_tasks(made["tasks"], made["cache"]):
        hidden = {fr.test_file_of(t) for t in task.FAIL_TO_PASS}
        checkout = pool.create(task, f"agent-{task.instance_id}")
        try:
            files = {str(p.relative_to(checkout)) for p in checkout.rglob("*.py")}
            assert hidden and not hidden & files and "tinylib.py" in files
            names = {t.split("::")[-1] for t in task.FAIL_TO_PASS}
            text = "\n".join(p.read_text() for p in checkout.rglob("*.py"))
            assert not any(n in text for n in names), task.instance_id
            assert _git(checkout, "log", "--format=%s") == made["spec"].name + " " + made["spec"].version
        finally:
            pool.remove(checkout)


def test_issue_text_never_shows_the_diff(made: dict[str, Any]) -> None:
    marked = [t for t in made["tasks"] if MARKER in t.patch]
    assert marked  # the marker is in the mutated line of some kept tasks
    for task in made["tasks"]:
        statement = task.problem_statement
        assert MARKER not in statement and "@@" not in statement and not re.search(r"\.py:\d", statement)
        assert all(t in statement for t in task.FAIL_TO_PASS[:3])
    # the raw test output of the removed-assignment bug does show the marker: without the filter it would leak
    removed = next(t for t in marked if f"-    {MARKER} = sum(values)" not in t.patch and "+    " + MARKER in t.patch)
    repo = factory_repo("tiny", made["cache"])
    wt = made["cache"] / "raw-check"
    _git(repo, "worktree", "add", "-q", "--detach", str(wt), removed.base_commit)
    subprocess.run(["git", "apply"], input=removed.test_patch, text=True, cwd=wt, check=True)
    run = fr.run_pytest(wt, removed.FAIL_TO_PASS, [], timeout=120)
    assert MARKER in run.output and "NameError" in removed.problem_statement


def test_duplicate_mutants_make_one_task(made: dict[str, Any]) -> None:
    step2 = [r for r in made["state"] if r["function"] == "step2" and r["operator"] == "remove_stmt"]
    increments = [r for r in step2 if r["hash"] and sum(x["hash"] == r["hash"] for x in step2) > 1]
    assert [r["outcome"] for r in increments] in (["kept", "duplicate"], ["rejected", "duplicate"])
    hashes = [r["hash"] for r in made["state"] if r["outcome"] == "kept"]
    assert len(hashes) == len(set(hashes)) == len(made["tasks"])


def test_same_seed_same_tasks_and_resume_after_kill(made: dict[str, Any], tiny_repo: Path, tmp_path: Path) -> None:
    """A second cache: the make is killed (-9) mid-candidate, then resumed; the result equals the reference."""
    cache = tmp_path / "second"
    env = {**os.environ, "AGENT_SELFEVOLVE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "agent_selfevolve.cli", "tasks", "make", "tiny", "--repo", str(tiny_repo),
           "--test-path", "tests", "--max-candidates", "12", "--per-function", "100"]
    log = tmp_path / "make.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)
    state, dirty = cache / "factory" / "tiny" / "state.jsonl", cache / "factory" / "tiny" / "dirty"
    deadline, mutated = time.monotonic() + 300, ""
    while time.monotonic() < deadline and proc.poll() is None and not mutated:
        if state.is_file() and len(state.read_text().splitlines()) >= 3:
            with contextlib.suppress(FileNotFoundError):
                mutated = dirty.read_text()  # a mutant is in the scratch copy right now
        time.sleep(0.02)
    assert proc.poll() is None, log.read_text()  # killed mid-run, not after it ended
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    tried_before = len(state.read_text().splitlines())
    opts = Options(seed=0, max_candidates=12, max_tasks=100, per_function=100)
    resumed = Factory(resolve_spec("tiny", repo=tiny_repo, tests=["tests"]), opts, cache, log=lambda *_: None)
    resumed.make()
    assert (resumed.work / mutated).read_text() == (tiny_repo / mutated).read_text()  # the mutant left was undone
    records, reference = resumed.load_state(), made["state"][:12]
    assert len(records) == 12 > tried_before
    assert [(r["key"], r["outcome"]) for r in records] == [(r["key"], r["outcome"]) for r in reference]
    kept = sum(r["outcome"] == "kept" for r in reference)
    assert kept and task_file("tiny", cache).read_text().splitlines() == \
        task_file("tiny", made["cache"]).read_text().splitlines()[:kept]  # byte-identical tasks, commits included


def test_another_seed_another_order(made: dict[str, Any]) -> None:
    factory: Factory = made["factory"]
    base = factory.baseline()
    first = [m.key for m in factory.candidates(base)[0]]
    other = Factory(made["spec"], Options(seed=1), made["cache"]).candidates(base)[0]
    assert first == [m.key for m in factory.candidates(base)[0]]
    assert sorted(first) == sorted(m.key for m in other) and first != [m.key for m in other]


def test_repo_rebuilds_to_the_same_commits_and_source_is_registered(made: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = made["cache"]
    tags = _git(repo_dir("tiny", cache), "tag")
    subprocess.run(["rm", "-rf", str(repo_dir("tiny", cache))], check=True)
    rebuilt = factory_repo("tiny", cache)
    assert _git(rebuilt, "tag") == tags
    assert all(_git(rebuilt, "rev-parse", f"{t.instance_id}^{{commit}}") == t.base_commit for t in made["tasks"])
    monkeypatch.setenv("AGENT_SELFEVOLVE_CACHE", str(cache))
    listed = load_tasks(get_task_source("factory:tiny").task_file())
    assert [t.instance_id for t in listed] == [t.instance_id for t in made["tasks"]]
    assert json.loads(task_file("tiny", cache).read_text().splitlines()[0])["repo"] == "factory/tiny"


def test_a_bundle_installs_the_same_tasks_and_commits_elsewhere(made: dict[str, Any], tmp_path: Path) -> None:
    bundle = write_bundle("tiny", tmp_path / "bundles", made["cache"])
    assert write_bundle("tiny", tmp_path / "again", made["cache"]).read_bytes() == bundle.read_bytes()
    other = tmp_path / "other-cache"
    assert install_bundle(bundle, other) == ("tiny", len(made["tasks"]))
    assert task_file("tiny", other).read_text() == task_file("tiny", made["cache"]).read_text()
    assert projects_made(other) == ["tiny"]
    rebuilt = repo_dir("tiny", other)
    assert all(_git(rebuilt, "rev-parse", f"{t.instance_id}^{{commit}}") == t.base_commit for t in made["tasks"])
    assert install_bundle(bundle, other) == ("tiny", len(made["tasks"]))  # the same again: nothing to do


def test_a_bundle_that_does_not_rebuild_installs_nothing(made: dict[str, Any], tmp_path: Path) -> None:
    import lzma

    data = json.loads(lzma.decompress(write_bundle("tiny", tmp_path, made["cache"]).read_bytes()))
    data["tasks"][0]["base_commit"] = "0" * 40  # a task whose commit the pinned source does not give
    bad = tmp_path / "bad.json.xz"
    bad.write_bytes(lzma.compress(json.dumps(data).encode()))
    other = tmp_path / "other-cache"
    with pytest.raises(FactoryError, match=data["tasks"][0]["instance_id"]):
        install_bundle(bad, other)
    assert projects_made(other) == [] and not repo_dir("tiny", other).exists()
    data["tasks"][1]["instance_id"] = "factory__elsewhere-123"
    bad.write_bytes(lzma.compress(json.dumps(data).encode()))
    with pytest.raises(FactoryError, match=r"tasks\[1\].*not a task of 'tiny'"):
        install_bundle(bad, other)
    bad.write_bytes(b"not xz")
    with pytest.raises(FactoryError, match="not a factory bundle"):
        install_bundle(bad, other)


def test_a_bundle_never_overwrites_other_tasks_unless_asked(made: dict[str, Any], tmp_path: Path) -> None:
    bundle = write_bundle("tiny", tmp_path, made["cache"])
    other = tmp_path / "other-cache"
    install_bundle(bundle, other)
    mine = task_file("tiny", other).read_text().splitlines()[0] + "\n"
    task_file("tiny", other).write_text(mine)
    with pytest.raises(FactoryError, match="--replace"):
        install_bundle(bundle, other)
    assert task_file("tiny", other).read_text() == mine
    install_bundle(bundle, other, replace=True)
    assert task_file("tiny", other).read_text() == task_file("tiny", made["cache"]).read_text()


def test_split_by_project_is_deterministic_and_disjoint() -> None:
    projects = [f"p{i}" for i in range(10)]
    train, held = split_projects(projects, seed=0)
    assert (train, held) == split_projects(list(reversed(projects)), seed=0)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == projects
    assert any(split_projects(projects, seed=s)[1] != held for s in range(1, 4))


def test_difficulty_features() -> None:
    easy, f = fr.difficulty("Foo._clamp", ["t.py::test_clamp_low", "t.py::test_clamp_high"], "clamp(3) fails", 2)
    assert easy == "easy" and f["names_function"] and f["issue_names_function"]
    hard, g = fr.difficulty("helper", ["t.py::test_render"], "render() fails", 4)
    assert hard == "hard" and not g["names_function"] and g["score"] == 4


def test_excerpt_quotes_test_frames_and_errors_only() -> None:
    output = ("___ test_ratio ___\ntests/test_misc.py:9: in test_ratio\n    assert ratio([1, 3]) == 0.25\n"
              "tinylib.py:16: in ratio\n    return values[0] / hidden_name\n"
              "E   NameError: name 'hidden_name' is not defined at 0x7f93846c3ce0\n"
              "--- Captured stdout call ---\nlibrary print\n")
    sections = fr.failure_sections(output)
    assert fr.test_excerpt(sections["test_ratio"], set()) == [
        "in test_ratio:", "    assert ratio([1, 3]) == 0.25",
        "E   NameError: name 'hidden_name' is not defined at 0x..."]  # no library frame, no address, no capture
    masked = fr.test_excerpt(sections["test_ratio"], {"hidden_name"})[-1]
    assert masked == "E   NameError: name '...' is not defined at 0x..."
