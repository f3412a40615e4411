"""Task sources: where tasks and their repositories come from (bundled SWE-style bugs, HumanEval, SWE-bench).

They sit above the sandbox: `envs/` imports nothing from here. A source registers itself by name
(`register_task_source`); `resolve_tasks("bundled")` loads a source's tasks (or a task file) and puts the location
of each repository a source builds into the task's `repo_path`, so the sandbox only ever clones a path or a URL.

    sources/registry.py  TaskSource, register/get, locate_tasks, resolve_tasks (the `--tasks` table)
    sources/build.py     shared repo-build helpers (pinned downloads, locks, atomic builds), a leaf
    sources/check.py     gold-patch validation of built repo tasks
    sources/bundled.py, humaneval.py, swebench.py, browsergym.py   the sources, each registering itself on import
    sources/quickstart.py  the first command's tasks (a few HumanEval and bundled ones)
    sources/factory.py (+ factory_repo.py, factory_run.py, mutations.py, calltrace.py)   `selfevolve tasks make`:
                         tasks mutated from real projects' test suites; `--tasks factory`, `factory:<project>`
"""

from __future__ import annotations

from agent_selfevolve.sources import browsergym, bundled, factory_repo, humaneval, quickstart, swebench
from agent_selfevolve.sources.registry import (
    TaskSource,
    get_task_source,
    locate_repo,
    locate_tasks,
    register_task_source,
    resolve_tasks,
    task_source_names,
)

__all__ = ["TaskSource", "browsergym", "bundled", "factory_repo", "get_task_source", "humaneval", "locate_repo",
           "locate_tasks", "quickstart", "register_task_source", "resolve_tasks", "swebench", "task_source_names"]
