"""AST-located, text-level mutations for the task factory: each one a small change inside one function.

The AST finds where a bug can go; the change itself is a splice of the source text at that node's span, so the rest
of the file (comments, formatting) stays byte-identical and the gold patch (the reverse diff) is as small as a
human's fix. Every mutant is re-parsed: a candidate that does not compile, or whose AST does not change, is dropped.

Operators (SWE-smith's procedural ones): `binop` (+ <-> -, * <-> //, ...), `compare` (< <-> <=, == <-> !=, ...),
`off_by_one` (slice bounds, range() arguments, integer indices and compared integer bounds, +-1), `negate` (an
if/while/ternary/assert condition inverted), `drop_cond` (one operand of an and/or condition dropped),
`default` (a constant default argument changed), `swap_args` (two positional call arguments swapped) and
`remove_stmt` (a statement deleted, or replaced by `pass` when it is its block's only one).
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from agent_selfevolve.ast_guard import parse as parse_python

OPERATORS = ("binop", "compare", "off_by_one", "negate", "drop_cond", "default", "swap_args", "remove_stmt")

_BINOP: dict[type[ast.operator], tuple[str, str]] = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "//"), ast.FloorDiv: ("//", "*"),
    ast.Div: ("/", "*"), ast.Mod: ("%", "//"), ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<"),
    ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&")}
_COMPARE: dict[type[ast.cmpop], tuple[str, str]] = {
    ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"), ast.Eq: ("==", "!="),
    ast.NotEq: ("!=", "=="), ast.Is: ("is", "is not"), ast.IsNot: (r"is\s+not", "is"), ast.In: ("in", "not in"),
    ast.NotIn: (r"not\s+in", "in")}
_REMOVABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.If, ast.For, ast.While, ast.Continue,
              ast.Break, ast.Return, ast.Raise, ast.Delete, ast.With)
_ATOMIC = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant)


@dataclass(frozen=True)
class Mutation:
    """One candidate bug: replace `source[start:end]` (character offsets) of file `path` by `new`."""

    path: str
    function: str
    """Qualified name of the function the change is in, e.g. `Foo.bar`."""
    function_line: int
    """First line of the function's code object (its first decorator, else `def`): how traces name it."""
    operator: str
    start: int
    end: int
    new: str

    @property
    def key(self) -> str:
        """Stable name of the candidate: the same source always gives the same keys."""
        return f"{self.path}:{self.start}:{self.end}:{self.operator}:{hashlib.sha1(self.new.encode()).hexdigest()[:8]}"

    def apply(self, source: str) -> str:
        return source[:self.start] + self.new + source[self.end:]


