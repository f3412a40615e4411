"""Usage examples written in docstrings as plain lines become checks.

Doctest examples (`>>> f(2)` then `4`) run as doctests. Many docstrings (about a third of HumanEval's, and much
library code) write them as one line instead: `f(2) == 4`, `f(2) ➞ 4`, `f(2) ==> 4`, `f(2) = 4`, `for f(2) == 4`,
`f(2) returns 4`, `f(2) should return 4`, `f(2)  # => 4`, `* f(2) -> 4`, `assert f(2) == 4`, or `>>> f(2) == 4`
with no output line (a doctest that fails on right code). A function's own docstring may also name its arguments
instead of calling it (LeetCode style): `For n = 3 the output should be 4`, or an `Input: n = 3` line followed by
`Output: 4`. Each example whose call names a function of the module, and whose two sides parse as Python
expressions, is one check: the call's value must equal the expected value. They are read from the edited source
only, never from hidden tests.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent_selfevolve.ast_guard import parse as parse_python
from agent_selfevolve.envs.grading import is_test_file

MAX_EXAMPLES = 50
EXAMPLE_TIMEOUT_S = 5
_EXAMPLE = re.compile(r"^\s*(?:(?:for|e\.g\.|example:?|assert)\s+|[*-]\s+)?(?P<call>[A-Za-z_][\w.]*\(.*\))\s*"
                      r"(?:#\s*)?(?:==>|==|=>|=|➞|->|→|should return|returns?)\s*(?P<expected>.+?)[\s.,;]*$", re.I)
_NAMED_ARGS = re.compile(r"^\s*(?:[*-]\s+)?for\s+(?P<args>\w+\s*=.+?),?\s+the output should be\s+(?P<expected>.+?)"
                         r"[\s.,;]*$", re.I)
_INPUT = re.compile(r"^\s*input\s*:\s*(?P<args>\S.*?)\s*$", re.I)
_OUTPUT = re.compile(r"^\s*output\s*:\s*(?P<expected>\S.*?)[\s.,;]*$", re.I)


@dataclass(frozen=True)
class Example:
    file: str
    module: str
    """The import name of `file` (run from the repository root)."""
    call: str
    expected: str

    @property
    def check_id(self) -> str:
        name = self.call.split("(", 1)[0]
        digest = hashlib.sha1(f"{self.call}\0{self.expected}".encode()).hexdigest()[:8]
        return f"{self.file}::{name}::{digest}"


def _import_name(path: str) -> str | None:
    parts = path[:-3].split("/") if path.endswith(".py") else []
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


def _parses(expr: str) -> bool:
    try:
        parse_python(expr, mode="eval")
    except SyntaxError:
        return False
    return True


def examples_in(source: str, file: str) -> list[Example]:
    """The one-line examples in the docstrings of `source`'s top-level functions (and the module's own)."""
    module = _import_name(file)
    try:
        tree = parse_python(source)
    except SyntaxError:
        return []
    if module is None:
        return []
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    names = {n.name for n in functions}
    known = _module_names(tree) | set(dir(builtins))
    docs: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef | None]] = [(ast.get_docstring(tree) or "", None)]
    docs += [(ast.get_docstring(n) or "", n) for n in functions]
    found: dict[tuple[str, str], Example] = {}
    for doc, owner in docs:
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith(">>>"):  # a doctest line counts only when it shows no output to compare
                line = line.lstrip()[3:] if _unanswered(lines, i) else ""
            pair = _example_line(line) or (_named_example(lines, i, owner) if owner is not None else None)
            if pair is None:
                continue
            call, expected = pair[0], _without_comment(pair[1])
            if call.split("(", 1)[0] in names and _self_contained(call, known) and _self_contained(expected, known):
                found.setdefault((call, expected), Example(file, module, call, expected))
    return list(found.values())


def _module_names(tree: ast.Module) -> set[str]:
    """Names a module defines at top level: what an example may refer to besides builtins."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def _self_contained(expr: str, known: set[str]) -> bool:
    """`expr` parses and names only what the module or builtins define (`fib(n) = fib(n-1) + ...` is a definition,
    `f(1) == true` a typo of the docstring's: neither is an example one can run)."""
    try:
        tree = parse_python(expr, mode="eval")
    except SyntaxError:
        return False
    return all(n.id in known for n in ast.walk(tree) if isinstance(n, ast.Name))


