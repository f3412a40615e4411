"""The definitions an issue names, found in the repository: a first observation for repositories too big to show.

A small model cannot explore a real project (it answered a failing `humanize.apnumber` test by rewriting the test,
having never seen `apnumber`). What it does well is fix a function it is shown. So, as Agentless localizes from the
issue before repairing, the environment reads the names the issue text calls or mentions, finds the functions,
methods and classes of that name in the repository's non-test Python files, and shows their source. Only the issue
and the checkout are read: nothing here knows the fix.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
from collections import Counter
from dataclasses import dataclass

from agent_selfevolve.ast_guard import parse as parse_python

_CALLED = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(|\.([A-Za-z_]\w*)|`([A-Za-z_]\w*)`")
_TEST_ID = re.compile(r"::(?:Test(\w+?)|(\w+?)Tests?)(?=::)|::test_(\w+)")
"""A failing test's id names what it tests: `TestFoo::`/`FooTest::` -> `Foo`, `::test_foo` -> `foo`."""
_COMMON = frozenset(dir(builtins)) | frozenset(keyword.kwlist) | {
    "self", "cls", "test", "tests", "assert", "py", "pytest", "raises", "main", "run", "setup", "get", "set",
    "items", "keys", "values", "append", "format", "join", "split", "strip", "__init__", "__call__", "__repr__",
    "__str__", "__eq__", "__hash__"}
MAX_OWNERS = 3
"""A name defined in more places than this says nothing about where to look (`update`, `copy`, ...)."""
TEST_ID_WEIGHT = 2
"""How many call mentions a failing test's id is worth (see `issue_names`)."""
MAX_NAMES = 1
"""Shown two functions, the 0.5B answered with both, one block each, which is no action; showing only the most
mentioned name's code finds the edited definition for 117 of the 172 easy factory tasks instead of 128
(bench/localization_recall.py)."""


def quoted_in(text: str, issue: str, share: float = 0.8) -> bool:
    """Whether the issue already quotes most of a file's lines: showing the file again only repeats it (a 0.5B's first
    answer drifted from its direct one when a HumanEval stub followed the same function in the issue:
    bench/first_turn_ablation.py)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    quoted = {ln.strip() for ln in issue.splitlines() if ln.strip()}
    return bool(lines) and sum(ln in quoted for ln in lines) >= share * len(lines)


@dataclass(frozen=True)
class Definition:
    path: str
    qualname: str
    """`func`, `Class` or `Class.method`."""
    start: int
    """1-based first line, decorators included."""
    end: int
    source: str
    """Dedented: a method reads as a function, the form the `python` tool merges back into its class."""


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def issue_names(issue: str) -> list[str]:
    """Identifiers the issue calls, reaches through an attribute, or quotes, and those its failing tests' ids
    name (counted `TEST_ID_WEIGHT` times: a test is named after what it tests, while the calls in its code include
    helpers; `IterateTests` also names `iterate`), most mentioned first."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    mentions = [(next(g for g in m.groups() if g), 1) for m in _CALLED.finditer(issue)]
    for m in _TEST_ID.finditer(issue):
        stem = next(g for g in m.groups() if g)
        mentions += [(name, TEST_ID_WEIGHT) for name in dict.fromkeys([stem, _snake(stem)])]
    for i, (name, weight) in enumerate(mentions):
        if name in _COMMON or name.startswith("test") or len(name) < 3:
            continue
        counts[name] += weight
        first.setdefault(name, i)
    return sorted(counts, key=lambda n: (-counts[n], first[n]))


def definitions(path: str, text: str) -> list[Definition]:
    """Top-level functions and classes of one module, and the methods of its top-level classes."""
    try:
        tree = parse_python(text)
    except SyntaxError:
        return []
    lines = text.splitlines()
    found: list[Definition] = []

    def add(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, qualname: str) -> None:
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        end = node.end_lineno or node.lineno
        chunk = lines[start - 1:end]
        indent = min((len(s) - len(s.lstrip()) for s in chunk if s.strip()), default=0)
        found.append(Definition(path, qualname, start, end, "\n".join(s[indent:] for s in chunk)))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            add(node, node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    add(item, f"{node.name}.{item.name}")
    return found


def named_definitions(issue: str, files: dict[str, str], max_chars: int,
                      max_names: int = MAX_NAMES) -> list[Definition]:
    """The definitions of the issue's `max_names` most mentioned names found in `files` ({path: text}), within
    `max_chars` of source and not quoted by the issue; a class too long to show whole is left for its named
    methods."""
    by_name: dict[str, list[Definition]] = {}
    for path, text in files.items():
        for d in definitions(path, text):
            by_name.setdefault(d.qualname.rsplit(".", 1)[-1], []).append(d)
    shown: list[Definition] = []
    size = 0
    names = 0
    for name in issue_names(issue):
        owners = by_name.get(name, [])
        if len(owners) > MAX_OWNERS or names >= max_names:
            continue
        before = len(shown)
        for d in owners:
            if any(s.path == d.path and s.start <= d.start and d.end <= s.end for s in shown):
                continue  # already inside a class shown whole
            if size + len(d.source) > max_chars or quoted_in(d.source, issue):
                continue  # too long, or the issue shows it already
            shown.append(d)
            size += len(d.source)
        names += len(shown) > before  # a name counts once some of its code is shown
    return shown


def render(shown: list[Definition]) -> str:
    """The first observation's part that shows them, each under its file and lines."""
    if not shown:
        return ""
    return "\n\nCode the issue names (found by searching the repository):" + "".join(
        "\n\n" + show(d) for d in shown)


def show(d: Definition) -> str:
    """One definition under its file, class and lines, in a python block."""
    owner, _, method = d.qualname.rpartition(".")
    where = f"{d.path}, method of class {owner}" if method and owner else d.path
    return f"{where}, lines {d.start}-{d.end}:\n```python\n{d.source.rstrip()}\n```"
