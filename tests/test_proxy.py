"""The proxy reward: it ranks patches by the repo's own tests near the edited modules, their doctests and the
agent's own checks, on a fresh sandboxed checkout, and never runs (or names) anything from the hidden tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent_selfevolve.envs.base import Evaluation, Observation, ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.proxy import (
    APPLY_CREDIT,
    PARSE_CREDIT,
    ProxyRun,
    module_of,
    package_test_files,
    proxy_reward,
    related_test_files,
)
from agent_selfevolve.sources.humaneval import file_diff
from agent_selfevolve.tasks import Task

MARK = "HIDDEN_PROXY_MARK_4b9d"
CALC = ('def add(a, b):\n    """Sum of a and b.\n\n    >>> add(2, 3)\n    5\n    """\n    return a - b\n\n\n'
        'def mul(a, b):\n    return a * b\n')


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _diff(path: str, text: str, old: str, new: str) -> str:
    return file_diff(path, text, text.replace(old, new))


@pytest.fixture
def task(tmp_path: Path) -> Task:
    """pkg/calc.py (bug + doctest) with its visible test; an unrelated test file that fails at base; hidden
    tests that would fail on every patch and that name themselves with MARK. The task's `test_files` point at the
    failing unrelated file and the hidden one: a proxy that read them would score every patch lower."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "calc.py").write_text(CALC)
    (repo / "pkg" / "other.py").write_text("VALUE = 1\n")
    (repo / "tests" / "test_calc.py").write_text("from pkg.calc import add, mul\n\n\ndef test_add():\n"
                                                 "    assert add(1, 1) == 2\n\n\ndef test_mul():\n"
                                                 "    assert mul(2, 3) == 6\n")
    (repo / "tests" / "test_unrelated.py").write_text("def test_broken_elsewhere():\n    assert False\n")
    (repo / "conftest.py").write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    hidden = f"def test_{MARK}():\n    assert False, '{MARK}'\n"
    test_patch = (f"diff --git a/tests/test_{MARK}.py b/tests/test_{MARK}.py\nnew file mode 100644\n--- /dev/null\n"
                  f"+++ b/tests/test_{MARK}.py\n@@ -0,0 +1,2 @@\n" + "".join(f"+{ln}\n" for ln in hidden.splitlines()))
    return Task(instance_id="proxy-1", repo_path=str(repo), base_commit=_git(repo, "rev-parse", "HEAD"),
                problem_statement="add() subtracts", test_patch=test_patch,
                FAIL_TO_PASS=[f"tests/test_{MARK}.py::test_{MARK}"], PASS_TO_PASS=["tests/test_unrelated.py::x"],
                test_files=["tests/test_unrelated.py", f"tests/test_{MARK}.py"])


def proxy(task: Task, patch: str, checks: dict[str, str] | None = None, isolate: bool | None = False) -> Evaluation:
    env = CodingEnvironment(task, "proxy-env", isolate=isolate)
    return env.proxy_evaluate({"patch": patch, "checks": checks or {}})


FIX = _diff("pkg/calc.py", CALC, "return a - b", "return a + b")
WRONG = _diff("pkg/calc.py", CALC, "return a - b", "return a * b")
BROKEN = _diff("pkg/calc.py", CALC, "return a - b", "return a +")
ELSEWHERE = _diff("pkg/other.py", "VALUE = 1\n", "VALUE = 1", "VALUE = 2")
NOTES = file_diff("notes.txt", None, "a note\n")


