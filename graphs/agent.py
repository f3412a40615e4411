"""The single-attempt agent. Invoke with context=AgentContext(model=..., env=...)."""

from agent_selfevolve.agent import build_agent_graph

graph = build_agent_graph().compile()
