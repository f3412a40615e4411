"""Embedding: our agent inside your LangGraph app, or your agent inside our recording and search.

- `attempt_node(...)`: a node function for your graph that runs one attempt on `state["task"]` and returns
  only `{"trajectory": ...}` (not the subgraph's whole state, so your reducers see no duplicated keys).
- `env_tools(env)`: the environment's tools as LangChain tools, for your own agent (e.g. with `ToolNode`).
- `record_agent(agent, task, ...)`: run your compiled agent graph (a `messages` state, LangChain messages) on a
  task, and record what it did as our `Trajectory` (same steps, evaluation and store as our own agent).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs import Environment, make_environment
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.models.base import Model, Usage
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory


def attempt_node(model: Model, store: TrajectoryStore | None = None,
                 **attempt_options: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A node for your graph: reads `state["task"]` (a Task or its dict), writes `state["trajectory"]`."""

    def node(state: dict[str, Any]) -> dict[str, Any]:
        task = state["task"] if isinstance(state["task"], Task) else Task.model_validate(state["task"])
        traj = run_attempt(task, model, AttemptSpec(task.instance_id), store=store, **attempt_options)
        return {"trajectory": traj.to_dict()}

    return node


def env_tools(env: Environment, on_call: Callable[[ToolCall, Any], None] | None = None) -> list[Any]:
    """The environment's tools as LangChain `StructuredTool`s acting in the sandbox."""
    from langchain_core.tools import StructuredTool

    tools = []
    for spec in env.tool_specs():
        fn = spec["function"]

        def run(_name: str = fn["name"], **kwargs: Any) -> str:
            call = ToolCall(_name, kwargs)
            obs = env.step(call)
            if on_call:
                on_call(call, obs)
            return obs.text

        tools.append(StructuredTool.from_function(func=run, name=fn["name"], description=fn.get("description", ""),
                                                  args_schema=fn.get("parameters", {"type": "object"})))
    return tools


def to_openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """LangChain messages (or dicts already in OpenAI shape) -> OpenAI chat dicts."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, dict):
            out.append(m)
            continue
        kind = getattr(m, "type", "")
        content = m.content if isinstance(m.content, str) else json.dumps(m.content)
        if kind == "ai":
            msg: dict[str, Any] = {"role": "assistant", "content": content or None}
            if getattr(m, "tool_calls", None):
                msg["tool_calls"] = [{"id": c.get("id") or "", "type": "function",
                                      "function": {"name": c["name"], "arguments": json.dumps(c.get("args", {}))}}
                                     for c in m.tool_calls]
            out.append(msg)
        elif kind == "tool":
            out.append({"role": "tool", "tool_call_id": getattr(m, "tool_call_id", ""), "content": content})
        else:
            out.append({"role": {"human": "user", "system": "system"}.get(kind, "user"), "content": content})
    return out


def steps_from_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our step records from an OpenAI-shaped conversation: one step per tool call with its observation."""
    results = {m.get("tool_call_id"): m.get("content", "") for m in messages if m.get("role") == "tool"}
    steps: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for i, call in enumerate(m.get("tool_calls") or []):
            fn = call["function"]
            args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
            steps.append({"index": len(steps), "thought": (m.get("content") or "") if i == 0 else "",
                          "action": {"name": fn["name"], "arguments": args},
                          "observation": results.get(call.get("id"), "")})
    return steps


def record_agent(agent: Any, task: Task, *, model_name: str = "external", store: TrajectoryStore | None = None,
                 env: Environment | None = None, run_id: str = "", evaluate: bool = True,
                 make_input: Callable[[Task, Environment], dict[str, Any]] | None = None,
                 config: dict[str, Any] | None = None) -> Trajectory:
    """Run your compiled LangGraph agent on `task` in our sandbox and record it as a Trajectory.

    `agent` must accept `{"messages": [...]}` and act through `env_tools(env)` (or any tools touching the
    environment's working copy). `make_input` builds its input; by default one user message with the issue.
    """
    attempt_id = uuid.uuid4().hex[:12]
    env = env or make_environment(task, attempt_id)
    first = env.reset()
    inputs = make_input(task, env) if make_input else {
        "messages": [{"role": "user", "content": f"{task.problem_statement}\n\n{first.text}"}]}
    traj = Trajectory(attempt_id=attempt_id, task_id=task.instance_id, model=model_name, run_id=run_id,
                      operator="external", tools=env.tool_specs())
    start = time.monotonic()
    try:
        values = agent.invoke(inputs, config or {"recursion_limit": 100})
        traj.messages = to_openai_messages(values.get("messages", []))
        traj.steps = steps_from_messages(traj.messages)
        usage = Usage()
        for m in values.get("messages", []):
            meta = getattr(m, "usage_metadata", None) or {}
            usage = usage + Usage(meta.get("input_tokens", 0), meta.get("output_tokens", 0), 0.0,
                                  1 if getattr(m, "type", "") == "ai" else 0)
        traj.usage = usage.to_dict()
        traj.outcome = env.outcome()
        traj.patch = traj.outcome.get("patch", "")
        traj.status = "submitted"
        if evaluate:
            traj.evaluation = env.evaluate(traj.outcome).to_dict()
            traj.selection = {"reward": traj.reward, "source": traj.evaluation.get("source", "")}
    except Exception as exc:  # the user's agent failed: keep what we have, mark it
        traj.status, traj.exit_message = "error", f"{type(exc).__name__}: {exc}"
    finally:
        traj.elapsed_s = time.monotonic() - start
        env.close()
    if store is not None:
        store.record(traj)
    return traj
