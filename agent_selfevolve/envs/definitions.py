"""Python code given as definitions, merged into the repository file that holds them.

Asked for code, a small model answers with a ```python block holding the function it was shown, completed: the
answer it gives directly, outside any agent. The `python` tool takes that block as it is: each top-level function
or class in it replaces the same-named one in the one file that defines it; new definitions are added to that
file, new imports go to its top. So the agent loses nothing of the direct answer for want of a file path.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass


class DefinitionError(ValueError):
    """The code cannot be placed: it does not parse, defines nothing, or no single file holds its names."""


@dataclass(frozen=True)
class Merge:
    path: str
    text: str
    replaced: list[str]
    added: list[str]


def _defs(tree: ast.Module) -> dict[str, ast.stmt]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def _span(node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) lines of a definition, decorators included."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return first - 1, node.end_lineno or node.lineno


def merge_definitions(code: str, files: dict[str, str]) -> Merge:
    """Merge `code` into the file of `files` ({path: text}) defining most of its top-level names."""
    try:
        given = ast.parse(code)
    except SyntaxError as exc:
        raise DefinitionError(f"the code does not parse: {exc.msg} (line {exc.lineno})") from None
    new_defs = _defs(given)
    if not new_defs:
        raise DefinitionError("the block defines no function or class: give the complete definitions to write")
    parsed: dict[str, ast.Module] = {}
    for path, text in files.items():
        try:
            parsed[path] = ast.parse(text)
        except SyntaxError:
            continue
    hits = {p: sum(name in _defs(t) for name in new_defs) for p, t in parsed.items()}
    best = max(hits.values(), default=0)
    owners = [p for p, n in hits.items() if n == best and n > 0]
    if not owners:
        raise DefinitionError(f"no file defines {', '.join(new_defs)}: to create a file, use write_file with its path")
    if len(owners) > 1:
        raise DefinitionError(f"{', '.join(sorted(owners))} all define {', '.join(new_defs)}: use write_file with a "
                              "path")
    path = owners[0]
    lines, code_lines = files[path].splitlines(), code.splitlines()
    old_defs = _defs(parsed[path])
    replaced = [name for name in new_defs if name in old_defs]
    for name in sorted(replaced, key=lambda n: _span(old_defs[n])[0], reverse=True):  # bottom up: spans stay valid
        start, end = _span(old_defs[name])
        new_start, new_end = _span(new_defs[name])
        lines[start:end] = code_lines[new_start:new_end]
    added = [name for name in new_defs if name not in old_defs]
    for name in added:
        start, end = _span(new_defs[name])
        lines += ["", "", *code_lines[start:end]]
    have = {ast.unparse(n) for n in parsed[path].body if isinstance(n, ast.Import | ast.ImportFrom)}
    imports = [ast.unparse(n) for n in given.body if isinstance(n, ast.Import | ast.ImportFrom)
               and ast.unparse(n) not in have]
    return Merge(path, _with_imports("\n".join(lines), imports), replaced, added)


def _with_imports(text: str, imports: list[str]) -> str:
    """`imports` after the module's last top-level import (after its docstring when it has none)."""
    lines = text.splitlines()
    if imports:
        try:
            body = ast.parse(text).body
        except SyntaxError:
            body = []
        anchors = [n for n in body if isinstance(n, ast.Import | ast.ImportFrom)] or \
            [n for n in body[:1] if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
        at = max((n.end_lineno or 0 for n in anchors), default=0)
        lines[at:at] = imports
    return "\n".join(lines).rstrip("\n") + "\n"


def same_behaviour(old: str, new: str) -> bool:
    """Whether two versions of a module differ only in docstrings, comments and layout (a small model, shown a
    failing example, sometimes "fixes" the docstring's example instead of the code)."""
    try:
        return _code_only(ast.parse(old)) == _code_only(ast.parse(new))
    except SyntaxError:
        return False


def _code_only(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
