"""The proxy reward: how good a patch looks using only what the agent could see, never the hidden tests.

On a fresh checkout of the base commit with the patch applied, it runs three kinds of checks:

- repo tests: the repository's own test files at base that are named after, or import, a module the patch
  edits (found by reading the checkout, never from the task's `test_files`, `test_patch` or test ids, which
  come from the hidden tests). A base test file the agent edited runs in its base version, so weakening a
  test gains nothing. When none exists, the tests importing the module's top-level package stand in
  ('package_tests', weaker evidence);
- doctests of the edited modules, and their one-line docstring examples (`f(2) == 4`, envs/examples.py): the
  specification as the issue's reader sees it (HumanEval's prompts carry one or the other);
- agent checks: new test files and reproduction scripts the agent wrote (left out of the patch by
  `CodingEnvironment.outcome`, carried in `outcome["checks"]`), weaker evidence since the agent wrote them.

Reward: 0 without a patch or when it does not apply; APPLY_CREDIT when it applies, PARSE_CREDIT when the changed
Python files also compile; then PARSE_CREDIT + CHECK_SHARE * sum(weight * pass rate) / max(1, sum(weight)) over
the groups that ran (GROUP_WEIGHTS). So 1.0 needs a full-weight group the agent did not write (repo tests or
doctests): weak evidence alone (the package's tests, the agent's own checks) tops out lower, and with no check at
all the reward stays at PARSE_CREDIT. `ceiling` in the result is what the attempt could have reached.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.base import Evaluation
from agent_selfevolve.envs.examples import check_script, find_examples, unanswered_doctest_comparisons
from agent_selfevolve.envs.grading import (
    DEFAULT_TEST_CMD,
    PatchApplyError,
    apply_patch,
    is_test_file,
    parse_test_output,
    patch_files,
    scratch_checkout,
    test_command,
)
from agent_selfevolve.envs.runner import CommandRunner
from agent_selfevolve.envs.worktree import WorktreePool, git
from agent_selfevolve.tasks import Task

APPLY_CREDIT = 0.1
PARSE_CREDIT = 0.2
CHECK_SHARE = 1.0 - PARSE_CREDIT
SHOW_FAILURES = ["--tb=short"]
"""pytest shows each failure's assertion or doctest Expected/Got (the grading command says --tb=no): what an agent
checking its own work revises by."""
CHECK_OUTPUT_CHARS = 400_000
"""A check run's output is parsed (statuses, why a test could not run) and only a short report of it is shown, so
it is read whole: cut to the shell's 10k, the reasons for a plugin fixture's 15 setup errors fell out of it."""
GROUP_WEIGHTS = {"repo_tests": 1.0, "doctests": 1.0, "examples": 1.0, "package_tests": 0.5, "agent_checks": 0.5}
"""Weight of each check group: how much evidence its passing is (see the module docstring)."""
MAX_REPO_TEST_FILES = 6
MAX_CHECK_FILES = 20
MAX_CHECK_CHARS = 50_000
_SCRATCH = re.compile(r"(^|/)(repro|reproduce|reproduction)[\w.-]*\.py$", re.I)
_SOURCE_ROOTS = ("src", "lib")


def is_scratch_script(path: str) -> bool:
    """A reproduction script the agent wrote (e.g. reproduce_bug.py): a check, not part of the fix."""
    return bool(_SCRATCH.search(path))


def is_agent_check(path: str) -> bool:
    """A new file that `outcome()` carries as a check rather than in the patch."""
    return path.endswith(".py") and (is_test_file(path) or is_scratch_script(path))


def runnable_test(path: str) -> bool:
    """A file pytest collects by default (not a conftest or helper)."""
    name = Path(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def module_of(path: str) -> tuple[str, str] | None:
    """(dotted module name, short name) of a Python source file, or None for a non-module path."""
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    if len(parts) > 1 and parts[0] in _SOURCE_ROOTS:
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts), parts[-1]


def _imports(text: str, dotted: str, short: str) -> bool:
    if re.search(rf"^\s*(?:from|import)\s+{re.escape(dotted)}\b", text, re.M):
        return True
    parent = dotted.rpartition(".")[0]
    return bool(parent) and bool(re.search(rf"^\s*from\s+{re.escape(parent)}\s+import\s+[^\n]*\b{short}\b",
                                           text, re.M))


def _in_test_dir(path: str) -> bool:
    return any(part in ("test", "tests", "testing") for part in Path(path).parts[:-1])


def _test_texts(root: Path, tracked: list[str]) -> dict[str, str]:
    """Runnable test files at base and their text, those in a test directory first (not examples or docs)."""
    out = {}
    for f in sorted((f for f in tracked if is_test_file(f) and runnable_test(f)),
                    key=lambda f: (not _in_test_dir(f), f)):
        try:
            out[f] = (root / f).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return out


def _modules(edited: list[str]) -> list[tuple[str, str]]:
    return [m for m in (module_of(f) for f in edited if not is_test_file(f)) if m]


def related_test_files(root: Path, tracked: list[str], edited: list[str],
                       limit: int = MAX_REPO_TEST_FILES) -> list[str]:
    """Runnable test files at base named after an edited module (first) or importing one, at most `limit`."""
    modules = _modules(edited)
    texts = _test_texts(root, tracked) if modules else {}
    named = [f for f in texts if any(Path(f).stem in (f"test_{s}", f"{s}_test", f"tests_{s}") for _, s in modules)]
    importing = [f for f in texts if f not in named and any(_imports(texts[f], d, s) for d, s in modules)]
    return (named + importing)[:limit]


def package_test_files(root: Path, tracked: list[str], edited: list[str],
                       limit: int = MAX_REPO_TEST_FILES) -> list[str]:
    """Runnable test files at base importing an edited module's top-level package (its public names)."""
    tops = {d.split(".")[0] for d, _ in _modules(edited)}
    texts = _test_texts(root, tracked) if tops else {}
    return [f for f in texts if any(_imports(texts[f], top, top) for top in tops)][:limit]


