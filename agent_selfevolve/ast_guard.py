"""One lock for everything that builds Python AST objects, so threads can do it safely.

CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state: two threads building AST objects
at once can fail with `SystemError: AST constructor recursion depth mismatch` (python/cpython#106905; seen here when
best-of-N's parallel attempts built their agent graphs together). Attempts run in threads (LangGraph fan-out, batch
workers) and do both kinds of AST work: our checks parse code, and LangGraph parses the text signature of builtin
reducers such as `operator.add` while it builds a graph. Both go through `AST_LOCK`; it is re-entrant, and each
hold is short (a parse, or ~5 ms for a graph).
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from typing import Any

AST_LOCK = threading.RLock()


def parse(source: str, mode: str = "exec") -> Any:
    """`ast.parse` under the lock (`Any`: the node type depends on `mode`)."""
    with AST_LOCK:
        return ast.parse(source, mode=mode)


def compile_graph(build: Callable[[], Any], checkpointer: Any = None) -> Any:
    """Build a LangGraph `StateGraph` and compile it under the lock."""
    with AST_LOCK:
        return build().compile(checkpointer=checkpointer)
