"""Search strategies over trajectories: each a LangGraph graph that fans out attempts, plus one function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_selfevolve.search.best_of_n import best_of_n, build_best_of_n_graph
from agent_selfevolve.search.common import Budget, SearchContext, SearchResult

__all__ = ["Budget", "SearchContext", "SearchResult", "best_of_n", "build_best_of_n_graph", "strategies"]


def strategies() -> dict[str, Callable[..., SearchResult]]:
    """Strategy name -> function(ctx, run_id=..., **options) -> SearchResult."""
    found: dict[str, Callable[..., Any]] = {"best_of_n": best_of_n}
    try:
        from agent_selfevolve.search.se_agent import se_agent

        found["se_agent"] = se_agent
    except ImportError:
        pass
    try:
        from agent_selfevolve.search.hgm import hgm

        found["hgm"] = hgm
    except ImportError:
        pass
    return found
