"""Every graph the library ships, by name: for `selfevolve viz graph`, `graphs/` and LangGraph Studio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import StateGraph


def builders() -> dict[str, Callable[[], StateGraph]]:
    from agent_selfevolve.agent import build_agent_graph
    from agent_selfevolve.search.best_of_n import build_best_of_n_graph

    found: dict[str, Callable[[], StateGraph]] = {"agent": build_agent_graph, "best_of_n": build_best_of_n_graph}
    try:
        from agent_selfevolve.search.se_agent import build_se_agent_graph

        found["se_agent"] = build_se_agent_graph
    except ImportError:
        pass
    try:
        from agent_selfevolve.search.hgm import build_hgm_graph

        found["hgm"] = build_hgm_graph
    except ImportError:
        pass
    return found


def compiled_graph(name: str, checkpointer: Any = None) -> Any:
    table = builders()
    if name not in table:
        raise KeyError(f"unknown graph '{name}': {', '.join(table)}")
    return table[name]().compile(checkpointer=checkpointer)
