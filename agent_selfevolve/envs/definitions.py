"""Python code given as definitions, merged into the repository file that holds them.

Asked for code, a small model answers with a ```python block holding the function it was shown, completed: the
answer it gives directly, outside any agent. The `python` tool takes that block as it is: each top-level function
or class in it replaces the same-named one in the one file that defines it; new definitions are added to that
file, new imports go to its top. So the agent loses nothing of the direct answer for want of a file path.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass

from agent_selfevolve.ast_guard import parse as parse_python


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


def _members(cls: ast.ClassDef) -> dict[str, ast.stmt]:
    """A class's own functions and nested classes, by name."""
    return _defs(ast.Module(body=cls.body, type_ignores=[]))


def _span(node: ast.stmt) -> tuple[int, int]:
    """0-based [start, end) lines of a definition, decorators included."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return first - 1, node.end_lineno or node.lineno


def merge_definitions(code: str, files: dict[str, str]) -> Merge:
    """Merge `code` into the file of `files` ({path: text}) defining most of its top-level names."""
    code = textwrap.dedent(code)  # a method copied with its class's indentation
    try:
        given = parse_python(code)
    except SyntaxError as exc:
        raise DefinitionError(f"the code does not parse: {exc.msg} (line {exc.lineno})") from None
    new_defs = _defs(given)
    if not new_defs:
        raise DefinitionError("the block defines no function or class: give the complete definitions to write")
    parsed: dict[str, ast.Module] = {}
    for path, text in files.items():
        try:
            parsed[path] = parse_python(text)
        except SyntaxError:
            continue
    hits = {p: sum(name in _defs(t) for name in new_defs) for p, t in parsed.items()}
    best = max(hits.values(), default=0)
    owners = [p for p, n in hits.items() if n == best and n > 0]
    if not owners and all(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in new_defs.values()):
        return _merge_methods(given, new_defs, files, parsed, code.splitlines())
    if not owners:
        raise DefinitionError(f"no file defines {', '.join(new_defs)}: to create a file, use write_file with its path")
    if len(owners) > 1:
        raise DefinitionError(f"{', '.join(sorted(owners))} all define {', '.join(new_defs)}: use write_file with a "
                              "path")
    path = owners[0]
    lines, code_lines = files[path].splitlines(), code.splitlines()
    old_defs = _defs(parsed[path])
    replaced = [name for name in new_defs if name in old_defs]
    _apply(lines, [e for name in replaced for e in _edits(old_defs[name], new_defs[name], lines, code_lines)])
    added = [name for name in new_defs if name not in old_defs]
    for name in added:
        start, end = _span(new_defs[name])
        lines += ["", "", *code_lines[start:end]]
    return Merge(path, _with_imports("\n".join(lines), _new_imports(given, parsed[path])), replaced, added)


def _merge_methods(given: ast.Module, new_defs: dict[str, ast.stmt], files: dict[str, str],
                   parsed: dict[str, ast.Module], code_lines: list[str]) -> Merge:
    """Functions no module defines at top level replace the same-named methods of the one class that has them all
    (the observation shows a method dedented, and the model answers with it so)."""
    classes = [(p, c) for p, t in parsed.items() for c in t.body if isinstance(c, ast.ClassDef)
               and all(name in _members(c) for name in new_defs)]
    names = ", ".join(new_defs)
    if not classes:
        raise DefinitionError(f"no file defines {names}: to create a file, use write_file with its path")
    if len(classes) > 1:
        where = ", ".join(f"{p} ({c.name})" for p, c in classes)
        raise DefinitionError(f"the classes {where} all define {names}: reply with the whole class, or use "
                              "write_file with a path")
    path, cls = classes[0]
    methods = _members(cls)
    lines = files[path].splitlines()
    _apply(lines, [e for name in new_defs for e in _edits(methods[name], new_defs[name], lines, code_lines)])
    return Merge(path, _with_imports("\n".join(lines), _new_imports(given, parsed[path])),
                 [f"{cls.name}.{n}" for n in new_defs], [])


def _edits(old: ast.stmt, new: ast.stmt, lines: list[str], code_lines: list[str]) -> list[tuple[int, int, list[str]]]:
    """(start, end, new lines) replacing `old` by `new`, at `old`'s indentation. A class given with only some of its
    methods (the one being fixed) replaces those methods, not the class: the rest must not be lost."""
    if isinstance(old, ast.ClassDef) and isinstance(new, ast.ClassDef):
        old_methods, new_methods = _members(old), _members(new)
        others = [n for n in new.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                  and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if new_methods and not others and set(new_methods) < set(old_methods):
            return [e for name in new_methods for e in _edits(old_methods[name], new_methods[name], lines, code_lines)]
    start, end = _span(old)
    new_start, new_end = _span(new)
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    chunk = code_lines[new_start:new_end]
    dedent = min((len(s) - len(s.lstrip()) for s in chunk if s.strip()), default=0)
    return [(start, end, [indent + s[dedent:] if s.strip() else "" for s in chunk])]


def _apply(lines: list[str], edits: list[tuple[int, int, list[str]]]) -> None:
    for start, end, new in sorted(edits, reverse=True):  # bottom up: the spans above stay valid
        lines[start:end] = new


def _new_imports(given: ast.Module, module: ast.Module) -> list[str]:
    """The given code's top-level imports that the module lacks."""
    have = {ast.unparse(n) for n in module.body if isinstance(n, ast.Import | ast.ImportFrom)}
    return [ast.unparse(n) for n in given.body if isinstance(n, ast.Import | ast.ImportFrom)
            and ast.unparse(n) not in have]


def _with_imports(text: str, imports: list[str]) -> str:
    """`imports` after the module's last top-level import (after its docstring when it has none)."""
    lines = text.splitlines()
    if imports:
        try:
            body = parse_python(text).body
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
        return code_only(old) == code_only(new)
    except SyntaxError:
        return False


def code_only(source: str) -> str:
    """The module's AST without docstrings, as text: equal for two sources that differ only in docstrings,
    comments and layout. Raises SyntaxError."""
    tree = parse_python(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body and \
                isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
