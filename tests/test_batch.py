"""Batches end to end with the scripted FAKE model through the real CLI: artefacts, resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import solving_script
from typer.testing import CliRunner

from agent_selfevolve.cli import app
from agent_selfevolve.tasks import Task

ROOT = Path(__file__).resolve().parents[1]


def write_tasks(demo_task: Task, path: Path, n: int = 3, bad_at: int | None = None) -> list[str]:
    lines, ids = [], []
    for i in range(n):
        rec = demo_task.model_dump()
        rec["instance_id"] = f"demo__calc-{i}"
        rec["problem_statement"] = f"[case {i}] add() subtracts instead of adding"
        lines.append(json.dumps(rec))
        ids.append(rec["instance_id"])
        if bad_at == i:
            lines.append(json.dumps({"instance_id": "broken-1", "repo": "x/y", "problem_statement": "p",
                                     "FAIL_TO_PASS": "[unclosed"}))
    path.write_text("\n".join(lines) + "\n")
    return ids


def write_fake(path: Path, latency_s: float = 0.0, unsolved: int | None = None) -> None:
    by_prompt = {f"[case {i}]": solving_script() for i in range(5)}
    if unsolved is not None:  # this case submits without a fix: unresolved but submitted (empty patch)
        from agent_selfevolve.models.fake import tool_call

        by_prompt[f"[case {unsolved}]"] = [tool_call("submit", {})]
    path.write_text(json.dumps({"by_prompt": by_prompt, "latency_s": latency_s}))


def test_batch_writes_swebench_artefacts(demo_task: Task, tmp_path: Path) -> None:
    write_tasks(demo_task, tmp_path / "tasks.jsonl")
    write_fake(tmp_path / "fake.json", unsolved=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", "--tasks", str(tmp_path / "tasks.jsonl"), "--model",
                                      f"fake:{tmp_path / 'fake.json'}", "--out", str(out), "--executor", "inline"])
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in (out / "preds.jsonl").read_text().splitlines()]
    assert sorted(p["instance_id"] for p in preds) == ["demo__calc-0", "demo__calc-1", "demo__calc-2"]
    assert all(set(p) == {"instance_id", "model_name_or_path", "model_patch"} for p in preds)
    by_id = {p["instance_id"]: p for p in preds}
    assert by_id["demo__calc-0"]["model_patch"].startswith("diff --git a/calc.py")
    assert by_id["demo__calc-1"]["model_patch"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_instances"] == 3 and summary["completed_instances"] == 3
    assert summary["resolved_instances"] == 2 and summary["resolved_ids"] == ["demo__calc-0", "demo__calc-2"]
    assert summary["unresolved_ids"] == ["demo__calc-1"] and summary["empty_patch_ids"] == ["demo__calc-1"]
    assert summary["submitted_instances"] == 2 and summary["error_instances"] == 0 and summary["schema_version"] == 2
    report = json.loads((out / "reports" / "demo__calc-0" / "report.json").read_text())
    assert report["demo__calc-0"]["resolved"] is True
    traj = json.loads((out / "trajectories" / "demo__calc-2.traj.json").read_text())
    assert traj["trajectory_format"] == "mini-swe-agent-1" and traj["info"]["exit_status"] == "submitted"


def test_malformed_instance_in_the_middle(demo_task: Task, tmp_path: Path) -> None:
    write_tasks(demo_task, tmp_path / "tasks.jsonl", bad_at=0)
    write_fake(tmp_path / "fake.json")
    args = ["batch", "--tasks", str(tmp_path / "tasks.jsonl"), "--model", f"fake:{tmp_path / 'fake.json'}",
            "--out", str(tmp_path / "out"), "--executor", "inline"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "line 2" in refused.output and "broken-1" in refused.output
    assert not (tmp_path / "out").exists()  # nothing ran half-way
    ran = CliRunner().invoke(app, [*args, "--skip-invalid"])
    assert ran.exit_code == 0 and "skipped invalid record" in ran.output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["resolved_instances"] == 3


def test_unclonable_repo_is_recorded_and_the_batch_goes_on(demo_task: Task, tmp_path: Path) -> None:
    ids = write_tasks(demo_task, tmp_path / "tasks.jsonl", n=2)
    bad = demo_task.model_dump()
    bad.update(instance_id="gone__repo-1", repo_path=str(tmp_path / "no-such-repo"), problem_statement="[case 4] x")
    with open(tmp_path / "tasks.jsonl", "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    write_fake(tmp_path / "fake.json")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", "--tasks", str(tmp_path / "tasks.jsonl"), "--model",
                                      f"fake:{tmp_path / 'fake.json'}", "--out", str(out), "--executor", "inline"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolved_ids"] == ids and summary["error_ids"] == ["gone__repo-1"]
    errors = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if "gone__repo" in x]
    assert "cannot clone" in errors[0]["error"] or "RepoError" in errors[0]["error"]


def test_killed_batch_resumes_without_losing_or_duplicating(demo_task: Task, tmp_path: Path) -> None:
    ids = write_tasks(demo_task, tmp_path / "tasks.jsonl", n=4)
    write_fake(tmp_path / "fake.json", latency_s=0.5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "agent_selfevolve.cli", "batch", "--tasks", str(tmp_path / "tasks.jsonl"),
           "--model", f"fake:{tmp_path / 'fake.json'}", "--out", str(out), "--executor", "inline"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 1):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = len(results.read_text().splitlines())
    assert 1 <= finished_before < 4
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    preds = [json.loads(x)["instance_id"] for x in (out / "preds.jsonl").read_text().splitlines()]
    assert sorted(preds) == ids  # every task exactly once
    assert json.loads((out / "summary.json").read_text())["resolved_instances"] == 4
