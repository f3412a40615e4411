"""Embedding both ways: our agent as a node of a user's graph; a user's own agent recorded as our trajectory."""

from pathlib import Path
from typing import Annotated, Any, TypedDict

from conftest import solving_script
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from agent_selfevolve.embed import attempt_node, env_tools, record_agent
from agent_selfevolve.envs import make_environment
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task


def test_our_agent_as_a_node_in_a_user_graph(demo_task: Task, tmp_path: Path) -> None:
    def keep_last(_old: Any, new: Any) -> Any:
        return new

    class AppState(TypedDict, total=False):
        task: dict[str, Any]
        trajectory: Annotated[dict[str, Any], keep_last]
        verdict: str

    store = TrajectoryStore(tmp_path / "s.sqlite")
    app = StateGraph(AppState)
    app.add_node("solve", attempt_node(ScriptedFakeModel(solving_script()), store=store))
    app.add_node("report", lambda s: {"verdict": "fixed" if s["trajectory"]["evaluation"]["resolved"] else "no"})
    app.add_edge(START, "solve")
    app.add_edge("solve", "report")
    app.add_edge("report", END)
    out = app.compile().invoke({"task": demo_task.model_dump()})
    assert out["verdict"] == "fixed" and store.count() == 1


def test_user_react_agent_is_recorded_as_our_trajectory(demo_task: Task, tmp_path: Path) -> None:
    env = make_environment(demo_task, "ext-1")
    env.reset()
    script = [AIMessage(content="look", tool_calls=[{"name": "bash", "args": {"command": "cat calc.py"}, "id": "c1"}]),
              AIMessage(content="", tool_calls=[{"name": "str_replace", "id": "c2", "args": {
                  "path": "calc.py", "old": "return a - b", "new": "return a + b"}}]),
              AIMessage(content="fixed")]
    llm = GenericFakeChatModel(messages=iter(script))
    tools = env_tools(env)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    def route(state: MessagesState) -> str:
        return "tools" if state["messages"][-1].tool_calls else END

    user_graph = StateGraph(MessagesState)
    user_graph.add_node("llm", call_model)
    user_graph.add_node("tools", ToolNode(tools))
    user_graph.add_edge(START, "llm")
    user_graph.add_conditional_edges("llm", route, ["tools", END])
    user_graph.add_edge("tools", "llm")
    store = TrajectoryStore(tmp_path / "s.sqlite")
    traj = record_agent(user_graph.compile(), demo_task, env=env, store=store, model_name="user/fake-react")
    assert traj.status == "submitted" and traj.resolved, traj.exit_message
    assert [s["action"]["name"] for s in traj.steps] == ["bash", "str_replace"]
    assert "return a - b" in traj.steps[0]["observation"]
    assert [m["role"] for m in traj.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert store.get(traj.attempt_id).to_openai_finetune()["messages"] == traj.messages