def doctest_modules(root: Path, edited: list[str]) -> list[str]:
    """Edited source modules that hold doctest examples (not those whose `>>> f(x) == y` lines show no output:
    those run as docstring examples, see envs/examples.py)."""
    out = []
    for f in edited:
        if not f.endswith(".py") or is_test_file(f) or not (root / f).is_file():
            continue
        text = (root / f).read_text(encoding="utf-8", errors="replace")
        if re.search(r"^\s*>>> ", text, re.M) and not unanswered_doctest_comparisons(text):
            out.append(f)
    return out


def carried_checks(root: Path, new_files: list[str]) -> dict[str, str]:
    """The agent's new test files and reproduction scripts, as {path: text}, bounded in number and size."""
    checks: dict[str, str] = {}
    for f in sorted(new_files):
        if len(checks) >= MAX_CHECK_FILES or not is_agent_check(f):
            continue
        try:
            text = (root / f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) <= MAX_CHECK_CHARS:
            checks[f] = text
    return checks


_SECTION = re.compile(r"^_{3,} (?:\[doctest\] )?(?P<name>.+?) _{3,}$")


_COLLECT_ERROR = re.compile(r"^_+ ERROR collecting (?P<path>\S+) _+$")
_SETUP_ERROR = re.compile(r"^_+ ERROR at setup of (?P<name>\S+) _+$")
_NO_MODULE = re.compile(r"ModuleNotFoundError: No module named '(?P<module>[\w.]+)'")
_NO_FIXTURE = re.compile(r"^E\s+fixture '(?P<fixture>\w+)' not found")


def unrunnable_here(output: str, root: Path) -> dict[str, str]:
    """{test file, or `::test` id suffix: why} for the tests pytest could not run for want of something that is
    neither installed nor part of the repository: a module a test file imports (funcy's tests import `whatever`),
    a plugin's fixture (humanize's benchmarks need pytest-benchmark's `benchmark`). That is the environment's gap,
    not the agent's change, and must not count as a failed check no edit can fix. A module or fixture the
    repository has (one the change may have broken) stays a failure."""
    found: dict[str, str] = {}
    defined: dict[str, bool] = {}
    collecting: str | None = None
    setup: str | None = None
    for line in output.splitlines():
        collect, set_up = _COLLECT_ERROR.match(line.strip()), _SETUP_ERROR.match(line.strip())
        if collect or set_up or line.startswith("=") or _SECTION.match(line.strip()):
            collecting = collect.group("path") if collect else None
            setup = set_up.group("name") if set_up else None
            continue
        module, fixture = _NO_MODULE.search(line), _NO_FIXTURE.match(line)
        if collecting and module:
            top = module.group("module").split(".")[0]
            if not any(p.exists() for p in (root / top, root / f"{top}.py", root / "src" / top,
                                            root / "src" / f"{top}.py")):
                found[collecting] = f"it needs the module {module.group('module')!r}, which is not installed here"
            collecting = None
        elif setup and fixture and not _defined(root, fixture.group("fixture"), defined):
            found["::" + setup.replace(".", "::")] = (f"it needs the pytest fixture {fixture.group('fixture')!r}, "
                                                      "from a plugin not installed here")
            setup = None
    return found


