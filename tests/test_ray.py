"""The Ray executor on a local Ray instance: a batch of demo tasks, resume, and a worker that dies."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'agent-selfevolve[ray]')")

from test_batch import write_fake, write_tasks  # noqa: E402

from agent_selfevolve.batch import BatchConfig, read_results, run_batch  # noqa: E402
from agent_selfevolve.ray_executor import run_on_ray  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local instance for the module: starting Ray costs 10-25 s on 2 cores, more than the tasks."""
    cache = tmp_path_factory.mktemp("ray-cache")
    env = {"AGENT_SELFEVOLVE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.timeout(120)
def test_ray_batch_writes_artefacts_and_resumes(local_ray: None, demo_task: Task, tmp_path: Path) -> None:
    ids = write_tasks(demo_task, tmp_path / "tasks.jsonl", n=3)
    write_fake(tmp_path / "fake.json", unsolved=1)
    tasks = [Task.model_validate_json(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    config = BatchConfig(model=f"fake:{tmp_path / 'fake.json'}", limits={"max_steps": 10})
    out = tmp_path / "out"
    seen: list[str] = []
    summary = run_batch(tasks[:2], out, config, workers=2, executor="ray",
                        on_result=lambda res, _s: seen.append(res["instance_id"]))
    assert sorted(seen) == ids[:2] and summary["completed_instances"] == 2, read_results(out)
    summary = run_batch(tasks, out, config, workers=2, executor="ray",
                        on_result=lambda res, _s: seen.append(res["instance_id"]))
    assert seen[2:] == [ids[2]]  # the rerun skipped the two finished tasks
    assert summary["resolved_ids"] == [ids[0], ids[2]] and summary["empty_patch_ids"] == [ids[1]]
    assert summary["total_instances"] == 3 and summary["error_instances"] == 0
    preds = [json.loads(x) for x in (out / "preds.jsonl").read_text().splitlines()]
    assert sorted(p["instance_id"] for p in preds) == ids  # each exactly once
    assert preds[0]["model_patch"].startswith("diff --git") or preds[1]["model_patch"].startswith("diff --git")
    assert json.loads((out / "reports" / ids[0] / "report.json").read_text())[ids[0]]["resolved"] is True
    assert (out / "trajectories" / f"{ids[2]}.traj.json").exists()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_dead_worker_and_raising_task_become_error_results(local_ray: None) -> None:
    def work(task: dict[str, Any], mode: str) -> dict[str, Any]:
        if mode == "die":
            os._exit(3)  # what an OOM kill or a segfault in a native library looks like to Ray
        if mode == "raise":
            raise ValueError("bad input")
        return {"instance_id": task["instance_id"], "ok": True}

    jobs = [({"instance_id": "a"}, "ok"), ({"instance_id": "b"}, "die"), ({"instance_id": "c"}, "raise"),
            ({"instance_id": "d"}, "ok")]
    results = {r["instance_id"]: r for r in run_on_ray(work, jobs, max_in_flight=2)}
    assert set(results) == {"a", "b", "c", "d"}
    assert results["a"]["ok"] and results["d"]["ok"]
    assert not results["b"]["ok"] and "worker crashed" in results["b"]["error"]
    assert not results["c"]["ok"] and "bad input" in results["c"]["error"]
