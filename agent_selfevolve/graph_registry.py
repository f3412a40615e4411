"""Every graph the library ships, by name: for `selfevolve viz graph`, `graphs/` and LangGraph Studio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.graph import StateGraph

from agent_selfevolve.ast_guard import compile_graph


def builders() -> dict[str, Callable[[], StateGraph]]:
    from agent_selfevolve.agent import build_agent_graph
    from agent_selfevolve.search import (
        build_best_of_n_graph,
        build_hgm_graph,
        build_mcts_graph,
        build_se_agent_graph,
    )

    return {"agent": build_agent_graph, "best_of_n": build_best_of_n_graph, "se_agent": build_se_agent_graph,
            "hgm": build_hgm_graph, "mcts": build_mcts_graph}


def compiled_graph(name: str, checkpointer: Any = None) -> Any:
    table = builders()
    if name not in table:
        raise KeyError(f"unknown graph '{name}': {', '.join(table)}")
    return compile_graph(table[name], checkpointer)