def test_the_proxy_ranks_the_fix_first_and_caps_weak_evidence(task: Task) -> None:
    fix, wrong, elsewhere, notes = proxy(task, FIX), proxy(task, WRONG), proxy(task, ELSEWHERE), proxy(task, NOTES)
    assert fix.reward == 1.0 and fix.source == "proxy" and not fix.resolved and fix.details["ceiling"] == 1.0
    checks = fix.details["checks"]
    assert checks["repo_tests"] == {"files": ["tests/test_calc.py"], "passed": 2, "total": 2, "failed": []}
    assert checks["doctests"]["files"] == ["pkg/calc.py"] and checks["doctests"]["passed"] == 1
    # a * b: test_add (1 * 1 != 2) and the doctest (2 * 3 != 5) fail, test_mul passes
    assert wrong.reward == pytest.approx(PARSE_CREDIT + (1 - PARSE_CREDIT) * (0.5 + 0.0) / 2)
    # nothing tests pkg/other.py: the tests of package `pkg` stand in, as weaker evidence that tops out lower
    assert elsewhere.details["checks"]["package_tests"]["files"] == ["tests/test_calc.py"]  # test_add still fails
    assert elsewhere.reward == pytest.approx(PARSE_CREDIT + (1 - PARSE_CREDIT) * 0.5 * 0.5)
    assert elsewhere.details["ceiling"] == pytest.approx(PARSE_CREDIT + (1 - PARSE_CREDIT) * 0.5)
    assert notes.reward == notes.details["ceiling"] == PARSE_CREDIT  # nothing at all to run
    assert fix.reward > max(wrong.reward, elsewhere.reward) and min(wrong.reward, elsewhere.reward) > notes.reward
    assert proxy(task, BROKEN).reward == APPLY_CREDIT  # applies, does not compile
    assert proxy(task, FIX.replace("a - b", "a // b")).reward == 0.0  # does not apply
    assert proxy(task, "").reward == 0.0


def test_the_proxy_never_runs_or_names_the_hidden_tests(task: Task) -> None:
    """The hidden test fails on every patch and `test_files` names a failing unrelated file: reading either
    would pull the fix below 1.0 or put their names in the details."""
    fix = proxy(task, FIX)
    assert fix.reward == 1.0
    shown = json.dumps(fix.details)
    assert MARK not in shown and "test_unrelated" not in shown
    assert CodingEnvironment(task, "grade-env", isolate=False).evaluate({"patch": FIX}).resolved is False


def test_the_agents_own_checks_count_and_run_on_the_patched_checkout(task: Task) -> None:
    passing = {"tests/test_mine.py": "from pkg.calc import add\n\n\ndef test_mine():\n    assert add(4, 4) == 8\n",
               "reproduce_bug.py": "from pkg.calc import add\nassert add(2, 2) == 4\nprint('ok')\n"}
    ok = proxy(task, FIX, passing)
    assert ok.reward == 1.0 and ok.details["checks"]["agent_checks"]["total"] == 2
    assert ok.details["checks"]["agent_checks"]["files"] == ["tests/test_mine.py", "reproduce_bug.py"]
    failing = {"reproduce_bug.py": "from pkg.calc import add\nassert add(2, 2) == 5\n"}
    bad = proxy(task, FIX, failing)
    # weights: repo tests 1, doctests 1, agent checks 0.5 -> (1 + 1 + 0) / 2.5 of the check share
    assert bad.reward == pytest.approx(PARSE_CREDIT + (1 - PARSE_CREDIT) * 2 / 2.5)
    assert bad.details["checks"]["agent_checks"]["failed"] == ["reproduce_bug.py"]


def test_the_proxy_runs_sandboxed_by_default(task: Task) -> None:
    from agent_selfevolve.envs.runner import bwrap_available

    if not bwrap_available():
        pytest.skip("bubblewrap cannot create namespaces here")
    outside = Path(task.repo_path or "") / "escaped"
    scripts = {"reproduce_escape.py": f"open({str(outside)!r}, 'w').write('x')\n",  # outside the checkout
               "reproduce_here.py": "import sys\nsys.path.insert(0, '/testbed')\nfrom pkg.calc import add\n"
                                    "assert add(2, 2) == 4\n"}  # the checkout where the agent saw it
    result = proxy(task, FIX, scripts, isolate=None)
    assert result.details["checks"]["agent_checks"]["failed"] == ["reproduce_escape.py"] and not outside.exists()
    assert result.details["checks"]["agent_checks"]["passed"] == 1
    assert result.details["checks"]["repo_tests"]["passed"] == 2  # the repo's tests still run in the sandbox


def test_outcome_keeps_agent_checks_out_of_the_patch(task: Task) -> None:
    env = CodingEnvironment(task, "outcome-1", isolate=False)
    env.reset()
    env.step(ToolCall("bash", {"command": "sed -i 's/a - b/a + b/' pkg/calc.py && echo 'print(1)' > reproduce.py && "
                                          "printf 'def test_x():\\n    pass\\n' > tests/test_new.py && "
                                          "echo '# weakened' >> tests/test_calc.py && echo x > pkg/new_mod.py"}))
    out = env.outcome()
    env.close()
    assert out["files"] == ["pkg/calc.py", "pkg/new_mod.py"]
    assert "reproduce.py" not in out["patch"] and "tests/" not in out["patch"]
    assert sorted(out["checks"]) == ["reproduce.py", "tests/test_new.py"]  # an edited base test is not a check


