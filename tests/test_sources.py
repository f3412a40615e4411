"""Task sources sit above the sandbox: `envs/` never imports `sources/`, a source registers itself by name, and
loading a task through the registry gives the sandbox a plain repository path to clone."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent_selfevolve.envs
from agent_selfevolve.attempt import run_attempt
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.sources import registry
from agent_selfevolve.sources.registry import (
    TaskSource,
    get_task_source,
    locate_tasks,
    register_task_source,
    resolve_tasks,
    task_source_names,
)
from agent_selfevolve.tasks import Task

ENVS_DIR = Path(agent_selfevolve.envs.__file__).parent
ENVS_MODULES = sorted(f"agent_selfevolve.envs.{m.name}" for m in pkgutil.iter_modules([str(ENVS_DIR)]))


def test_importing_every_envs_module_imports_no_task_source() -> None:
    """A fresh interpreter imports all of agent_selfevolve.envs (and so the package's own __init__); afterwards
    sys.modules must hold no agent_selfevolve.sources module."""
    assert len(ENVS_MODULES) >= 10 and "agent_selfevolve.envs.worktree" in ENVS_MODULES
    code = ("import importlib, json, sys\n"
            f"for name in {ENVS_MODULES!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('agent_selfevolve'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ENVS_MODULES) <= set(loaded)
    assert [m for m in loaded if m == "agent_selfevolve.sources" or m.startswith("agent_selfevolve.sources.")] == []


def _imported_names(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_envs_module_imports_sources_even_inside_a_function() -> None:
    """The runtime check above misses an import deferred into a function body (the old worktree -> bundled
    cycle was one): every import statement of every envs module is read."""
    above = ("agent_selfevolve.sources", "agent_selfevolve.bundled", "agent_selfevolve.humaneval",
             "agent_selfevolve.swebench")
    offenders = [(p.name, name) for p in sorted(ENVS_DIR.glob("*.py")) for name in _imported_names(p)
                 if name in above or name.startswith(tuple(f"{a}." for a in above))]
    assert offenders == []


def test_the_builtin_sources_are_registered_by_name() -> None:
    assert {"bundled", "humaneval", "swebench-lite", "swebench-verified"} <= set(task_source_names())
    assert get_task_source("bundled").task_file().name == "tasks.jsonl"
    assert registry.owner_of("bundled/toolz") is get_task_source("bundled")
    assert registry.owner_of("bundled/humaneval") is get_task_source("humaneval")
    assert registry.owner_of("psf/requests") is None  # found by mirror dir or URL, not built by a source
    with pytest.raises(KeyError, match="known: .*bundled"):
        get_task_source("nope")


@pytest.fixture
def fake_source(demo_repo: Path, tmp_path: Path) -> Iterator[dict[str, object]]:
    """A source named 'fake' that owns `fake/...` repos and locates them at the demo repo, counting builds."""
    calls: list[str] = []

    def locate(repo: str, cache_dir: Path | None) -> Path:
        calls.append(repo)
        return demo_repo

    task_file = tmp_path / "fake.jsonl"
    records = [{"instance_id": f"fake__demo-{i}", "repo": "fake/demo", "base_commit": "HEAD",
                "problem_statement": "add(2, 3) returns -1 instead of 5."} for i in (1, 2)]
    task_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    source = register_task_source(TaskSource("fake", lambda: task_file, owns=lambda r: r.startswith("fake/"),
                                             locate=locate))
    yield {"calls": calls, "source": source, "file": task_file}
    registry._SOURCES.pop("fake", None)


def test_resolve_locates_each_repository_once_and_the_sandbox_clones_it(fake_source: dict[str, object],
                                                                        demo_repo: Path) -> None:
    tasks = resolve_tasks("fake")
    assert [t.repo_path for t in tasks] == [str(demo_repo)] * 2
    assert fake_source["calls"] == ["fake/demo"]  # two tasks, one repository, one build
    traj = run_attempt(tasks[0], ScriptedFakeModel([tool_call("submit", {})]))
    assert traj.status == "submitted", traj.exit_message
    listed = resolve_tasks("fake", locate=False)
    assert [t.repo_path for t in listed] == [None, None] and fake_source["calls"] == ["fake/demo"]


def test_a_task_with_its_own_repo_path_keeps_it(fake_source: dict[str, object], tmp_path: Path) -> None:
    own = Task(instance_id="own-1", repo="fake/demo", repo_path=str(tmp_path), problem_statement="p")
    assert locate_tasks([own])[0].repo_path == str(tmp_path) and fake_source["calls"] == []


def test_a_second_source_of_the_same_name_is_refused(fake_source: dict[str, object]) -> None:
    with pytest.raises(KeyError, match="already registered"):
        register_task_source(TaskSource("fake", lambda: Path("x")))
    with pytest.raises(ValueError, match="both"):
        register_task_source(TaskSource("half", lambda: Path("x"), owns=lambda r: True))


def test_quickstart_tasks_mix_humaneval_and_the_hard_bundled_bugs() -> None:
    """The first command's tasks: what the 0.5B can do and, not hidden, what it cannot (bundled SWE-style bugs);
    each keeps its repository, built by its own source."""
    from agent_selfevolve.sources import quickstart, resolve_tasks

    tasks = resolve_tasks("quickstart")
    ids = [t.instance_id for t in tasks]
    assert ids == quickstart.HUMANEVAL_IDS + quickstart.BUNDLED_IDS
    assert {t.repo for t in tasks} == {"bundled/humaneval", "bundled/inflection", "bundled/toolz"}
    assert all(t.repo_path and Path(t.repo_path, ".git").exists() for t in tasks)
