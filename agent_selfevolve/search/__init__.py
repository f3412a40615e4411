"""Search strategies over trajectories: each a LangGraph graph that fans out attempts, plus one function.

Strategies register themselves (`registry.register_strategy`); `strategies()` maps names to their functions.
"""

from __future__ import annotations

from agent_selfevolve.search.best_of_n import BestOfNConfig, best_of_n, build_best_of_n_graph
from agent_selfevolve.search.common import Budget, SearchContext, SearchResult
from agent_selfevolve.search.hgm import HGMConfig, build_hgm_graph, hgm
from agent_selfevolve.search.mcts import MCTSConfig, build_mcts_graph, mcts
from agent_selfevolve.search.registry import StrategyConfig, register_strategy, registered, strategies
from agent_selfevolve.search.se_agent import SEAgentConfig, build_se_agent_graph, se_agent

__all__ = ["BestOfNConfig", "Budget", "HGMConfig", "MCTSConfig", "SEAgentConfig", "SearchContext", "SearchResult",
           "StrategyConfig", "best_of_n", "build_best_of_n_graph", "build_hgm_graph", "build_mcts_graph",
           "build_se_agent_graph", "hgm", "mcts", "register_strategy", "registered", "se_agent", "strategies"]
