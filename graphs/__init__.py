"""Graph entry points for LangGraph Studio (`langgraph dev`, see langgraph.json) and `selfevolve viz graph`."""
