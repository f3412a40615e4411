"""Localization from the issue: a repository too big to preview shows the definitions the issue names (never a
test's), and the `python` tool merges a method answered alone back into its class."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.localize import issue_names, named_definitions
from agent_selfevolve.setups import get_setup
from agent_selfevolve.tasks import Task

ISSUE = """numbers 1.0: 1 test of the project's own suite fails

- `tests/test_words.py::SpellerTest::test_spell_out[0-zero]`

```
in test_spell_out:
    assert numbers.Speller().spell_out(0) == "zero"
E   AssertionError: assert '0' == 'zero'
```
"""
SPELLER = '''class Speller:
    """Numbers as words."""

    words = ("zero", "one", "two")

    def spell_out(self, n):
        if n < 0:
            return str(n)
        return str(n)

    def other(self):
        return 1
'''
PADDING = "".join(f"def unrelated_{i}(x):\n    return x + {i}\n\n\n" for i in range(300))  # too big to preview
TEST_MARK = "TEST_FILE_MARK_5e1"


def repo_task(tmp_path: Path) -> Task:
    repo = tmp_path / "repo"
    (repo / "numbers").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "numbers" / "__init__.py").write_text("from numbers.words import Speller\n")
    (repo / "numbers" / "words.py").write_text(SPELLER)
    (repo / "numbers" / "padding.py").write_text(PADDING)
    (repo / "tests" / "test_helpers.py").write_text(f"def spell_out(n):\n    return '{TEST_MARK}'\n")
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm base", shell=True,
                   cwd=repo, check=True)
    return Task(instance_id="loc__numbers-1", repo="local/numbers", repo_path=str(repo), base_commit="HEAD",
                problem_statement=ISSUE, FAIL_TO_PASS=["tests/test_words.py::test_spell_out"])


def test_issue_names_come_from_calls_attributes_and_test_ids_not_from_builtins() -> None:
    names = issue_names(ISSUE)
    assert names[:2] == ["Speller", "spell_out"]  # each twice (a call or attribute, and the test id): first first
    assert "assert" not in names and "str" not in names
    assert all(not n.startswith("test") for n in names)


def test_a_name_defined_in_many_places_is_not_shown_and_the_budget_holds() -> None:
    files = {f"m{i}.py": "def spell_out(n):\n    return n\n" for i in range(5)}
    assert named_definitions(ISSUE, files, 4000) == []
    files = {"a.py": SPELLER}
    shown = named_definitions(ISSUE, files, len(SPELLER) - 10)
    assert [d.qualname for d in shown] == ["Speller.spell_out"]  # the class is too long for that budget
    assert shown[0].source.startswith("def spell_out(self, n):")  # dedented, as the python tool takes it back


def test_a_big_repo_shows_the_named_method_and_never_a_test_file(tmp_path: Path) -> None:
    task = repo_task(tmp_path)
    options = get_setup("selfcheck").environment.options()
    env = CodingEnvironment(task, "loc-reset", **options)
    text = env.reset().text
    assert "numbers/words.py" in text and "def spell_out(self, n):" in text, text
    assert TEST_MARK not in text and "unrelated_7" not in text  # no test file; the repo is not previewed whole
    fixed = "def spell_out(self, n):\n    return self.words[n] if 0 <= n < 3 else str(n)\n"
    obs = env.step(ToolCall("python", {"code": fixed}))
    assert "Wrote numbers/words.py" in obs.text, obs.text
    written = (env.path / "numbers" / "words.py").read_text()  # type: ignore[operator]
    assert "        return self.words[n] if 0 <= n < 3 else str(n)" in written and "def other(self):" in written
    env.close()


def test_without_named_chars_a_big_repo_shows_only_its_top_level(tmp_path: Path) -> None:
    env = CodingEnvironment(repo_task(tmp_path), "loc-off", preview_chars=4000)
    text = env.reset().text
    env.close()
    assert "def spell_out" not in text and "Top-level entries" in text


def test_only_the_most_mentioned_names_code_is_shown() -> None:
    """Shown two functions, the 0.5B answered with both (two blocks: no action)."""
    files = {"a.py": "def spell_out(n):\n    return n\n", "b.py": "def helper_fn(n):\n    return n\n"}
    issue = "spell_out(1) fails; spell_out(2) too; `helper_fn` is fine"
    assert [d.qualname for d in named_definitions(issue, files, 4000)] == ["spell_out"]
    assert len(named_definitions(issue, files, 4000, max_names=2)) == 2


def test_a_failing_tests_class_names_the_function_in_snake_case() -> None:
    """more_itertools: `IterateTests::test_basic` fails on `iterate`, while the test's code calls `mi.take` most."""
    issue = ("- `tests/test_more.py::IterateTests::test_basic`\n\n```\nin test_basic:\n    result = mi.take(10, "
             "mi.iterate(f, 1))\n    assert result == mi.take(3, y)\nE   AssertionError\n```\n")
    files = {"m.py": "def take(n, it):\n    return list(it)[:n]\n\n\ndef iterate(func, start):\n    yield start\n"}
    assert issue_names(issue)[0] == "iterate"
    assert [d.qualname for d in named_definitions(issue, files, 4000)] == ["iterate"]


def test_the_recall_bench_splits_an_arms_outcomes_by_what_was_shown(tmp_path: Path) -> None:
    """bench/localization_recall.py --outcomes: the README's "5/32 where shown, 0/12 where not" comes from here."""
    import importlib.util
    import json
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("localization_recall", bench / "localization_recall.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    log = tmp_path / "avd.jsonl"
    rows = [("a", "agent:selfcheck", True), ("b", "agent:selfcheck", False), ("c", "agent:selfcheck", True),
            ("a", "direct", False), ("z", "agent:selfcheck", True)]
    log.write_text("".join(json.dumps({"task_id": t, "arm": arm, "resolved": r}) + "\n" for t, arm, r in rows))
    split = module.split_outcomes(log, "agent:selfcheck", {"a": True, "b": True, "c": False})
    assert split == {"shown": [1, 2], "not_shown": [1, 1]}  # the direct row and the unknown task are left out
