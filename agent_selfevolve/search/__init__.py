"""Search strategies over trajectories: each a LangGraph graph that fans out attempts, plus one function."""

from __future__ import annotations

from collections.abc import Callable

from agent_selfevolve.search.best_of_n import best_of_n, build_best_of_n_graph
from agent_selfevolve.search.common import Budget, SearchContext, SearchResult
from agent_selfevolve.search.hgm import build_hgm_graph, hgm
from agent_selfevolve.search.mcts import build_mcts_graph, mcts
from agent_selfevolve.search.se_agent import build_se_agent_graph, se_agent

__all__ = ["Budget", "SearchContext", "SearchResult", "best_of_n", "build_best_of_n_graph", "build_hgm_graph",
           "build_mcts_graph", "build_se_agent_graph", "hgm", "mcts", "se_agent", "strategies"]


def strategies() -> dict[str, Callable[..., SearchResult]]:
    """Strategy name -> function(ctx, run_id=..., **options) -> SearchResult."""
    return {"best_of_n": best_of_n, "se_agent": se_agent, "hgm": hgm, "mcts": mcts}
