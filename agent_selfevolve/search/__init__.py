"""Search strategies over trajectories: each a LangGraph graph that fans out attempts, plus one function."""

from agent_selfevolve.search.best_of_n import best_of_n, build_best_of_n_graph
from agent_selfevolve.search.common import Budget, SearchContext, SearchResult

__all__ = ["Budget", "SearchContext", "SearchResult", "best_of_n", "build_best_of_n_graph"]
