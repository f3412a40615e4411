"""The coding environment: a task's repo in a fresh worktree, the tool bundles, patch extraction, grading."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.base import Evaluation, Observation, ToolCall
from agent_selfevolve.envs.grading import (
    PatchApplyError,
    apply_patch,
    grade,
    is_test_file,
    parse_test_output,
    test_command,
)
from agent_selfevolve.envs.runner import CommandRunner
from agent_selfevolve.envs.tools import DEFAULT_TOOLS, ToolBundle, load_bundles
from agent_selfevolve.envs.worktree import WorktreePool, git
from agent_selfevolve.tasks import Task


class CodingEnvironment:
    """One attempt's sandbox. `name` identifies the worktree, so a resumed attempt re-attaches to its files."""

    def __init__(self, task: Task, name: str, pool: WorktreePool | None = None,
                 tools: tuple[str, ...] | list[str] = DEFAULT_TOOLS, command_timeout_s: float = 60,
                 test_timeout_s: float = 600, isolate: bool | None = None, keep: bool = False,
                 preview_chars: int = 0):
        if task.kind != "swe":
            raise ValueError(f"task {task.instance_id} is a {task.kind} task, not a coding task")
        self.task, self.name = task, name
        self.pool = pool or WorktreePool()
        self.bundles: list[ToolBundle] = load_bundles(tools)
        self.command_timeout_s, self.test_timeout_s = command_timeout_s, test_timeout_s
        self.isolate, self.keep = isolate, keep
        self.preview_chars = preview_chars
        """Show the repo's files in the first observation when they fit in this many characters (0: never).
        Spares a small model the exploration it is worst at, on one- or two-file repos."""
        self.path: Path | None = None
        self.runner: CommandRunner | None = None
        self.submitted = False

    def tool_specs(self) -> list[dict[str, Any]]:
        return [b.openai_schema() for b in self.bundles]

    def reset(self) -> Observation:
        self.path = self.pool.create(self.task, self.name)
        python_dir = str(Path(sys.executable).parent)
        self.runner = CommandRunner(self.path, timeout_s=self.command_timeout_s, isolate=self.isolate,
                                    env={"PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin"})
        listing = sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir() if p.name != ".git")
        text = f"Repository root: {self.path}\nTop-level entries: {' '.join(listing)}"
        return Observation(text + self._preview(), info={"worktree": str(self.path)})

    def _preview(self) -> str:
        if self.preview_chars <= 0 or self.path is None:
            return ""
        files = sorted(f for f in git("ls-files", cwd=self.path).splitlines() if not is_test_file(f))
        shown, size = [], 0
        for name in files:
            try:
                text = (self.path / name).read_text()
            except (OSError, UnicodeDecodeError):
                return ""
            size += len(text)
            if size > self.preview_chars:
                return ""  # all or nothing: a partial view would hide where the bug is
            shown.append(f"\n\n{name}:\n```\n{text.rstrip()}\n```")
        return "".join(shown)

    def step(self, call: ToolCall) -> Observation:
        if self.runner is None:
            self.reset()
        assert self.runner is not None
        bundle = next((b for b in self.bundles if b.name == call.name), None)
        if bundle is None:
            return Observation(f"Unknown tool '{call.name}'. Available: {', '.join(b.name for b in self.bundles)}",
                               error=True)
        if bundle.builtin == "submit":
            self.submitted = True
            patch = self.outcome()["patch"]
            summary = f"Submitted a patch touching {patch.count('diff --git')} file(s)." if patch else \
                "Submitted with no changes to the repository."
            return Observation(summary, done=True, info={"patch_chars": len(patch)})
        if bundle.builtin == "bash":
            command = call.arguments.get("command")
            if not isinstance(command, str) or not command.strip():
                return Observation("Error: bash needs a non-empty 'command' string.", error=True)
            result = self.runner.run(command)
        else:
            assert bundle.script is not None
            result = self.runner.run([sys.executable, str(bundle.script), json.dumps(call.arguments)])
        text = result.output if result.output.strip() else f"(no output, exit code {result.returncode})"
        if result.returncode != 0 and bundle.builtin == "bash":
            text += f"\n[exit code {result.returncode}]"
        return Observation(text, error=(result.returncode != 0 and bundle.builtin != "bash") or result.timed_out,
                           info={"returncode": result.returncode, "duration_s": round(result.duration_s, 4),
                                 "truncated": result.truncated, "timed_out": result.timed_out})

    def outcome(self) -> dict[str, Any]:
        """The patch: every change against the base commit (new files included), test files left out."""
        if self.path is None or not self.path.exists():
            return {"patch": ""}
        git("add", "-A", cwd=self.path)
        changed = git("diff", "--cached", "--name-only", "HEAD", cwd=self.path).split()
        keep = [f for f in changed if not is_test_file(f)]
        patch = git("diff", "--cached", "HEAD", "--", *keep, cwd=self.path) if keep else ""
        git("reset", "-q", cwd=self.path)
        return {"patch": patch, "files": keep}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """Grade with the task's hidden tests (source 'tests'); run after the agent is done, never during."""
        patch = (outcome if outcome is not None else self.outcome()).get("patch", "")
        report = grade(self.task, patch, self.pool, timeout_s=self.test_timeout_s)
        return Evaluation(report.resolved, 1.0 if report.resolved else 0.0, "tests", report.swebench())

    def proxy_evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """A reward that never touches hidden tests: the patch exists, applies, parses and the visible tests run.

        Reward: 0 no patch / does not apply; 0.25 applies; 0.5 changed Python files parse; up to 1.0 by the
        share of the repo's own visible tests (the task's `test_files` that exist at base) that pass.
        """
        patch = (outcome if outcome is not None else self.outcome()).get("patch", "")
        details: dict[str, Any] = {"applies": False, "parses": False, "visible_tests_pass_rate": None}
        if not patch.strip():
            return Evaluation(False, 0.0, "proxy", details)
        path = self.pool.create(self.task, f"{self.name}-proxy")
        try:
            try:
                apply_patch(path, patch, "model patch")
            except PatchApplyError as exc:
                details["error"] = str(exc)
                return Evaluation(False, 0.0, "proxy", details)
            details["applies"] = True
            reward = 0.25
            py = [f for f in git("diff", "--name-only", "HEAD", cwd=path).split() if f.endswith(".py")]
            check = CommandRunner(path, timeout_s=60, isolate=False).run(
                [sys.executable, "-m", "py_compile", *py]) if py else None
            details["parses"] = check is None or check.returncode == 0
            if details["parses"]:
                reward = 0.5
                visible = [f for f in self.task.test_files if (path / f).exists()]
                if visible:
                    out = CommandRunner(path, timeout_s=self.test_timeout_s, isolate=self.isolate).run(
                        test_command(self.task, visible))
                    status = parse_test_output(out.output)
                    if status:
                        rate = sum(s == "PASSED" for s in status.values()) / len(status)
                        details["visible_tests_pass_rate"] = rate
                        reward = 0.5 + 0.5 * rate
            return Evaluation(False, reward, "proxy", details)
        finally:
            self.pool.remove(path)

    def close(self) -> None:
        if self.path is not None and not self.keep:
            self.pool.remove(self.path)
        self.path, self.runner = None, None