def _defined(root: Path, name: str, known: dict[str, bool]) -> bool:
    if name not in known:  # one search of the repository per fixture, not per test needing it
        known[name] = _defines(root, name)
    return known[name]


def _defines(root: Path, name: str) -> bool:
    pattern = re.compile(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", re.M)
    return any(pattern.search(p.read_text(encoding="utf-8", errors="replace")) for p in root.rglob("*.py")
               if ".git" not in p.parts)


def _failure_sections(out: list[str], keep: int = 80) -> dict[str, list[str]]:
    """pytest's failure sections by title (`test_x[1]`, `TestX.test_y`, a doctest's `module.func`): the last lines
    of each, where pytest shows the failing assertion or the doctest's Expected/Got (`_section_for` trims them)."""
    found: dict[str, list[str]] = {}
    title: str | None = None
    for line in out:
        m = _SECTION.match(line.strip())
        if m or line.startswith("=") or line.startswith("---"):
            title = m.group("name") if m else None
            if title is not None:
                found[title] = []
        elif title is not None and line.strip():
            found[title].append("    " + line.rstrip())
    return {t: body[-keep:] for t, body in found.items()}


def _section_for(check_id: str, sections: dict[str, list[str]]) -> list[str]:
    last = check_id.rsplit("::", 1)[-1]
    body = next((body for t, body in sections.items() if t == last or t.endswith("." + last)), [])
    return doctest_failure(body) or body[-12:]


_NUMBERED = re.compile(r"^\s*\d{3,}\s?(?P<src>.*)$")
_PYTEST_MARK = re.compile(r":\d+: (DocTestFailure|UnexpectedException)$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')


def doctest_failure(body: list[str]) -> list[str]:
    """pytest's doctest section as the doctest module prints it: the failing example, then Expected/Got or the
    exception with the frames in the repository's code. pytest adds the docstring's numbered lines above the
    example and doctest.py's own frames; a 0.5B model copied those lines into its next answer."""
    if not any(_NUMBERED.match(b) and ">>>" in b for b in body):
        return []
    example = next(m.group("src").strip() for b in reversed(body) if (m := _NUMBERED.match(b)) and ">>>" in b)
    out = ["Failed example:", "    " + example.removeprefix(">>>").strip()]
    rest = [b.removeprefix("    ") for b in body
            if not _NUMBERED.match(b) and not _PYTEST_MARK.search(b.strip())]
    exc = next((i for i, b in enumerate(rest) if "UNEXPECTED EXCEPTION:" in b), None)
    if exc is None:
        return out + [b.rstrip() for b in rest]
    frames, last = [], rest[-1].strip()
    for i, b in enumerate(rest):
        m = _FRAME.match(b)
        if m and not m.group("file").endswith("doctest.py") and not m.group("file").startswith("<doctest"):
            code = rest[i + 1].strip() if i + 1 < len(rest) and not _FRAME.match(rest[i + 1]) else ""
            frames.append(f"    {Path(m.group('file')).name}, line {m.group('line')}, in {m.group('func')}: {code}")
    return out + ["Exception raised:", *frames, "    " + last]


@dataclass
class ProxyRun:
    """What one proxy evaluation ran: per group, {check id: passed?}."""

    groups: dict[str, dict[str, bool]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    """What each group printed (for an agent checking its own work; never stored in a reward's details)."""

    def add(self, group: str, files: list[str], results: dict[str, bool], output: str = "") -> None:
        self.files[group] = files
        self.outputs[group] = output
        if results:
            self.groups[group] = results

    def report(self, max_chars: int = 3000) -> str:
        """A short account for the agent: pass counts per group, then each failure with what it printed."""
        if not self.groups:
            return ("No checks found for your changes (no tests, doctests or docstring examples near the edited "
                    "files). Check your change yourself.")
        lines = ["Checks: " + ", ".join(f"{g} {sum(r.values())}/{len(r)} passed" for g, r in self.groups.items())]
        for group, results in self.groups.items():
            failed = {k for k, ok in results.items() if not ok}
            if not failed:
                continue
            out = self.outputs.get(group, "").splitlines()
            sections = _failure_sections(out)
            for i, line in enumerate(out):  # a failure line and the indented detail lines under it
                hit = next((k for k in failed if line.strip().endswith(k) or f" {k} " in f" {line} "), None)
                if hit is None:
                    continue
                lines.append(line.strip())
                detail = [d.rstrip() for d in out[i + 1:i + 4] if d.startswith("    ")]
                lines += detail or _section_for(hit, sections)
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[:max_chars] + "\n[... cut ...]"

    def score(self) -> tuple[float, float] | None:
        """(sum(weight * pass rate), the most it could be) over the groups that ran, both divided by
        max(1, total weight); None when nothing ran."""
        rated = {g: sum(r.values()) / len(r) for g, r in self.groups.items() if r}
        if not rated:
            return None
        total = sum(GROUP_WEIGHTS[g] for g in rated)
        return sum(GROUP_WEIGHTS[g] * rate for g, rate in rated.items()) / max(1.0, total), min(1.0, total)

    def details(self) -> dict[str, Any]:
        return {"checks": {g: {"files": self.files.get(g, []), "passed": sum(r.values()), "total": len(r),
                               "failed": sorted(k for k, ok in r.items() if not ok)[:10]}
                           for g, r in self.groups.items()},
                "skipped": sorted(g for g in self.files if g not in self.groups and self.files[g]),
                "notes": self.notes}


def pytest_based(task: Task) -> bool:
    return "pytest" in (task.test_cmd or DEFAULT_TEST_CMD)


def _statuses(output: str) -> dict[str, bool]:
    """{check: passed?}; a skipped test or doctest is neither (more_itertools skips a doctest with +SKIP: counted
    as failed, no edit could make every check pass)."""
    return {k: v in ("PASSED", "XFAIL") for k, v in parse_test_output(output).items() if v != "SKIPPED"}


def _run_group(runner: CommandRunner, command: str | list[str], files: list[str],
               timeout_s: float | None = None) -> tuple[dict[str, bool], str]:
    """({check: passed}, output) of one group's command. A run cut off at the timeout fails each of its files
    (code that never returns is wrong, not unchecked: reading it as "no checks" hid endless loops)."""
    done = runner.run(command, timeout_s=timeout_s, max_output_chars=CHECK_OUTPUT_CHARS)
    results, out = _statuses(done.output), done.output
    if done.timed_out:
        results.update({f: False for f in files})
        limit = timeout_s or runner.timeout_s
        out += "".join(f"\nFAILED {f}\n    timed out after {limit:g} s (does the code ever return?)" for f in files)
    return results, out


def run_checks(task: Task, root: Path, tracked: list[str], edited: list[str], checks: dict[str, str],
               runner: CommandRunner, python: str | None = None, timeout_s: float | None = None) -> ProxyRun:
    """Run the three groups in `root` (base + patch): repo tests and doctests first, then the agent's checks;
    each command for at most `timeout_s` (default: the runner's)."""
    run = ProxyRun()
    py = python or sys.executable
    repo_tests = related_test_files(root, tracked, edited)
    group, files = ("repo_tests", repo_tests) if repo_tests else ("package_tests",
                                                                   package_test_files(root, tracked, edited))
    if files:  # a file that cannot be collected (an optional dependency missing) fails alone, not the group
        keep_going = ["--continue-on-collection-errors", *SHOW_FAILURES] if pytest_based(task) else []
        results, out = _run_group(runner, test_command(task, [*keep_going, *files], py), files, timeout_s)
        for key, why in unrunnable_here(out, root).items():
            dropped = [k for k in results if k == key or (key.startswith("::") and k.endswith(key))]
            for k in dropped:
                del results[k]
            if dropped:
                run.notes.append(f"{key.removeprefix('::')} not run: {why}")
        run.add(group, files, results, out)
    docs = doctest_modules(root, edited)
    if docs and pytest_based(task):
        run.add("doctests", docs, *_run_group(runner, test_command(task, [*SHOW_FAILURES, "--doctest-modules", *docs],
                                                                    py), docs, timeout_s))
    elif docs:
        run.notes.append("doctests skipped: the task's test command is not pytest")
    examples = find_examples(root, edited)
    if examples:
        example_files = sorted({e.file for e in examples})
        run.add("examples", example_files, *_run_group(runner, [py, "-c", check_script(examples)], example_files,
                                                             timeout_s))
    new = {f: text for f, text in checks.items() if f not in set(tracked)}
    for f, text in new.items():  # written only now, so an agent's conftest cannot touch the repo tests
        target = root / f
        if target.resolve().is_relative_to(root.resolve()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    agent_tests = [f for f in new if runnable_test(f) and is_test_file(f)]
    scripts = [f for f in new if is_scratch_script(f) and not runnable_test(f)]
    results: dict[str, bool] = {}
    printed = []
    if agent_tests:
        ran, out = _run_group(runner, test_command(task, agent_tests, py), agent_tests, timeout_s)
        printed.append(out)
        results.update(ran)
    for script in scripts:
        done = runner.run(f"{shlex.quote(py)} {shlex.quote(script)}", timeout_s=timeout_s)
        results[script] = done.returncode == 0 and not done.timed_out
        printed.append(f"{'PASSED' if results[script] else 'FAILED'} {script}\n" +
                       "".join(f"    {ln}\n" for ln in done.output.strip().splitlines()[-3:]))
    run.add("agent_checks", agent_tests + scripts, results, "\n".join(printed))
    return run


def proxy_reward(applies: bool, parses: bool, run: ProxyRun | None) -> tuple[float, float | None]:
    """(reward, ceiling): the ceiling is what this attempt would have got had every check passed (None: unknown,
    since nothing could run)."""
    if not applies:
        return 0.0, None
    if not parses:
        return APPLY_CREDIT, None
    score = run.score() if run else None
    if score is None:
        return PARSE_CREDIT, PARSE_CREDIT
    return round(PARSE_CREDIT + CHECK_SHARE * score[0], 4), round(PARSE_CREDIT + CHECK_SHARE * score[1], 4)


def _test_env(task: Task, pool: WorktreePool, path: Path, isolate: bool | None
              ) -> tuple[str | None, dict[str, str] | None, bool | None]:
    """(python, runner env, isolate) for the task's own venv when it asks for one (as the grader does)."""
    from agent_selfevolve.envs import pyenv

    env_dir = pyenv.test_env_for(task, pool.root, pool) if pyenv.wants_test_env(task) else None
    if env_dir is None:
        return None, None, isolate
    pyenv.overlay_build_outputs(env_dir, path)
    return str(pyenv.venv_python(env_dir)), pyenv.runner_env(env_dir, path), isolate  # its venv: bound read-only


def evaluate_patch(task: Task, pool: WorktreePool, name: str, outcome: dict[str, Any], isolate: bool | None = None,
                   timeout_s: float = 600, mount_at: str | None = None) -> Evaluation:
    """The proxy reward of an attempt's outcome ({"patch", "checks"}) on a fresh checkout, sandboxed. `mount_at`:
    where the sandbox shows the checkout (the path the agent saw, so its own scripts find their files)."""
    from agent_selfevolve.envs.pyenv import EnvBuildError

    timeout_s = task.timeout_within(timeout_s)
    patch, checks = outcome.get("patch", ""), dict(outcome.get("checks") or {})
    details: dict[str, Any] = {"applies": False, "parses": False, "agent_check_files": sorted(checks)}
    if not patch.strip():
        return Evaluation(False, 0.0, "proxy", {**details, "ceiling": None, "error": "empty patch"})
    path = scratch_checkout(task, pool, f"{name}-proxy")  # never a stale checkout of a resume
    try:
        try:
            apply_patch(path, patch, "model patch")
        except PatchApplyError as exc:
            return Evaluation(False, 0.0, "proxy", {**details, "ceiling": None, "error": str(exc)})
        details["applies"] = True
        edited = [f for f in patch_files(patch) if (path / f).is_file()]
        py = [f for f in edited if f.endswith(".py")]
        compiled = CommandRunner(cwd=path, timeout_s=60, isolate=isolate).run(
            [sys.executable, "-m", "py_compile", *py]) if py else None
        details["parses"] = compiled is None or compiled.returncode == 0
        run: ProxyRun | None = None
        if details["parses"]:
            try:
                python, env, iso = _test_env(task, pool, path, isolate)
                runner = CommandRunner(cwd=path, timeout_s=timeout_s, isolate=iso, env=env,
                                       mount_at=mount_at if env is None else None)
                run = run_checks(task, path, git("ls-files", cwd=path).splitlines(), edited, checks, runner, python)
                details.update(run.details())
            except EnvBuildError as exc:
                details["error"] = f"no test environment: {str(exc).splitlines()[0][:300]}"
        reward, ceiling = proxy_reward(True, details["parses"], run)
        return Evaluation(False, reward, "proxy", {**details, "ceiling": ceiling})
    finally:
        pool.remove(path)
