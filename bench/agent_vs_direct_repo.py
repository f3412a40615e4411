"""Repository tasks for bench/agent_vs_direct.py: which factory tasks a run takes, the direct arms' one turn on a
repository (oracle localization: the files the gold patch edits, or only the definitions it edits, are shown), and
the agent's first edit replayed.

The gold patch is read for where it edits only: the names of its files and its hunks' old line numbers. The code
shown comes from the task's own checkout at the base commit (what the agent sees); the patch's new lines and the
hidden tests never come near the prompt.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.base import INITIAL_STATE, ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.envs.definitions import DefinitionError, Merge, merge_definitions
from agent_selfevolve.envs.localize import Definition, definitions, show
from agent_selfevolve.envs.worktree import WorktreePool, git
from agent_selfevolve.models.base import Model, ModelError
from agent_selfevolve.setups import get_setup
from agent_selfevolve.sources import locate_tasks, resolve_tasks
from agent_selfevolve.sources.factory_repo import project_of, task_file, tasks_dir
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)
LEVELS = ("easy", "medium", "hard")
REPO_PROMPT = """Fix this issue in a Python repository.

{issue}

The code to fix is in {paths}:

{files}

Reply with the complete fixed function (or functions) in one ```python code block."""
FUNCTION_PROMPT = """Fix this issue in a Python repository.

{issue}

The code to fix:

{code}

Reply with the complete fixed function in one ```python code block."""
DIRECT_SHOWN = ("files", "function")
"""What a direct arm on a repository task is shown: `direct` the whole files the gold patch edits,
`direct:function` only the definitions around its edits (function-level oracle localization, as Agentless's
repair step gets after localizing): the files can overflow a small model's context, one function cannot."""


def slice_of(items: list[Task], spec: str) -> list[Task]:
    """`--tasks lo:hi` (either end may be left out; a lone number is where the slice starts)."""
    lo, _, hi = spec.partition(":")
    return items[int(lo or 0):int(hi) if hi else None]


def factory_tasks(source: str, slice_: str, keep: set[str] | None = None) -> list[Task]:
    """`factory:<project or all>[:<level>]`: that project's tasks in their file's order, of one difficulty level
    when given, sliced by `--tasks`; only the chosen ones are located. With `all`, the projects take turns (each
    one's first task, then each one's second, ...), so a slice is a mix of projects, not the first project.
    `keep`: only these task ids, before the slice."""
    _, _, rest = source.partition(":")
    project, _, level = rest.partition(":")
    project = project or "all"
    if level and level not in LEVELS:
        raise SystemExit(f"--source {source}: the level is one of {', '.join(LEVELS)}, not {level!r}")
    path: Path = tasks_dir() if project == "all" else task_file(project)
    if not path.exists() or (path.is_dir() and not any(path.glob("*.jsonl"))):
        raise SystemExit(f"--source {source}: no factory tasks at {path}; run `selfevolve tasks install "
                         f"bench/results/factory-tasks/{'*' if project == 'all' else project}.json.xz` (or "
                         f"`selfevolve tasks make {'<project>' if project == 'all' else project}`) first")
    tasks = [t for t in resolve_tasks(str(path), locate=False) if not level or getattr(t, "difficulty", "") == level]
    if keep is not None:
        tasks = [t for t in tasks if t.instance_id in keep]
    if project == "all":
        tasks = projects_in_turn(tasks)
    return locate_tasks(slice_of(tasks, slice_))


