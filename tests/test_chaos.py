"""The chaos run's short mode (bench/chaos.py --short) must meet every zero goal, and the bugs it found stay fixed:
a resumed attempt's worktree, scratch checkouts of a killed grader, pool workers outliving a killed batch (even
while they start), tool arguments no command line can carry, a binary task file, and a full disk recorded as
permanent task failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.grading import grade
from agent_selfevolve.envs.worktree import WorktreePool
from agent_selfevolve.tasks import Task, TaskFileError, load_tasks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_short_chaos_run_meets_every_zero_goal(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--short", "--seed", "1", "--out",
                           str(out)], capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    assert report["goals_missed"] == [], done.stdout[-3000:]
    assert done.returncode == 0
    kills = [r for r in report["rows"] if r["part"] == "kill"]
    assert {r["case"] for r in kills} == {"batch", "best_of_n", "se_agent", "hgm", "mcts"}  # evolve: long mode
    assert all(r["runs_completed"] >= 1 for r in kills) and sum(r["kills"] for r in kills) >= 5
    tried = {r["case"]: r["tried"] for r in report["rows"] if r["part"] != "kill" and not r.get("skipped")}
    assert tried["task files"] and tried["tool arguments"] and tried["model replies"] and tried["sandbox commands"]


def test_a_resumed_attempt_that_never_reset_removes_its_worktree(demo_task: Task, tmp_path: Path) -> None:
    pool = WorktreePool(tmp_path / "cache")
    first = CodingEnvironment(demo_task, "att-1", pool=pool, isolate=False)
    first.reset()
    assert first.path is not None and first.path.exists()  # killed here: close() never ran
    again = CodingEnvironment(demo_task, "att-1", pool=pool, isolate=False)  # the resume: agent already done
    again.close()
    assert not first.path.exists()


def test_an_attempt_rerun_after_a_kill_starts_on_a_clean_checkout(demo_task: Task, tmp_path: Path) -> None:
    """A batch attempt killed before it was recorded runs again from the start (no checkpoint): the rerun must not
    find the dead run's files under its worktree name, neither in what it sees nor in the patch it submits."""
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call

    stale = WorktreePool().create(demo_task, "rerun-1")  # the killed run's tree, left at its name
    (stale / "KILLED_RUN_MARKER.txt").write_text("left by a dead attempt\n")
    (stale / "calc.py").write_text("# KILLED_RUN_MARKER edit\n")
    model = ScriptedFakeModel([bash("ls; cat calc.py"), tool_call("submit", {})])
    traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id, attempt_id="rerun-1"),
                       env_options={"isolate": False})
    seen = json.dumps(traj.messages)
    assert "def add" in seen and "KILLED_RUN_MARKER" not in seen and "KILLED_RUN_MARKER" not in traj.patch


def test_a_removal_killed_midway_leaves_no_half_deleted_tree_under_its_name(demo_task: Task,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill inside `remove` (here: the delete dies after the rename, in a process that is then gone) must not
    leave a tree with `.git` but without its files, which a rerun would take up; the next removal sweeps what the
    dead process left, and never a live process's removal under way."""
    import agent_selfevolve.envs.worktree as worktree

    pool = WorktreePool()
    path = pool.create(demo_task, "half-1")
    dead = subprocess.Popen(["true"])
    dead.wait()

    def killed(target: object, ignore_errors: bool = False) -> None:
        raise KeyboardInterrupt("killed mid-delete")

    monkeypatch.setattr(worktree.shutil, "rmtree", killed)
    monkeypatch.setattr(worktree.os, "getpid", lambda: dead.pid)
    with pytest.raises(KeyboardInterrupt):
        pool.remove(path)
    monkeypatch.undo()
    trash = pool.root / "trash"
    live = trash / f"{os.getpid()}-0000-other"  # a removal under way in a live process
    live.mkdir()
    assert not path.exists() and len(list(trash.iterdir())) == 2
    again = pool.create(demo_task, "half-1")
    assert (again / "calc.py").exists() and (again / ".git").is_dir()
    pool.remove(again)
    assert not again.exists() and list(trash.iterdir()) == [live]


def test_scratch_checkouts_of_a_dead_owner_are_swept(demo_task: Task, tmp_path: Path) -> None:
    pool = WorktreePool(tmp_path / "cache")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = pool.create(demo_task, f"grade-x.scratch-{dead.pid}-abcd1234")
    mine = pool.create(demo_task, f"grade-y.scratch-{os.getpid()}-abcd1234")  # a live owner's: kept
    grade(demo_task, "", pool, timeout_s=60)
    left = sorted(p.name for p in (pool.root / "worktrees").iterdir())
    assert not stale.exists() and mine.exists() and left == [mine.name]


def test_pool_workers_die_with_a_killed_batch(demo_task: Task, tmp_path: Path) -> None:
    """Once started: a worker killed while it is still importing (before its initializer) can outlive the batch."""
    from chaos_kill import TAG_ENV, tagged_pids
    from conftest import solving_script

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(demo_task.model_copy(update={"instance_id": f"d-{i}", "problem_statement":
                                                          f"[case {i}] add()"}).model_dump_json() + "\n"
                             for i in range(4)))
    (tmp_path / "fake.json").write_text(json.dumps({"by_prompt": {f"[case {i}]": solving_script() for i in range(4)},
                                                    "latency_s": 1.0}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), TAG_ENV: "pool-test"}
    proc = subprocess.Popen([sys.executable, "-m", "agent_selfevolve.cli", "batch", "--tasks", str(tasks), "--model",
                             f"fake:{tmp_path / 'fake.json'}", "--out", str(tmp_path / "out"), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worktrees = Path(os.environ["AGENT_SELFEVOLVE_CACHE"]) / "worktrees"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(worktrees.glob("*"))) < 2:  # both workers are solving a task
        time.sleep(0.1)
    assert len(tagged_pids("pool-test", [])) >= 3  # the batch and its two workers
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
    proc.wait()
    deadline = time.time() + 5
    while tagged_pids("pool-test", []) and time.time() < deadline:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in tagged_pids("pool-test", [])}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == {}


