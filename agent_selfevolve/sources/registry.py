"""Task sources by name: each module of `sources/` registers itself, as peft methods do with `register_peft_method`.

A source gives `--tasks NAME` its task file and, for repositories it builds itself (`bundled/...`), the location
of the built repository. Loading a task through `resolve_tasks` or `locate_tasks` puts that location in the task's
`repo_path`, so the sandbox (`envs/worktree.py`) clones a plain path and never needs to know the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from agent_selfevolve.tasks import Task, TaskFileError, load_tasks, scan_tasks, select_tasks


@dataclass(frozen=True)
class TaskSource:
    """A named origin of tasks.

    `task_file`: the JSON/JSONL file `--tasks NAME` reads (fetched or written on first use).
    `owns(repo)`: whether a task's `repo` names a repository this source builds; `locate(repo, cache_dir)` then
    builds it once (later calls check and reuse it) and returns its path."""

    name: str
    task_file: Callable[[], Path]
    description: str = ""
    owns: Callable[[str], bool] | None = None
    locate: Callable[[str, Path | None], Path] | None = None


_SOURCES: dict[str, TaskSource] = {}


def register_task_source(source: TaskSource, *, replace: bool = False) -> TaskSource:
    """Make `source` known under `source.name`; a second source of the same name is an error unless `replace`."""
    if source.name in _SOURCES and not replace:
        raise KeyError(f"a task source named {source.name!r} is already registered")
    if (source.owns is None) != (source.locate is None):
        raise ValueError(f"task source {source.name!r}: give both `owns` and `locate`, or neither")
    _SOURCES[source.name] = source
    return source


def get_task_source(name: str) -> TaskSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise KeyError(f"no task source {name!r}; known: {', '.join(sorted(_SOURCES))}") from None


def task_source_names() -> list[str]:
    return sorted(_SOURCES)


def owner_of(repo: str) -> TaskSource | None:
    """The source that builds `repo`, or None for repositories found by path, mirror or URL."""
    return next((s for s in _SOURCES.values() if s.owns is not None and s.owns(repo)), None)


def locate_repo(task: Task, cache_dir: Path | None = None) -> Path | None:
    """The built repository of a task whose repo a source owns (built now if needed), else None."""
    source = owner_of(task.repo) if task.repo else None
    return source.locate(task.repo, cache_dir) if source and source.locate else None


def locate_tasks(tasks: Iterable[Task], cache_dir: Path | None = None) -> list[Task]:
    """Copies of `tasks` whose `repo_path` names the built repository where a source owns the repo.

    Each repository is built (or checked) once however many tasks use it; a task that already has a
    `repo_path` keeps it."""
    located: dict[str, Path | None] = {}
    out = []
    for task in tasks:
        if task.repo_path or not task.repo:
            out.append(task)
            continue
        if task.repo not in located:
            located[task.repo] = locate_repo(task, cache_dir)
        path = located[task.repo]
        out.append(task.model_copy(update={"repo_path": str(path)}) if path else task)
    return out


def resolve_tasks(spec: str, ids: list[str] | None = None, pattern: str | None = None, slice_: str | None = None,
                  *, on_invalid: Callable[[TaskFileError], None] | None = None, locate: bool = True,
                  cache_dir: Path | None = None) -> list[Task]:
    """The tasks `--tasks SPEC` means: a registered source's name or a task file/directory, filtered by ids,
    regex and slice, with the repositories of the selected tasks located (`locate=False`: listing only).

    `on_invalid`: skip records that do not validate and report each through it; without it they raise
    `TaskFileError`."""
    path: str | Path = get_task_source(spec).task_file() if spec in _SOURCES else spec
    if on_invalid is not None:
        found, errors = scan_tasks(path)
        for err in errors:
            on_invalid(err)
        tasks = select_tasks(found, ids, pattern, slice_)
    else:
        tasks = load_tasks(path, ids=ids, pattern=pattern, slice_=slice_)
    return locate_tasks(tasks, cache_dir) if locate else tasks