def projects_in_turn(tasks: list[Task]) -> list[Task]:
    """Round-robin over projects (`factory__<project>-<digest>`), each project's tasks kept in order."""
    by_project: dict[str, list[Task]] = {}
    for task in tasks:
        by_project.setdefault(project_of(task.instance_id) or "", []).append(task)
    queues = list(by_project.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def edited_files(patch: str) -> list[str]:
    """The files a patch changes, in its order (names only: nothing else of the patch is read)."""
    return list(dict.fromkeys(re.findall(r"^diff --git a/(\S+) b/\S+$", patch, re.M)))


def changed_lines(chunk: str) -> list[int]:
    """Old-side line numbers a one-file diff changes: each removed line, and the line an addition follows. Only
    the lines' +/-/space markers are read, never their text."""
    lines: list[int] = []
    for hunk in re.split(r"^(?=@@ )", chunk, flags=re.M):
        head = re.match(r"@@ -(\d+)", hunk)
        if not head:
            continue
        old = int(head.group(1))
        for line in hunk.splitlines()[1:]:
            if line.startswith("-"):
                lines.append(old)
                old += 1
            elif line.startswith("+"):
                lines.append(max(old - 1, 1))
            elif line.startswith(" "):
                old += 1
    return lines


def edited_definitions(patch: str, files: dict[str, str]) -> list[Definition]:
    """The innermost definition around each changed line, per file of `files` the patch edits, in the patch's
    order."""
    found: list[Definition] = []
    for chunk in re.split(r"^(?=--- a/)", patch, flags=re.M):
        path = re.match(r"--- a/(\S+)", chunk)
        if not path or path.group(1) not in files:
            continue
        defs = definitions(path.group(1), files[path.group(1)])
        for line in changed_lines(chunk):
            around = [d for d in defs if d.start <= line <= d.end]
            if around and (inner := min(around, key=lambda d: d.end - d.start)) not in found:
                found.append(inner)
    return found


def repo_prompt(task: Task, files: dict[str, str]) -> str:
    shown = "\n\n".join(f"{path}:\n```python\n{text.rstrip()}\n```" for path, text in files.items())
    return REPO_PROMPT.format(issue=task.problem_statement.strip(), paths=", ".join(files), files=shown)


def merge_reply(reply: str, files: dict[str, str]) -> tuple[Merge | None, str]:
    """The first code block of the reply that merges into one of `files` as the agent's `python` tool merges
    (envs/definitions.py), and a status: answered, no_code_block or unmergeable (no block defines a function or
    class one shown file holds)."""
    blocks = CODE_BLOCK.findall(reply)
    for code in blocks:
        try:
            return merge_definitions(code, files), "answered"
        except DefinitionError:
            continue
    return None, "unmergeable" if blocks else "no_code_block"


def run_direct_repo(task: Task, model: Model, shown: str = "files") -> dict[str, Any]:
    """A direct arm on a repository task: one turn with the issue and what `shown` names (DIRECT_SHOWN) of the
    files the gold patch edits, as they are at the base commit; the reply merged into those files, the patch
    graded by the hidden tests. `completion_tokens` tells a reply cut at the token limit."""
    if shown not in DIRECT_SHOWN:
        raise ValueError(f"shown: one of {', '.join(DIRECT_SHOWN)}, not {shown!r}")
    start = time.monotonic()
    pool = WorktreePool()
    name = f"avd-direct-{task.instance_id}"
    pool.remove(pool.root / "worktrees" / name)  # a run killed here must not leave an edited copy to reuse
    checkout = pool.create(task, name)
    try:
        files = {p: (checkout / p).read_text(encoding="utf-8", errors="replace") for p in edited_files(task.patch)
                 if (checkout / p).is_file()}
        if shown == "files":
            prompt = repo_prompt(task, files)
        elif defs := edited_definitions(task.patch, files):
            prompt = FUNCTION_PROMPT.format(issue=task.problem_statement.strip(),
                                            code="\n\n".join(show(d) for d in defs))
        else:  # the fix edits module-level code only
            return {"resolved": False, "status": "no_definition", "tokens": 0,
                    "seconds": round(time.monotonic() - start, 2)}
        try:
            reply = model.chat([{"role": "user", "content": prompt}], None)
        except ModelError as exc:  # e.g. a file larger than the model's context window
            return {"resolved": False, "status": "model_error", "tokens": 0,
                    "seconds": round(time.monotonic() - start, 2), "error": str(exc)[:300]}
        merged, status = merge_reply(reply.message.get("content") or "", files)
        patch = ""
        if merged is not None:
            (checkout / merged.path).write_text(merged.text, encoding="utf-8")
            patch = git("diff", "--no-color", "--no-ext-diff", "--", merged.path, cwd=checkout)
    finally:
        pool.remove(checkout)
    resolved = bool(patch) and CodingEnvironment(task, name).evaluate({"patch": patch}).resolved
    return {"resolved": resolved, "status": status, "tokens": reply.usage.total_tokens,
            "completion_tokens": reply.usage.completion_tokens, "seconds": round(time.monotonic() - start, 2)}


def replayed_patches(task: Task, traj: Trajectory, profile: str, steps: int | None = None) -> Iterator[str]:
    """The attempt's patch after each of its first `steps` (all: None) actions, replayed on a fresh checkout. Steps
    the agent recorded as leaving the repository as it was (the same `state`) are skipped, so reads and checks are
    not run again; an edit by any tool counts (the `python` tool, write_file, a `sed` through bash)."""
    options = {**get_setup(profile).env_options(), "check_on_write": False, "submit_when_checks_pass": False,
               "preview_chars": 0}
    env = CodingEnvironment(task, f"avd-replay-{task.instance_id}", **options)
    env.pool.remove(env.pool.root / "worktrees" / env.name)  # never resume a replay cut short
    try:
        env.reset()
        before = INITIAL_STATE
        for step in traj.steps[:steps]:
            action = step.get("action")
            state = (step.get("info") or {}).get("state")
            if not action or action.get("name") == "submit" or (state is not None and state == before):
                continue
            before = state or before
            env.step(ToolCall(action["name"], action.get("arguments") or {}))
            yield str(env.outcome()["patch"])
    finally:
        env.close()


def first_edit_patch(task: Task, traj: Trajectory, profile: str) -> str | None:
    """The patch after the attempt's first edit that took effect (None: it never changed the code)."""
    with closing(replayed_patches(task, traj, profile)) as patches:  # closing: the checkout goes at once
        return next((patch for patch in patches if patch), None)


def patch_after_steps(task: Task, traj: Trajectory, profile: str, steps: int) -> str:
    """The patch the attempt had after its first `steps` steps: what a run with that step budget would have
    graded."""
    return ([""] + list(replayed_patches(task, traj, profile, steps)))[-1]