HOLD_WORKERS = """import os, sys, time
if "--multiprocessing-fork" in sys.argv:  # a pool worker, before any code of the package runs
    while os.path.exists(os.environ.get("CHAOS_TEST_HOLD", "")):
        time.sleep(0.05)
"""


def test_pool_workers_killed_while_starting_never_outlive_the_batch(demo_task: Task, tmp_path: Path) -> None:
    """Kill -9 the batch while its pool workers are still starting (held before any package code runs, as a slow
    import on a loaded machine holds them), twice, resuming in between: no process of the batch survives either
    kill, and the last resume finishes every task exactly once."""
    from chaos_kill import TAG_ENV, result_lines, tagged_pids
    from conftest import solving_script

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(demo_task.model_copy(update={"instance_id": f"s-{i}", "problem_statement":
                                                          f"[case {i}] add()"}).model_dump_json() + "\n"
                             for i in range(4)))
    (tmp_path / "fake.json").write_text(json.dumps({"by_prompt": {f"[case {i}]": solving_script() for i in range(4)}}))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HOLD_WORKERS)
    hold = tmp_path / "hold"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}", TAG_ENV: "starting-test",
           "CHAOS_TEST_HOLD": str(hold)}
    argv = [sys.executable, "-m", "agent_selfevolve.cli", "batch", "--tasks", str(tasks), "--model",
            f"fake:{tmp_path / 'fake.json'}", "--out", str(tmp_path / "out"), "--workers", "2"]

    def starting_workers() -> list[int]:
        return [p for p in tagged_pids("starting-test", []) if b"--multiprocessing-fork" in _cmdline(p)]

    for _ in range(2):
        hold.touch()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and len(starting_workers()) < 2 and proc.poll() is None:
            time.sleep(0.05)
        assert len(starting_workers()) == 2  # both workers spawned, both held before their initializer
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as the OOM killer would
        proc.wait()
        deadline = time.time() + 20  # bounded wait for the kills to land; never a timing assertion
        while tagged_pids("starting-test", []) and time.time() < deadline:
            time.sleep(0.1)
        left = {pid: _cmdline(pid)[:120] for pid in tagged_pids("starting-test", [])}
        hold.unlink()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == {}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(result_lines(tmp_path / "out" / "results.jsonl")) == [f"s-{i}" for i in range(4)]
    assert tagged_pids("starting-test", []) == []


def test_a_resumed_chaos_report_adds_to_stored_kill_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    from chaos import Report

    def row(case: str, kills: int, orphans: int = 0) -> dict[str, object]:
        return {"part": "kill", "case": case, "kills": kills, "runs_completed": 1, "runs_failed": 0,
                "attempts_lost": 0, "attempts_duplicated": 0, "corrupt_files": 0, "orphans": orphans,
                "worktrees_left": 0, "kill_times_s": [1.0] * kills, "notes": [], "seconds": 10.0}

    out = tmp_path / "chaos.json"
    first = {"mode": "long", "seed": 0, "python": "3", "invocation": {"id": "a", "argv": [], "parts": ["kill"]}}
    report = Report(out, first, resume=False, restart=set())
    for r in (row("batch", 30, orphans=6), row("mcts", 20), row("hgm", 50)):
        report.kill_row(str(r["case"]), r)
    report.part_rows("fuzz", [{"part": "fuzz", "case": "task files", "tried": 9, "handled": 9}])
    again = {**first, "invocation": {"id": "b", "argv": ["--resume"], "parts": ["kill"]}}
    resumed = Report(out, again, resume=True, restart={"batch"})
    resumed.kill_row("mcts", row("mcts", 30))
    resumed.kill_row("batch", row("batch", 50))
    saved = json.loads(out.read_text())
    kills = {r["case"]: (r["kills"], r["runs_completed"], r["orphans"]) for r in saved["rows"] if r["part"] == "kill"}
    assert kills == {"batch": (50, 1, 0), "mcts": (50, 2, 0), "hgm": (50, 1, 0)}  # restarted, extended, kept
    assert [r["case"] for r in saved["rows"] if r["part"] == "fuzz"] == ["task files"]
    assert [i["id"] for i in saved["invocations"]] == ["a", "b"] and saved["goals_missed"] == []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("arguments", [{"command": "echo " + "a" * 200_000}, {"command": "echo a\0b"}])
def test_oversized_or_nul_arguments_are_an_observation_not_an_env_failure(demo_task: Task,
                                                                          arguments: dict[str, str]) -> None:
    env = CodingEnvironment(demo_task, "args-1", isolate=None)
    env.reset()
    try:
        obs = env.step(ToolCall("bash", arguments))
        assert obs.error and obs.text.startswith("Error:")
        assert "fine" in env.step(ToolCall("bash", {"command": "echo fine"})).text  # the attempt goes on
    finally:
        env.close()


def test_a_binary_task_file_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(TaskFileError, match="tasks.jsonl"):
        load_tasks(path)


def test_a_full_disk_stops_the_batch_and_is_not_recorded_as_a_task_failure(demo_task: Task, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from agent_selfevolve import batch

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "_append_line", full)
    with pytest.raises(batch.OutputUnwritable, match="rerun the same command"):
        batch.run_batch([demo_task], tmp_path / "out", batch.BatchConfig(model="fake:none.json"), executor="inline")
    assert batch.read_results(tmp_path / "out") == {}  # nothing recorded as finished: the rerun retries it
