"""The task factory: validated SWE-style tasks from a real project's own test suite, with no LLM (SWE-smith's
procedural route).

For a pinned PyPI sdist (sha256-checked) or a local repository: run the suite once with a call tracer (which test
calls which function), enumerate AST mutations (`mutations.py`) in functions some passing test calls, and try them
in a seeded order. A mutant is kept when tests that passed now fail (FAIL_TO_PASS); PASS_TO_PASS is a bounded
sample of tests that ran and passed with the mutant too. The task's base commit is the mutant, the gold `patch` the
reverse diff, and every test file holding a FAIL_TO_PASS test is removed from the base commit and put back by
`test_patch`: the agent can read the visible tests but never the failing ones (SWE-smith leaves them in place;
here the grader's verdict must stay hidden, see tests/test_no_hidden_leak.py). Each task is then checked the way
every repo task is (`check.validate_task`: FAIL_TO_PASS fail and PASS_TO_PASS pass at base + test_patch, all pass
with the gold patch, which must restore upstream exactly). The issue text comes from the failing tests' output
(`factory_run.issue_text`), never from the diff.

Deterministic for a seed (the order, the tests run, PYTHONHASHSEED), resumable (`<cache>/factory/<project>/
state.jsonl` gets one line per tried candidate), deduplicated (a mutant whose file hash was seen is skipped).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_selfevolve.ast_guard import parse as parse_python
from agent_selfevolve.envs.grading import is_test_file
from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.infra import git
from agent_selfevolve.sources import factory_run as fr
from agent_selfevolve.sources.build import locked
from agent_selfevolve.sources.check import validate_task
from agent_selfevolve.sources.factory_repo import (
    ID_PREFIX,
    PREFIX,
    FactoryError,
    ProjectSpec,
    commit_task,
    commit_upstream,
    diff,
    factory_dir,
    message,
    register_project,
    repo_dir,
    tag,
    unpack,
    write_tasks,
)
from agent_selfevolve.sources.mutations import Mutation, find_mutations, is_valid
from agent_selfevolve.tasks import Task

SKIP_DIRS = ("docs/", "doc/", "examples/", "benchmark/", "benchmarks/", "bench/", "scripts/", "tools/", ".github/",
             "build/")
SKIP_FILES = ("setup.py", "noxfile.py", "conftest.py", "fabfile.py", "tasks.py", "_version.py", "version.py")


@dataclass
class Options:
    seed: int = 0
    max_candidates: int = 200
    """Candidates tried (kept or not) before stopping: the CPU budget."""
    max_tasks: int = 100
    per_function: int = 2
    """At most this many tasks per function, so the tasks spread over the code."""
    p2p: int = 20
    max_f2p: int = 25
    """A mutant failing more test functions (parametrized cases counted once) than this breaks everything."""
    timeout_factor: float = 3.0
    validate: bool = True


def host_copy(import_name: str) -> str | None:
    """Where the host interpreter would import the project from outside its checkout (the agent could read the
    unmutated code there), or None."""
    if not import_name:
        return None
    probe = f"import importlib.util as u; s = u.find_spec({import_name!r}); print(s.origin if s else '')"
    proc = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd="/", timeout=60)
    return proc.stdout.strip() or None


class Factory:
    """One project's factory: its repo, scratch copy, baseline and state, under `<cache>/factory/<name>/`."""

    def __init__(self, spec: ProjectSpec, options: Options, cache_dir: Path | None = None, log: Any = print):
        self.spec, self.opt, self.cache_dir, self.log = spec, options, cache_dir, log
        self.dir = factory_dir(spec.name, cache_dir)
        self.repo = repo_dir(spec.name, cache_dir)
        self.work = self.dir / "work"
        self.state_path = self.dir / "state.jsonl"

    # -- set-up ---------------------------------------------------------------------------------------------

    def prepare(self) -> str:
        """Repo with `upstream`, the recipe, a scratch copy and the baseline; returns the upstream commit."""
        self.dir.mkdir(parents=True, exist_ok=True)
        recipe_path = self.dir / "recipe.json"
        recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None
        if recipe and recipe["spec"] != self.spec.to_dict():
            raise FactoryError(f"{self.spec.name}: {recipe_path} was made from another recipe; delete {self.dir} "
                               "(and its task file) to start over")
        if recipe and recipe["seed"] != self.opt.seed:
            raise FactoryError(f"{self.spec.name}: the state in {self.dir} is for seed {recipe['seed']}, not "
                               f"{self.opt.seed}; delete it to start over")
        if not (self.repo / ".git").is_dir():
            self.repo.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.repo.with_name(self.repo.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            unpack(self.spec, tmp, self.cache_dir)
            commit_upstream(self.spec, tmp)
            os.rename(tmp, self.repo)
        upstream = git("rev-parse", "upstream", cwd=self.repo, hermetic=True).strip()
        if recipe and recipe["upstream"] != upstream:
            raise FactoryError(f"{self.spec.name}: repo upstream {upstream} differs from the recipe's")
        write_json_atomic(recipe_path, {"spec": self.spec.to_dict(), "upstream": upstream, "seed": self.opt.seed})
        if not self.work.is_dir():
            tmp = self.work.with_name("work.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.repo, tmp, ignore=shutil.ignore_patterns(".git"))
            os.rename(tmp, self.work)
        self._restore_dirty()
        return upstream

    def _restore_dirty(self) -> None:
        """A run killed with a mutant in place left `dirty` naming the file: put the upstream version back."""
        marker = self.dir / "dirty"
        if marker.is_file():
            path = marker.read_text()
            (self.work / path).write_bytes(self._upstream_bytes(path))
            marker.unlink()

    def _upstream_bytes(self, path: str) -> bytes:
        return subprocess.run(["git", "show", f"upstream:{path}"], cwd=self.repo, capture_output=True,
                              check=True).stdout

    def baseline(self) -> dict[str, Any]:
        """The suite's statuses and per-test calls on the unmutated code (cached in baseline.json)."""
        path = self.dir / "baseline.json"
        if path.is_file():
            return json.loads(path.read_text())
        plugin = fr.copy_plugin(self.dir / "plugin")
        trace = self.dir / "trace.json"
        run = fr.run_pytest(self.work, self.spec.tests, [*self.spec.pytest_args, "-p", "calltrace"], timeout=1800,
                            env={"PYTHONPATH": str(plugin), "FACTORY_TRACE_OUT": str(trace),
                                 "FACTORY_TRACE_ROOT": str(self.work)})
        if run.timed_out or not trace.is_file():
            raise FactoryError(f"{self.spec.name}: the baseline test run failed:\n{run.output[-3000:]}")
        calls = json.loads(trace.read_text())
        # the tracer has pytest's exact ids; a summary line cuts an id at its first space, so such tests are left out
        passing = sorted(t for t, s in run.statuses.items() if s == "PASSED" and t in calls and fr.usable_test_id(t))
        if not passing:
            raise FactoryError(f"{self.spec.name}: no test passes on the unmutated code:\n{run.output[-3000:]}")
        missing = sorted({fr.test_file_of(t) for t in passing if not (self.work / fr.test_file_of(t)).is_file()})
        if missing:
            raise FactoryError(f"{self.spec.name}: test ids are not relative to the project root ({missing[:3]})")
        data = {"passing": passing, "failing": sorted(t for t, s in run.statuses.items() if s in fr.FAILED),
                "seconds": run.seconds, "collect": calls.pop("<collect>", []),
                "calls": {t: calls.get(t, []) for t in passing}}
        write_json_atomic(path, data)
        trace.unlink()
        return data

    # -- candidates -----------------------------------------------------------------------------------------

    def source_files(self) -> list[str]:
        files = git("ls-tree", "-r", "--name-only", "upstream", cwd=self.repo, hermetic=True).split("\n")
        return sorted(f for f in files if f.endswith(".py") and not is_test_file(f)
                      and not f.startswith(SKIP_DIRS) and f.rsplit("/", 1)[-1] not in SKIP_FILES
                      and not f.startswith(tuple(self.spec.exclude)))

    def candidates(self, base: dict[str, Any]) -> tuple[list[Mutation], dict[str, list[str]]]:
        """Mutations in functions some passing test calls, in the seed's order, and {function key: tests}."""
        tests_of: dict[str, list[str]] = defaultdict(list)
        for test, keys in base["calls"].items():
            for key in keys:
                tests_of[key].append(test)
        for key in base["collect"]:  # called at import: any test may depend on it
            tests_of[key] = list(base["passing"])
        by_function: dict[str, list[Mutation]] = defaultdict(list)
        for path in self.source_files():
            try:
                source = self._upstream_bytes(path).decode("utf-8")
            except UnicodeDecodeError:
                continue
            for m in find_mutations(path, source, validate=False):
                if f"{path}:{m.function_line}" in tests_of:
                    by_function[f"{path}:{m.function_line}"].append(m)
        # operators take turns (else the common ones, removed statements, crowd out the rest), and within an
        # operator the functions take turns, each function's sites in a seeded order
        rng = random.Random(f"factory:{self.spec.name}:{self.opt.seed}")
        functions = sorted(by_function)
        rng.shuffle(functions)
        by_op: dict[str, list[list[Mutation]]] = defaultdict(list)
        for key in functions:
            sites: dict[str, list[Mutation]] = defaultdict(list)
            for m in by_function[key]:
                sites[m.operator].append(m)
            for op in sorted(sites):
                rng.shuffle(sites[op])
                by_op[op].append(sites[op])
        ops = sorted(by_op)
        rng.shuffle(ops)
        return list(_interleave([list(_interleave(by_op[op])) for op in ops])), dict(tests_of)

    # -- the loop -------------------------------------------------------------------------------------------

    def load_state(self) -> list[dict[str, Any]]:
        records = []
        if self.state_path.is_file():
            for line in self.state_path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # the last line of a run killed mid-write
                    break
        return records

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.state_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def make(self) -> dict[str, Any]:
        """Try candidates until the budget is spent; write the task file; return the summary."""
        with locked(f"factory-make__{self.spec.name}", self.cache_dir):
            upstream = self.prepare()
            base = self.baseline()
            order, tests_of = self.candidates(base)
            records = self.load_state()
            # a run killed after a state line but before its task file was written has it back here
            write_tasks(self.spec.name, self._tasks(records), self.cache_dir)
            register_project(self.spec.name)
            done = {r["key"] for r in records}
            seen = {r["hash"] for r in records if r.get("hash")}
            per_function = Counter(r["function_key"] for r in records if r["outcome"] == "kept")
            kept = sum(r["outcome"] == "kept" for r in records)
            self.log(f"{self.spec.name}: {len(base['passing'])} passing tests, {len(order)} candidates, "
                     f"{len(records)} already tried, {kept} kept")
            for m in order:
                if len(records) >= self.opt.max_candidates or kept >= self.opt.max_tasks:
                    break
                fkey = f"{m.path}:{m.function_line}"
                if m.key in done or per_function[fkey] >= self.opt.per_function:
                    continue
                record = self._try(m, fkey, upstream, base, tests_of[fkey], seen)
                self._append(record)
                records.append(record)
                done.add(m.key)
                if record.get("hash"):
                    seen.add(record["hash"])
                if record["outcome"] == "kept":
                    kept += 1
                    per_function[fkey] += 1
                    write_tasks(self.spec.name, self._tasks(records), self.cache_dir)
                self.log(f"{self.spec.name} [{len(records)}/{self.opt.max_candidates}] {record['outcome']:9} "
                         f"{m.operator:11} {record.get('reason', record.get('difficulty', ''))}")
            return summary(self.spec, records, base, len(order))

    def _tasks(self, records: list[dict[str, Any]]) -> list[Task]:
        return [Task.model_validate(r["task"]) for r in records if r["outcome"] == "kept"]

    def _try(self, m: Mutation, fkey: str, upstream: str, base: dict[str, Any], tests: list[str],
             seen: set[str]) -> dict[str, Any]:
        start = time.monotonic()
        record: dict[str, Any] = {"key": m.key, "operator": m.operator, "function_key": fkey, "path": m.path,
                                  "function": m.function}
        original = self._upstream_bytes(m.path)
        text = original.decode("utf-8")
        mutant = m.apply(text)
        if not is_valid(mutant, _dump(text)):
            return {**record, "outcome": "rejected", "reason": "invalid"}
        record["hash"] = hashlib.sha256(f"{m.path}\0{mutant}".encode()).hexdigest()
        if record["hash"] in seen:
            return {**record, "outcome": "duplicate", "reason": "same mutant as an earlier candidate"}
        timeout = max(30.0, self.opt.timeout_factor * base["seconds"])
        (self.dir / "dirty").write_text(m.path)
        try:
            (self.work / m.path).write_bytes(mutant.encode("utf-8"))
            run = fr.run_pytest(self.work, tests, self.spec.pytest_args, timeout)
        finally:
            (self.work / m.path).write_bytes(original)
            (self.dir / "dirty").unlink(missing_ok=True)
        record["seconds"] = round(time.monotonic() - start, 2)
        if run.timed_out:
            return {**record, "outcome": "rejected", "reason": "timeout"}
        f2p = [t for t in tests if run.statuses.get(t) in fr.FAILED]
        if not f2p:
            return {**record, "outcome": "rejected", "reason": "no test fails"}
        if len({t.split("[", 1)[0] for t in f2p}) > self.opt.max_f2p:
            return {**record, "outcome": "rejected", "reason": "too many tests fail"}
        task = self._task(m, mutant.encode("utf-8"), upstream, f2p, tests, run, record["hash"], base)
        if self.opt.validate:
            check = validate_task(task, self.cache_dir, timeout=timeout)
            if not check.ok:
                return {**record, "outcome": "rejected", "reason": "validation: " + check.problems[0][:200]}
        record["seconds"] = round(time.monotonic() - start, 2)
        return {**record, "outcome": "kept", "difficulty": task.difficulty,  # type: ignore[attr-defined]
                "task": task.model_dump(exclude_defaults=True)}

    def _task(self, m: Mutation, mutant: bytes, upstream: str, f2p: list[str], tests: list[str],
              run: fr.TestRun, digest: str, base: dict[str, Any]) -> Task:
        hidden = sorted({fr.test_file_of(t) for t in f2p})
        rng = random.Random(f"p2p:{self.opt.seed}:{digest}")
        passed = [t for t in tests if run.statuses.get(t) == "PASSED"]
        p2p = rng.sample(passed, min(self.opt.p2p, len(passed)))
        if len(p2p) < self.opt.p2p:  # tests that never call the function pass with the mutant too; same files first
            ran = set(tests)
            rest = [t for t in base["passing"] if t not in ran]
            for pool in ([t for t in rest if fr.test_file_of(t) in hidden], [t for t in rest if fr.test_file_of(t)
                                                                              not in hidden]):
                p2p += rng.sample(pool, min(self.opt.p2p - len(p2p), len(pool)))
        p2p.sort()
        instance_id = f"{ID_PREFIX}{self.spec.name}-{digest[:10]}"
        commit = commit_task(self.repo, upstream, m.path, mutant, hidden, message(self.spec))
        tag(self.repo, instance_id, commit)
        patch = diff(self.repo, commit, upstream, [m.path])
        test_texts = [self._upstream_bytes(f).decode("utf-8", errors="replace") for f in self._test_files()]
        secret = fr.diff_only_names(fr.changed_lines(patch), test_texts)
        problem = fr.issue_text(self.spec.name, self.spec.version, f2p, run.output, secret)
        level, features = fr.difficulty(m.function, f2p, problem, len(fr.changed_lines(patch)))
        return Task(instance_id=instance_id, repo=f"{PREFIX}{self.spec.name}", base_commit=commit,
                    problem_statement=problem, patch=patch, test_patch=diff(self.repo, commit, upstream, hidden),
                    FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p, test_files=sorted({fr.test_file_of(t) for t in f2p + p2p}),
                    test_cmd=self.spec.test_cmd(), version=self.spec.version, difficulty=level,
                    factory={"operator": m.operator, "function": m.function, "path": m.path, "seed": self.opt.seed,
                             "key": m.key, **features})

    def _test_files(self) -> list[str]:
        files = git("ls-tree", "-r", "--name-only", "upstream", cwd=self.repo, hermetic=True).split("\n")
        return [f for f in files if f.endswith(".py") and is_test_file(f)]


def _dump(source: str) -> str:
    return ast.dump(parse_python(source))


def _interleave(queues: list[list[Mutation]]) -> Iterator[Mutation]:
    """Round-robin over the queues: the first of each, then the second of each, ..."""
    iters = [iter(q) for q in queues]
    while iters:
        alive = []
        for it in iters:
            item = next(it, None)
            if item is not None:
                yield item
                alive.append(it)
        iters = alive


def summary(spec: ProjectSpec, records: list[dict[str, Any]], base: dict[str, Any], n_candidates: int
            ) -> dict[str, Any]:
    kept = [r for r in records if r["outcome"] == "kept"]
    return {"project": spec.name, "version": spec.version, "sha256": spec.sha256 or None,
            "passing_tests": len(base["passing"]), "baseline_seconds": round(base["seconds"], 1),
            "candidates": n_candidates, "tried": len(records), "kept": len(kept),
            "outcomes": dict(Counter(r["outcome"] for r in records)),
            "rejected": dict(Counter(r["reason"].split(":")[0] for r in records if r["outcome"] == "rejected")),
            "by_difficulty": dict(Counter(r["difficulty"] for r in kept)),
            "kept_by_operator": dict(Counter(r["operator"] for r in kept)),
            "tried_by_operator": dict(Counter(r["operator"] for r in records)),
            "functions": len({r["function_key"] for r in kept}),
            "seconds": round(sum(r.get("seconds", 0) for r in records), 1)}


def make_project(spec: ProjectSpec, options: Options, cache_dir: Path | None = None, allow_host_copy: bool = False,
                 log: Any = print) -> dict[str, Any]:
    where = host_copy(spec.import_name)
    if where and not allow_host_copy:
        raise FactoryError(f"{spec.name}: the host interpreter imports {spec.import_name} from {where}; an agent "
                           "could read the unmutated code there (pass --allow-host-copy to make tasks anyway)")
    return Factory(spec, options, cache_dir, log).make()
