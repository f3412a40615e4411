"""Running a project's tests for the task factory, and what is written from their output: issue text, difficulty.

The issue text is built from what a user running the tests would see: the failing tests' names, the line of each
test that failed (the user-facing call) and pytest's `E` lines (error type, assertion message). Frames inside the
library are never quoted: they would show the mutated line. Line numbers are dropped, and any identifier that only
the changed lines (not the tests) contain is masked, so an error message naming a local variable cannot point at
the mutation either. Nothing here reads the diff except to learn which words to mask.
"""

from __future__ import annotations

import io
import keyword
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path

from agent_selfevolve.envs.grading import is_test_file, parse_test_output

FAILED = ("FAILED", "ERROR")
MAX_OUTPUT = 5_000_000
MEMORY_LIMIT = 4 << 30
_HEADLINE = re.compile(r"^_{3,} (.+?) _{3,}$")
_FRAME = re.compile(r"^(\S+?\.py):\d+: (?:in (\S+)|(\w+))$")
_SECTION_END = re.compile(r"^(={3,} |-{3,} Captured )")


@dataclass
class TestRun:
    statuses: dict[str, str]
    output: str
    seconds: float
    timed_out: bool


def pytest_argv(pytest_args: list[str], targets: list[str], tb: str = "short") -> list[str]:
    # a test module that cannot be imported (an optional test dependency missing) leaves the others usable
    return [sys.executable, "-m", "pytest", "--no-header", "-rA", f"--tb={tb}", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", *pytest_args, *targets]


def _limit_memory() -> None:  # a mutant that grows a list forever must not take the shared machine down
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_pytest(workdir: Path, targets: list[str], pytest_args: list[str], timeout: float,
               env: dict[str, str] | None = None) -> TestRun:
    """pytest on `targets` in `workdir` with the host interpreter; the whole process group dies at `timeout`."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH")}
    full_env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **(env or {}))
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(pytest_argv(pytest_args, targets), cwd=workdir, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_limit_memory)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
        out.seek(0)
        text = out.read(MAX_OUTPUT).decode("utf-8", errors="replace")
    return TestRun(parse_test_output(text), text, time.monotonic() - start, timed_out)


def copy_plugin(dest_dir: Path) -> Path:
    """The call-trace plugin as a lone module in `dest_dir` (put on PYTHONPATH, loaded with `-p calltrace`)."""
    from agent_selfevolve.sources import calltrace

    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(calltrace.__file__, dest_dir / "calltrace.py")
    return dest_dir


def headline(test_id: str) -> str:
    """pytest's section title for a test id: `tests/t.py::TestA::test_b[x]` -> `TestA.test_b[x]`."""
    return test_id.split("::", 1)[-1].replace("::", ".")


def failure_sections(output: str) -> dict[str, list[str]]:
    """{section title: its lines} of the FAILURES and ERRORS parts of a `--tb=short` run."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        match = _HEADLINE.match(line)
        if match:
            current = sections.setdefault(match.group(1).removeprefix("ERROR at setup of ")
                                          .removeprefix("ERROR at teardown of "), [])
        elif _SECTION_END.match(line):
            current = None
        elif current is not None:
            current.append(line)
    return sections


def diff_only_names(changed_lines: list[str], test_texts: list[str]) -> set[str]:
    """Identifiers written in the changed lines (either version) that no test file contains."""
    names: set[str] = set()
    for line in changed_lines:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
        except (tokenize.TokenError, IndentationError, SyntaxError):
            tokens = []
        names.update(t.string for t in tokens if t.type == tokenize.NAME and not keyword.iskeyword(t.string))
    in_tests = set(re.findall(r"[A-Za-z_]\w*", "\n".join(test_texts)))
    return names - in_tests


def _mask(line: str, secret: set[str]) -> str:
    line = re.sub(r"\b0x[0-9a-fA-F]{6,}\b", "0x...", line)  # object addresses: the same text on every run
    line = re.sub(r"(\.py):\d+", r"\1", line)
    line = re.sub(r"\bline \d+", "line ...", line)
    if secret:
        line = re.sub(r"[A-Za-z_]\w*", lambda m: "..." if m.group(0) in secret else m.group(0), line)
    return line


def test_excerpt(lines: list[str], secret: set[str], max_lines: int = 14) -> list[str]:
    """The test-file frames (`in test_x:` + the failing line) and the `E` lines of one failure section."""
    out: list[str] = []
    in_test_frame = False
    for line in lines:
        frame = _FRAME.match(line)
        if frame:
            in_test_frame = is_test_file(frame.group(1))
            if in_test_frame:
                out.append(f"in {frame.group(2) or frame.group(3)}:")
        elif line.startswith("E ") or (in_test_frame and line.startswith("    ") and line.strip()):
            out.append(_mask(line, secret))
    return out[:max_lines] + (["..."] if len(out) > max_lines else [])


def issue_text(project: str, version: str, fail_to_pass: list[str], output: str, secret: set[str],
               max_detailed: int = 3, max_listed: int = 12) -> str:
    """An issue a user could have filed after running the tests: what fails and how, nothing of the fix."""
    sections = failure_sections(output)
    plural = len(fail_to_pass) > 1
    lines = [f"{project} {version}: {len(fail_to_pass)} test{'s' if plural else ''} of the project's own suite "
             f"fail{'' if plural else 's'}", "",
             "The following test" + ("s fail:" if plural else " fails:"), ""]
    lines += [f"- `{t}`" for t in fail_to_pass[:max_listed]]
    if len(fail_to_pass) > max_listed:
        lines.append(f"- ... and {len(fail_to_pass) - max_listed} more")
    shown = 0
    for test in fail_to_pass:
        excerpt = test_excerpt(sections.get(headline(test), []), secret)
        if not excerpt or shown >= max_detailed:
            continue
        shown += 1
        lines += ["", f"`{test}`:", "", "```", *excerpt, "```"]
    lines += ["", "These tests are not in the checkout; the calls and errors above are what they report. The tests "
              "are right: fix the library (not the tests) so that they pass, without breaking other behaviour.", ""]
    return "\n".join(lines)


def bare_name(function: str) -> str:
    return function.rsplit(".", 1)[-1].strip("_").lower()


def difficulty(function: str, fail_to_pass: list[str], problem: str, fix_lines: int) -> tuple[str, dict[str, object]]:
    """A level from what makes a bug easy to find: a failing test or the issue naming the function, a one- or
    two-line fix, several failing tests to triangulate from. Raw features are returned too, to re-bin later."""
    name = bare_name(function)
    names_function = bool(name) and any(name in t.split("::", 1)[-1].lower() for t in fail_to_pass)
    issue_names = bool(name) and re.search(rf"\b_*{re.escape(name)}\b", problem, re.IGNORECASE) is not None
    score = (not names_function) + (not issue_names) + (fix_lines > 2) + (len(fail_to_pass) == 1)
    level = "easy" if score <= 1 else "medium" if score == 2 else "hard"
    return level, {"score": score, "names_function": names_function, "issue_names_function": issue_names,
                   "fix_lines": fix_lines, "n_fail_to_pass": len(fail_to_pass), "files": 1, "functions": 1}


def changed_lines(patch: str) -> list[str]:
    return [line[1:] for line in patch.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_file_of(test_id: str) -> str:
    return test_id.split("::", 1)[0]


def usable_test_id(test_id: str) -> bool:
    """A test id the grader can report: one token, in a test file (not a doctest of a library module)."""
    return not re.search(r"\s", test_id) and is_test_file(test_file_of(test_id))