class _Text:
    """Maps the AST's (line, UTF-8 byte column) positions to character offsets in the source."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.split("\n")  # as the tokenizer counts lines (splitlines would also cut at \f, \x1c, ...)
        self.lines = [line + "\n" for line in self.lines[:-1]] + ([self.lines[-1]] if self.lines[-1] else [])
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def seg(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.source[start:end]


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        elif not isinstance(node, ast.Lambda):
            yield from _functions(node, prefix)


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of `func`'s body, not those of functions or classes nested in it (they are mutated as their own)."""
    stack: list[ast.AST] = list(reversed(func.body))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def _int(node: ast.AST) -> int | None:
    """The value of an integer literal (`3`, `-1`), else None (bools are not integers here)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) is int:
        return -node.operand.value
    return None


def _between_op(text: _Text, left: ast.AST, right: ast.AST, pattern: str) -> tuple[int, int] | None:
    """Offsets of the operator token between two operands, if only brackets and spaces surround it."""
    lo, hi = text.span(left)[1], text.span(right)[0]
    match = re.fullmatch(rf"[\s()\\]*({pattern})[\s()\\]*", text.source[lo:hi])
    return (lo + match.start(1), lo + match.end(1)) if match else None


def _bump(text: _Text, node: ast.AST) -> Iterator[str]:
    """`node` one more and one less: literals change value, other expressions get `+ 1` / `- 1`."""
    value = _int(node)
    if value is not None:
        yield from (str(value + 1), str(value - 1))
    else:
        src = text.seg(node)
        if "\n" in src:
            return
        src = src if isinstance(node, _ATOMIC) else f"({src})"
        yield from (f"{src} + 1", f"{src} - 1")


def _candidates(text: _Text, func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, int, int, str]]:
    """(operator, start, end, replacement) for every mutation site in `func`."""
    args = func.args
    for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
        if isinstance(default, ast.Constant) and isinstance(default.value, bool):
            yield ("default", *text.span(default), str(not default.value))
        elif _int(default) is not None:
            for new in _bump(text, default):
                yield ("default", *text.span(default), new)
    for node in _own_nodes(func):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOP and not (_is_str(node.left) or _is_str(node.right)):
            old, new = _BINOP[type(node.op)]
            at = _between_op(text, node.left, node.right, re.escape(old))
            if at:
                yield ("binop", *at, new)
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BINOP and not _is_str(node.value):
            old, new = _BINOP[type(node.op)]
            at = _between_op(text, node.target, node.value, re.escape(old) + "=")
            if at:
                yield ("binop", *at, new + "=")
        elif isinstance(node, ast.Compare):
            left = node.left
            for cmp, right in zip(node.ops, node.comparators, strict=True):
                old, new = _COMPARE[type(cmp)]
                at = _between_op(text, left, right, old if old.startswith(("is", "not")) else re.escape(old))
                if at:
                    yield ("compare", *at, new)
                if _int(right) is not None and isinstance(cmp, (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)):
                    for bumped in _bump(text, right):
                        yield ("off_by_one", *text.span(right), bumped)
                left = right
        elif isinstance(node, ast.Slice):
            for bound in (node.lower, node.upper):
                if bound is not None:
                    for bumped in _bump(text, bound):
                        yield ("off_by_one", *text.span(bound), bumped)
        elif isinstance(node, ast.Subscript) and _int(node.slice) is not None:
            for bumped in _bump(text, node.slice):
                yield ("off_by_one", *text.span(node.slice), bumped)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            for arg in node.args[:2]:
                for bumped in _bump(text, arg):
                    yield ("off_by_one", *text.span(arg), bumped)
        if isinstance(node, ast.Call):
            positional = node.args
            if not any(isinstance(a, ast.Starred) for a in positional):
                for a, b in zip(positional, positional[1:], strict=False):
                    sa, sb = text.seg(a), text.seg(b)
                    if sa != sb and "\n" not in sa + sb:
                        start, end = text.span(a)[0], text.span(b)[1]
                        middle = text.source[text.span(a)[1]:text.span(b)[0]]
                        yield ("swap_args", start, end, sb + middle + sa)
        if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            test = node.test
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                inner = text.seg(test.operand)
                yield ("negate", *text.span(test), inner if isinstance(test.operand, _ATOMIC) else f"({inner})")
            else:
                yield ("negate", *text.span(test), f"not ({text.seg(test)})")
            if isinstance(test, ast.BoolOp):
                joiner = " and " if isinstance(test.op, ast.And) else " or "
                for i in range(len(test.values)):
                    rest = [v for j, v in enumerate(test.values) if j != i]
                    parts = [text.seg(v) if not isinstance(v, (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr))
                             else f"({text.seg(v)})" for v in rest]
                    yield ("drop_cond", *text.span(test), joiner.join(parts))
        for field in ("body", "orelse", "finalbody"):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield from _removals(text, block)
    yield from _removals(text, func.body)


def _removals(text: _Text, block: list[ast.stmt]) -> Iterator[tuple[str, int, int, str]]:
    for stmt in block:
        if not isinstance(stmt, _REMOVABLE):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):  # docstrings, `...`
            continue
        start, end = text.span(stmt)
        line_start = text.starts[stmt.lineno - 1]
        line_end = text.starts[stmt.end_lineno] if stmt.end_lineno < len(text.starts) else len(text.source)  # type: ignore[operator]
        whole_lines = not text.source[line_start:start].strip() and not text.source[end:line_end].split("#")[0].strip()
        if len(block) == 1 or not whole_lines:
            yield ("remove_stmt", start, end, "pass")
        else:
            yield ("remove_stmt", line_start, line_end, "")


def find_mutations(path: str, source: str, operators: tuple[str, ...] = OPERATORS, validate: bool = True
                   ) -> list[Mutation]:
    """Every mutation of `source` (file `path` in the repo), in source order; none for unparsable files.

    `validate=False` skips re-parsing each mutant (the factory checks the few it tries with `is_valid`)."""
    try:
        tree = parse_python(source)
    except (SyntaxError, ValueError):
        return []
    text, original = _Text(source), ast.dump(tree)
    out: list[Mutation] = []
    seen: set[tuple[int, int, str]] = set()
    for qualname, func in _functions(tree):
        first = min([func.lineno, *(d.lineno for d in func.decorator_list)])
        for operator, start, end, new in _candidates(text, func):
            if operator not in operators or (start, end, new) in seen or source[start:end] == new:
                continue
            seen.add((start, end, new))
            mutation = Mutation(path, qualname, first, operator, start, end, new)
            if not validate or is_valid(mutation.apply(source), original):
                out.append(mutation)
    return sorted(out, key=lambda m: (m.start, m.end, m.operator, m.new))


def is_valid(mutant: str, original_dump: str) -> bool:
    """The mutant compiles and means something else than the original."""
    try:
        tree = parse_python(mutant)
    except (SyntaxError, ValueError):
        return False
    return ast.dump(tree) != original_dump
