"""`selfevolve batch --validate`: gold resolves and empty does not = valid; each invalid one says why."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent_selfevolve.cli import app
from agent_selfevolve.envs import grading
from agent_selfevolve.tasks import Task
from agent_selfevolve.validate import validate_tasks

NOT_APPLYING = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a * b  # no such line at the base commit
+    return a + b
"""


def _variants(demo_task: Task) -> list[Task]:
    broken = demo_task.model_copy(update={"instance_id": "demo__calc-broken", "patch": NOT_APPLYING})
    # FAIL_TO_PASS that passes at base: the tests cannot tell a fix from no fix
    trivial = demo_task.model_copy(update={"instance_id": "demo__calc-trivial",
                                           "FAIL_TO_PASS": ["tests/test_calc.py::test_mul"], "PASS_TO_PASS": []})
    # a test id that reads as console markup ("[/...]") must not break the progress output
    odd = demo_task.model_copy(update={"instance_id": "demo__calc-odd",
                                       "FAIL_TO_PASS": ["tests/test_hidden.py::test_add_hidden[/no/such]"]})
    return [demo_task, broken, trivial, odd]


def test_batch_validate_writes_validation_json(demo_task: Task, tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(t.model_dump_json() + "\n" for t in _variants(demo_task)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", "--validate", "--tasks", str(tasks_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "valid 1/4" in result.output and "INVALID" in result.output
    summary = json.loads((out / "validation.json").read_text())
    assert summary["valid_ids"] == ["demo__calc-1"] and summary["valid_instances"] == 1
    assert summary["invalid_instances"] == 3
    assert "leaves 1 test(s) failing: tests/test_hidden.py::test_add_hidden[/no/such]" in summary["invalid"][
        "demo__calc-odd"]
    assert "gold patch" in summary["invalid"]["demo__calc-broken"]
    assert "does not apply" in summary["invalid"]["demo__calc-broken"]
    assert "pass without any patch" in summary["invalid"]["demo__calc-trivial"]
    valid = summary["instances"]["demo__calc-1"]
    assert valid["gold_resolved"] and not valid["empty_resolves"] and valid["f2p_passing_without_patch"] == []
    assert not (out / "preds.jsonl").exists()  # no model ran


def test_validation_resumes_and_runs_in_workers(demo_task: Task, tmp_path: Path) -> None:
    tasks = _variants(demo_task)
    out = tmp_path / "out"
    seen: list[str] = []
    first = validate_tasks(tasks[:2], out, workers=2, on_result=lambda r: seen.append(r["instance_id"]))
    assert first["valid_ids"] == ["demo__calc-1"] and sorted(seen) == ["demo__calc-1", "demo__calc-broken"]
    second = validate_tasks(tasks[:3], out, workers=1, on_result=lambda r: seen.append(r["instance_id"]))
    assert seen[2:] == ["demo__calc-trivial"]  # finished instances are not graded again
    assert second["total_instances"] == 3 and second["valid_ids"] == ["demo__calc-1"]


def test_unclonable_repo_is_invalid_with_its_reason(demo_task: Task, tmp_path: Path) -> None:
    gone = demo_task.model_copy(update={"instance_id": "gone__repo-1", "repo_path": str(tmp_path / "missing")})
    summary = validate_tasks([gone], tmp_path / "out")
    assert summary["valid_ids"] == [] and "cannot clone" in summary["invalid"]["gone__repo-1"]


def test_swebench_style_ids_and_data_files_in_test_patch(demo_task: Task) -> None:
    """SWE-bench ids are pytest's first token (cut at a space); a .toml fixture in test_patch is not a test arg."""
    out = ('>>>>> Start Test Output\nPASSED tests/t.py::test_x[f("a", "b")-True]\n'
           'FAILED tests/t.py::test_y[1 2] - assert 0\n>>>>> End Test Output\n')
    assert grading.parse_test_output(out) == {'tests/t.py::test_x[f("a",': "PASSED", "tests/t.py::test_y[1": "FAILED"}
    data = demo_task.model_dump()
    data.update(test_files=[], FAIL_TO_PASS=["tests/test_hidden.py::test_add_hidden"], PASS_TO_PASS=[])
    data["test_patch"] += ("diff --git a/tests/static/c.toml b/tests/static/c.toml\nnew file mode 100644\n"
                           "--- /dev/null\n+++ b/tests/static/c.toml\n@@ -0,0 +1 @@\n+a = 1\n")
    task = Task.model_validate(data)
    assert grading.test_files_of(task) == ["tests/test_hidden.py"]
    assert grading.grade(task, task.patch).resolved