def test_related_test_files_by_name_then_import_then_package(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    files = {"tests/test_mathutils.py": "import os\n", "tests/test_other.py": "from boltons.mathutils import clamp\n",
             "tests/test_misc.py": "from boltons import mathutils\n",
             "tests/test_none.py": "import boltons.iterutils\n",
             "tests/conftest.py": "from boltons.mathutils import x\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = related_test_files(tmp_path, sorted(files), ["boltons/mathutils.py"])
    assert found == ["tests/test_mathutils.py", "tests/test_misc.py", "tests/test_other.py"]
    assert related_test_files(tmp_path, sorted(files), ["boltons/iterutils.py"]) == ["tests/test_none.py"]
    (tmp_path / "tests" / "test_pkg.py").write_text("import boltons\n")  # the package's public names
    assert related_test_files(tmp_path, [*files, "tests/test_pkg.py"], ["boltons/funcutils.py"]) == []
    assert package_test_files(tmp_path, [*files, "tests/test_pkg.py"], ["boltons/funcutils.py"]) == [
        "tests/test_misc.py", "tests/test_none.py", "tests/test_other.py", "tests/test_pkg.py"]
    assert module_of("src/cachetools/__init__.py") == ("cachetools", "cachetools")
    assert module_of("README.md") is None and related_test_files(tmp_path, sorted(files), ["README.md"]) == []


def test_reward_shape() -> None:
    assert proxy_reward(False, False, None) == (0.0, None)  # nothing ran: the ceiling is unknown
    assert proxy_reward(True, False, None) == (APPLY_CREDIT, None)
    assert proxy_reward(True, True, ProxyRun()) == (PARSE_CREDIT, PARSE_CREDIT)
    run = ProxyRun()
    run.add("repo_tests", ["t.py"], {"a": True, "b": False})
    assert proxy_reward(True, True, run) == (pytest.approx(PARSE_CREDIT + (1 - PARSE_CREDIT) * 0.5), 1.0)
    own = ProxyRun()  # the agent's own checks alone: a trivial test cannot make a perfect score
    own.add("agent_checks", ["test_mine.py"], {"test_mine.py::test_x": True})
    assert proxy_reward(True, True, own) == (pytest.approx(0.6), pytest.approx(0.6))


# --- bench/proxy_agreement.py -------------------------------------------------------------------------------------

def _bench():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "proxy_agreement.py"
    spec = importlib.util.spec_from_file_location("proxy_agreement", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score(aid: str, proxy: float, resolved: bool, tokens: int = 10) -> dict[str, object]:
    return {"attempt_id": aid, "proxy": proxy, "hidden": float(resolved), "resolved": resolved,
            "status": "submitted", "tokens": tokens}


def test_agreement_scoring_by_hand() -> None:
    bench = _bench()
    figure = bench.agreement({
        "t1": [_score("a", 1.0, True), _score("b", 0.2, False)],  # the proxy picks the resolved one
        "t2": [_score("c", 0.2, False, tokens=5), _score("d", 0.2, True)],  # a tie, broken to the cheaper: wrong
        "t3": [_score("e", 0.0, False), _score("f", 0.2, False)],  # nothing resolved: any choice agrees
        "t4": [_score("g", 1.0, True)],  # one attempt: no choice to make
    })
    assert figure["tasks"] == 3 and figure["agree"] == 2 and figure["agreement_rate"] == pytest.approx(2 / 3)
    assert [r["chosen"] for r in figure["rows"]] == ["a", "c", "f"]
    assert figure["decisive_tasks"] == 2 and figure["decisive_proxy_right"] == 1
    assert figure["decisive_random_expected"] == pytest.approx(1.0) and figure["decisive_top_tied"] == 1
    assert (figure["proxy_resolved"], figure["oracle_resolved"]) == (1, 2)
    assert figure["spearman_mean"] == pytest.approx(1.0) and figure["spearman_tasks"] == 1  # t2, t3: a side is flat
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.ranks([0.2, 0.2, 1.0, 0.0]) == [2.5, 2.5, 4.0, 1.0]


def test_agreement_bench_runs_resumes_and_reads_a_store(demo_task: Task, tmp_path: Path) -> None:
    from conftest import solving_script

    from agent_selfevolve.models.fake import ScriptedFakeModel
    from agent_selfevolve.search import SearchContext, best_of_n
    from agent_selfevolve.store import TrajectoryStore

    bench = _bench()
    (tmp_path / "tasks.json").write_text(json.dumps([demo_task.model_dump()]))
    args = ["--suite", str(tmp_path / "tasks.json"), "--model", "fake", "--n", "2", "--max-steps", "3",
            "--out", str(tmp_path / "out")]
    first = bench.main(args)
    row = first["rows"][0]
    assert first["tasks"] == 1 and row["attempts"] == 2 and row["chosen"] == f"pa:{demo_task.instance_id}:1"
    assert first["agree"] == 1 and not row["any_resolved"]  # the dry run resolves nothing; its choice agrees
    scores = tmp_path / "out" / "proxy_agreement-tasks-fake.scores.jsonl"
    assert sorted(json.loads(x)["proxy"] for x in scores.read_text().splitlines()) == [0.0, 0.2]
    assert bench.main(args) == first and len(scores.read_text().splitlines()) == 2  # resumed: nothing re-run
    # attempts an oracle run chose: the bench scores them with the proxy itself, and reads their hidden verdicts
    store = TrajectoryStore(tmp_path / "oracle.sqlite")
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(lambda m: solving_script()[
        min(sum(x["role"] == "assistant" for x in m), 3)]), store=store, select_with="tests")
    best_of_n(ctx, n=2, run_id="o")
    read = bench.main(["--suite", str(tmp_path / "tasks.json"), "--store", str(store.path),
                       "--out", str(tmp_path / "out")])
    assert read["tasks"] == 1 and read["rows"][0]["chosen_resolved"] and read["agree"] == 1
    assert read["source"].startswith("store")
    cached = [json.loads(x) for x in (tmp_path / "out" / "proxy_agreement-tasks-oracle.scores.jsonl").read_text()
              .splitlines()]
    assert [c["proxy"] for c in cached] == [1.0, 1.0] and all(c["resolved"] for c in cached)


def _edit_and_check(repo: Path, code: str) -> Observation:
    """Commit `repo` as a task's base, answer with `code` through the `python` tool, and run the `check` tool."""
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    task = Task(instance_id=f"proxy__{repo.parent.name[-20:]}", repo="local/checks", repo_path=str(repo),
                base_commit="HEAD", problem_statement="Fix f.")
    env = CodingEnvironment(task, f"proxy-{repo.parent.name[-20:]}", tools=["python", "check", "submit"])
    env.reset()
    env.step(ToolCall("python", {"code": code}))
    report = env.step(ToolCall("check", {}))
    env.close()
    return report


def test_the_check_report_shows_what_a_failing_doctest_or_test_got(tmp_path: Path) -> None:
    """A failure line alone ("FAILED solution.py::solution.f") gives a model nothing to revise by: the `check`
    tool's report carries pytest's Expected/Got (doctests) and the failing assertion (tests)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    doc = '    """\n    >>> f(1)\n    2\n    """\n'
    (repo / "solution.py").write_text(f"def f(x):\n{doc}    raise NotImplementedError\n")
    (repo / "test_solution.py").write_text("from solution import f\n\n\ndef test_f():\n    assert f(2) == 3\n")
    code = 'def f(x):\n    """\n    >>> f(1)\n    2\n    """\n    return x + 41\n'
    report = _edit_and_check(repo, code).text
    assert "doctests 0/1 passed" in report and "repo_tests 0/1 passed" in report, report
    assert "Expected:" in report and "42" in report, report
    assert "assert 43 == 3" in report, report


def test_a_failing_doctest_is_reported_as_the_doctest_module_prints_it(tmp_path: Path) -> None:
    """pytest puts the docstring's numbered lines ("013     >>> f('')") and doctest.py's own frames in a doctest
    failure; the 0.5B copied them into its next answer. The report shows the failing example, Expected/Got or the
    exception in the repository's code, and none of those lines."""
    repo = tmp_path / "repo"
    repo.mkdir()
    doc = '    """Docstring line one.\n    >>> f(0)\n    0\n    >>> f(1)\n    2\n    >>> g([])\n    1\n    """\n'
    (repo / "solution.py").write_text(f"def f(x):\n{doc}    raise NotImplementedError\n")
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    task = Task(instance_id="proxy__report-2", repo="local/report", repo_path=str(repo), base_commit="HEAD",
                problem_statement="Implement f.")
    env = CodingEnvironment(task, "proxy-report-2", tools=["python", "check", "submit"])
    env.reset()
    env.step(ToolCall("python", {"code": f"def f(x):\n{doc}    return x * 3\n\n\ndef g(xs):\n    return xs[0]\n"}))
    wrong = env.step(ToolCall("check", {})).text
    env.step(ToolCall("python", {"code": f"def f(x):\n{doc}    return 2 * x if x else g([])\n\n\n"
                                         "def g(xs):\n    return xs[0]\n"}))
    raised = env.step(ToolCall("check", {})).text
    env.close()
    assert "Failed example:\n    f(1)\nExpected:\n    2\nGot:\n    3" in wrong, wrong
    assert "Failed example:\n    f(0)\nException raised:" in raised, raised
    assert "solution.py, line" in raised and "IndexError: list index out of range" in raised, raised
    for noise in ("Docstring line one", "doctest.py", "DocTestFailure", "UnexpectedException", "<doctest"):
        assert noise not in wrong and noise not in raised, (noise, wrong, raised)


LOOP = _diff("pkg/calc.py", CALC, "    return a - b", "    while True:\n        pass")


def test_a_task_timeout_bounds_grading_and_the_proxy_when_the_code_never_returns(task: Task) -> None:
    """A model's endless loop: with the task's `test_timeout_s` the hidden grade and the proxy's visible checks
    stop at it (the default would hold the search for ten minutes) and count the code as failing."""
    from agent_selfevolve.envs.grading import grade

    quick = task.model_copy(update={"test_timeout_s": 3.0, "test_files": ["tests/test_calc.py"]})
    report = grade(quick, LOOP)
    assert not report.resolved and report.error == "tests timed out after 3 s"
    evaluation = proxy(quick, LOOP)
    assert evaluation.reward < proxy(quick, FIX).reward
    assert evaluation.details["checks"]["repo_tests"]["passed"] == 0, evaluation.details  # failed, not skipped
    env = CodingEnvironment(quick, "loop-env", isolate=False)
    env.reset()
    try:
        (env.path / "pkg" / "calc.py").write_text(CALC.replace("    return a - b", "    while True:\n        pass"))
        report = env._check().text
    finally:
        env.close()
    assert "timed out after 3 s" in report and "No checks found" not in report, report


def test_humaneval_tasks_carry_a_short_test_timeout() -> None:
    from agent_selfevolve.sources.humaneval import TEST_TIMEOUT_S, humaneval_task_file, humaneval_tasks
    from agent_selfevolve.tasks import load_tasks

    assert all(t.test_timeout_s == TEST_TIMEOUT_S for t in humaneval_tasks())
    assert all(t.test_timeout_s == TEST_TIMEOUT_S for t in load_tasks(humaneval_task_file())[:3])


def test_a_skipped_test_or_one_needing_an_uninstalled_module_or_plugin_is_not_a_failed_check(tmp_path: Path) -> None:
    """funcy's tests/test_colls.py imports `whatever`, humanize's benchmarks need pytest-benchmark's fixture, both
    not installed here: they failed every check of every edit, so no fix could pass them all. A test whose import
    of the repository's own module breaks is still a failure (the change may have broken it)."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("def f(x):\n    return x\n")
    (repo / "tests" / "test_ok.py").write_text("from pkg import f\n\n\ndef test_f():\n    assert f(1) == 1\n")
    (repo / "tests" / "test_extra.py").write_text("import whatever_7f3e\nfrom pkg import f\n\n\ndef test_g():\n"
                                                  "    assert f(2) == 2\n")
    (repo / "tests" / "test_own.py").write_text("from pkg.gone import h\n\n\ndef test_h():\n    assert h()\n")
    (repo / "tests" / "test_speed.py").write_text("from pkg import f\n\n\ndef test_fast(bench_fixture_9c1):\n"
                                                  "    assert f(1)\n\n\ndef test_plain():\n    assert f(3) == 3\n\n\n"
                                                  "import pytest\n\n\n@pytest.mark.skip\ndef test_skipped():\n"
                                                  "    pass\n")
    report = _edit_and_check(repo, "def f(x):\n    return x + 0\n")
    counts = report.info["counts"]
    assert sum(n for _, n in counts.values()) == 3, (counts, report.text)  # test_f, test_plain, test_own.py
    assert "tests/test_extra.py" not in report.text and "tests/test_own.py" in report.text, report.text
    assert "test_fast" not in report.text and "test_skipped" not in report.text, report.text
