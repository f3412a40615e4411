"""The search strategies. Invoke with context=SearchContext(task=..., model=..., store=...)."""

from agent_selfevolve.graph_registry import compiled_graph

best_of_n = compiled_graph("best_of_n")
se_agent = compiled_graph("se_agent")
hgm = compiled_graph("hgm")
mcts = compiled_graph("mcts")