def _without_comment(expected: str) -> str:
    """`[1, 5] # because ...` -> `[1, 5]` (a comment is no part of the value)."""
    head = re.sub(r"\s+#.*$", "", expected)
    return head if head != expected and _parses(head) else expected


def _example_line(line: str) -> tuple[str, str] | None:
    m = _EXAMPLE.match(line)
    return (m.group("call"), m.group("expected")) if m else None


def _named_example(lines: list[str], i: int, owner: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, str] | None:
    """`For x = 1 the output should be 2`, or `Input: x = 1` with `Output: 2` on the next non-blank line, as a call
    of the docstring's own function."""
    m = _NAMED_ARGS.match(lines[i])
    if m:
        args, expected = m.group("args"), m.group("expected")
    else:
        m_in = _INPUT.match(lines[i])
        after = next((ln for ln in lines[i + 1:] if ln.strip()), "")
        m_out = _OUTPUT.match(after) if m_in else None
        if not (m_in and m_out):
            return None
        args, expected = m_in.group("args"), m_out.group("expected")
    call = _call_of(owner, args)
    return (call, expected) if call else None


def _call_of(owner: ast.FunctionDef | ast.AsyncFunctionDef, args: str) -> str | None:
    """`owner(args)`; keywords the signature does not know become positional when they match its arity."""
    try:
        parsed = parse_python(f"_({args})", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(parsed, ast.Call):
        return None
    params = [a.arg for a in owner.args.posonlyargs + owner.args.args]
    if parsed.keywords and not all(k.arg in params for k in parsed.keywords):
        if parsed.args or len(parsed.keywords) != len(params):
            return None
        parsed = ast.Call(parsed.func, [k.value for k in parsed.keywords], [])
    parsed.func = ast.Name(owner.name, ast.Load())
    return ast.unparse(parsed)


def _unanswered(lines: list[str], i: int) -> bool:
    """Doctest line `i` has no expected output under it (so as a doctest it fails even on right code)."""
    after = lines[i + 1].strip() if i + 1 < len(lines) else ""
    return not after or after.startswith(">>>")


def unanswered_doctest_comparisons(source: str) -> bool:
    """Whether `source` writes examples as `>>> f(x) == y` with no output line (HumanEval does): pytest's doctest
    runner would fail them on right code, so they run as examples instead."""
    lines = source.splitlines()
    return any(ln.lstrip().startswith(">>>") and _unanswered(lines, i) and _EXAMPLE.match(ln.lstrip()[3:])
               for i, ln in enumerate(lines))


def find_examples(root: Path, edited: list[str], limit: int = MAX_EXAMPLES) -> list[Example]:
    """Examples of the edited (non-test) Python files of the git checkout `root`, read from their base version (the
    specification as given: an edit that drops a docstring must not drop its checks), else from the file as it is."""
    out: list[Example] = []
    for f in edited:
        if not f.endswith(".py") or is_test_file(f):
            continue
        base = subprocess.run(["git", "show", f"HEAD:{f}"], cwd=root, capture_output=True, timeout=60)
        if base.returncode == 0:
            out += examples_in(base.stdout.decode("utf-8", errors="replace"), f)
        elif (root / f).is_file():
            out += examples_in((root / f).read_text(encoding="utf-8", errors="replace"), f)
    return out[:limit]


_SCRIPT = """
import importlib, json, signal, sys
sys.path.insert(0, '')
def _alarm(*_):
    raise TimeoutError('example ran over {timeout} s')
signal.signal(signal.SIGALRM, _alarm)
for check_id, module, call, expected in json.loads({cases!r}):
    signal.alarm({timeout})
    try:
        ns = dict(vars(importlib.import_module(module)))
        got, want = eval(call, ns), eval(expected, ns)
        ok, shown = got == want, repr(got)
    except BaseException as exc:
        ok, shown = False, 'raised ' + type(exc).__name__ + ': ' + str(exc)[:200]
    signal.alarm(0)
    print(('PASSED ' if ok else 'FAILED ') + check_id)
    if not ok:
        print('    ' + call + ' gave ' + shown[:300] + ', expected ' + expected[:300])
"""


def check_script(examples: list[Example], timeout_s: int = EXAMPLE_TIMEOUT_S) -> str:
    """A `python -c` program printing `PASSED <id>` / `FAILED <id>` (pytest -rA style) per example, and for a
    failure what the call gave; each example is cut off after `timeout_s`."""
    cases = json.dumps([[e.check_id, e.module, e.call, e.expected] for e in examples])
    return _SCRIPT.format(cases=cases, timeout=int(timeout_s))
