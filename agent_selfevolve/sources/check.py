"""Gold-patch validation of a source's repo tasks: FAIL_TO_PASS fails and PASS_TO_PASS passes at the base commit,
everything passes with the gold patch, run by the grader's own test command."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_selfevolve.envs.grading import parse_test_output, test_command, test_files_of
from agent_selfevolve.envs.runner import CommandRunner
from agent_selfevolve.infra import git
from agent_selfevolve.sources.build import BundledError, has_commits, worktree
from agent_selfevolve.sources.registry import locate_repo
from agent_selfevolve.tasks import Task

PASSED = ("PASSED", "XFAIL")


def run_tests(workdir: Path, task: Task, timeout: float = 300) -> tuple[dict[str, str], str]:
    """Run the task's test files under `-rA` exactly as the grader does; {test id: status} and the output."""
    result = CommandRunner(workdir, timeout_s=timeout, isolate=False, max_output_chars=2_000_000).run(
        test_command(task, test_files_of(task)))
    return parse_test_output(result.output), result.output


@dataclass
class Check:
    instance_id: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_task(task: Task, cache_dir: Path | None = None, timeout: float = 300) -> Check:
    """FAIL_TO_PASS fail and PASS_TO_PASS pass at base + test_patch; all pass once the gold patch is on too."""
    check, start = Check(task.instance_id), time.monotonic()
    repo = locate_repo(task, cache_dir)
    if repo is None:
        raise BundledError(f"{task.instance_id}: no task source builds repo {task.repo!r}")
    with worktree(repo, task.base_commit) as wt:
        git("apply", "-", cwd=wt, input=task.test_patch, hermetic=True)
        before, out1 = run_tests(wt, task, timeout)
        git("apply", "-", cwd=wt, input=task.patch, hermetic=True)
        after, out2 = run_tests(wt, task, timeout)
        if has_commits(repo, ["upstream"]):  # the gold patch must restore upstream exactly (tests aside)
            git("add", "--all", cwd=wt, hermetic=True)
            changed = git("diff", "--cached", "--name-only", "upstream", cwd=wt, hermetic=True).split()
            extra = sorted(set(changed) - set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch, re.M)))
            check.problems += [f"gold patch leaves {f} different from upstream" for f in extra]
    check.problems += [f"FAIL_TO_PASS {t} passes without the fix" for t in task.FAIL_TO_PASS if before.get(t) in PASSED]
    check.problems += [f"PASS_TO_PASS {t} is {before.get(t, 'not run')} without the fix"
                       for t in task.PASS_TO_PASS if before.get(t) not in PASSED]
    check.problems += [f"{t} is {after.get(t, 'not run')} with the gold patch"
                       for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS] if after.get(t) not in PASSED]
    if check.problems and os.environ.get("BUNDLED_DEBUG"):
        check.problems.append(f"output without fix:\n{out1[-3000:]}\noutput with fix:\n{out2[-3000:]}")
    check.counts = {"f2p_fail_base": sum(before.get(t) not in PASSED for t in task.FAIL_TO_PASS),
                    "p2p_pass_base": sum(before.get(t) in PASSED for t in task.PASS_TO_PASS),
                    "pass_gold": sum(after.get(t) in PASSED for t in [*task.FAIL_TO_PASS, *task.PASS_TO_PASS])}
    check.seconds = time.monotonic() - start
    return check


def print_table(checks: list[Check], tasks: list[Task]) -> None:
    by_id = {t.instance_id: t for t in tasks}
    print(f"{'instance_id':32} {'F2P fail@base':>14} {'P2P pass@base':>14} {'pass@gold':>10} {'s':>6}  ok")
    for c in checks:
        t = by_id[c.instance_id]
        n = c.counts
        print(f"{c.instance_id:32} {n.get('f2p_fail_base', 0):>6}/{len(t.FAIL_TO_PASS):<7} "
              f"{n.get('p2p_pass_base', 0):>6}/{len(t.PASS_TO_PASS):<7} "
              f"{n.get('pass_gold', 0):>4}/{len(t.FAIL_TO_PASS) + len(t.PASS_TO_PASS):<5} {c.seconds:6.1f}  "
              f"{'yes' if c.ok else 'NO'}")
        for problem in c.problems:
            print(f"    - {problem}")
    print(f"{sum(c.ok for c in checks)}/{len(checks)} tasks validate")
