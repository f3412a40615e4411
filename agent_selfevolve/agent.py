"""The single-attempt agent: a LangGraph StateGraph  start -> model -> tools -> model ... -> finish.

State is plain JSON (messages, steps, counters) so any checkpointer can persist it and an attempt killed
mid-way resumes from its thread id. Live objects (the model client, the sandbox) travel in the runtime
context, never in state or `config["configurable"]`, which would copy them (and API keys) into the database.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent_selfevolve import action_format
from agent_selfevolve.action_format import ActionFormat
from agent_selfevolve.envs.base import INITIAL_STATE, Environment, Observation, ToolCall
from agent_selfevolve.envs.tools import ActionFormatError
from agent_selfevolve.models.base import Model, ModelError, ModelReply, Usage
from agent_selfevolve.setups import AgentSetup, get_setup


@dataclass
class Limits:
    max_steps: int = 30
    max_tokens: int = 400_000
    max_cost: float = 5.0
    max_wall_s: float = 1800.0
    max_format_errors: int = 3
    """Consecutive malformed replies that end the attempt."""


@dataclass
class AgentContext:
    """Live dependencies of one attempt; passed as `context=` to invoke/stream."""

    model: Model
    env: Environment
    limits: Limits = field(default_factory=Limits)
    setup: AgentSetup = field(default_factory=lambda: get_setup("default"))
    """Prompts, action format and retry options (`setups`); its environment options were applied by whoever
    made `env`."""
    model_params: dict[str, Any] = field(default_factory=dict)


class AgentState(TypedDict, total=False):
    task_id: str
    problem: str
    guidance: str
    """Advice from a search operator (SE-Agent revision, HGM diagnosis); goes into the first prompt."""
    strategy: str
    """A planning strategy for diversity; goes into the first prompt."""
    replay: list[dict[str, Any]]
    """Assistant turns to replay verbatim before the model takes over: the attempt re-executes an earlier
    attempt's actions in a fresh sandbox, reaching its state, then branches (tree search over steps)."""
    messages: Annotated[list[dict[str, Any]], operator.add]
    steps: Annotated[list[dict[str, Any]], operator.add]
    pending: list[dict[str, Any]]
    thought: str
    status: str
    exit_message: str
    format_errors: int
    usage: dict[str, Any]
    elapsed_s: float
    outcome: dict[str, Any]
    native_tools: bool


def prompt_extras(strategy: str, guidance: str) -> tuple[str, str]:
    """The strategy and guidance parts of the first user message (`train.canonical` strips them again)."""
    return (f"Approach to take: {strategy}\n" if strategy else "",
            f"\nGuidance from earlier attempts at this task:\n{guidance}\n" if guidance else "")


def _emit(runtime: Runtime[AgentContext], event: dict[str, Any]) -> None:
    runtime.stream_writer(event)  # a no-op unless the caller streams "custom" events


def start(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    t0 = time.monotonic()
    obs = ctx.env.reset()
    fmt = action_format.choose(ctx.setup.action_format, ctx.model)
    system = ctx.setup.system_prompt
    rules = fmt.describe(ctx.env.tool_specs(), ctx.setup.action_rules)
    if rules:
        system += "\n\n" + rules
    strategy, guidance = prompt_extras(state.get("strategy", ""), state.get("guidance", ""))
    user = ctx.setup.task_template.format(problem=state.get("problem", ""), orientation=obs.text,
                                          strategy=strategy, guidance=guidance)
    _emit(runtime, {"event": "attempt_started", "task_id": state.get("task_id", "")})
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "status": "running", "format_errors": 0, "usage": Usage().to_dict(), "native_tools": fmt.native,
            "elapsed_s": time.monotonic() - t0, "pending": []}


def _limit_hit(state: AgentState, limits: Limits) -> tuple[str, str] | None:
    usage = Usage.from_dict(state.get("usage"))
    if len([s for s in state.get("steps", []) if s.get("action")]) >= limits.max_steps:
        return "step_limit", f"reached {limits.max_steps} steps"
    if usage.total_tokens >= limits.max_tokens:
        return "token_limit", f"used {usage.total_tokens} tokens (limit {limits.max_tokens})"
    if usage.cost >= limits.max_cost:
        return "cost_limit", f"cost ${usage.cost:.4f} (limit ${limits.max_cost})"
    if state.get("elapsed_s", 0.0) >= limits.max_wall_s:
        return "time_limit", f"ran {state.get('elapsed_s', 0.0):.0f} s (limit {limits.max_wall_s:.0f} s)"
    return None


def call_model(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """One turn: stop at a limit, else query the model (or replay a known turn) and parse its action."""
    ctx = runtime.context
    hit = _limit_hit(state, ctx.limits)
    if hit:
        return {"status": hit[0], "exit_message": hit[1], "pending": []}
    fmt = action_format.of_state(state.get("native_tools", True))
    retries = ctx.setup.repeat_retries
    t0 = time.monotonic()
    turn = sum(1 for m in state["messages"] if m.get("role") == "assistant")
    params = {"stop": list(fmt.stop), **ctx.model_params} if fmt.stop else ctx.model_params
    base_seed = int(ctx.model_params.get("seed") or 0)  # a search's per-attempt seed keeps siblings apart
    revising = _revising(state)
    fresh = revising and ctx.setup.revision_context == "fresh"
    shown = fresh_revision(state) if fresh else state["messages"]
    if ctx.setup.revise_temperature is not None and revising:
        params = {**params, "temperature": ctx.setup.revise_temperature, "seed": base_seed + 1000 * turn}
    spent = Usage()
    for retry in range(retries + 1):
        if retry:  # the same context gives the same greedy reply: sample a different one
            params = {**params, "temperature": ctx.setup.retry_temperature, "seed": base_seed + 1000 * turn + retry}
        try:
            reply, replayed = _query(state, ctx, fmt, shown, params, turn)
        except ModelError as exc:
            return {"status": "model_error", "exit_message": str(exc), "pending": [],
                    "elapsed_s": state.get("elapsed_s", 0.0) + time.monotonic() - t0}
        spent = spent + Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.cost,
                              0 if replayed else 1)
        try:
            calls = fmt.parse(reply.message, ctx.env.tool_specs())
            repeated = _repeats(calls, state.get("steps", []))
        except ActionFormatError:  # the same malformed reply as last turn: greedy decoding will not leave it
            calls, repeated = [], _repeats_rejected(reply.message, state.get("steps", []))
        if not repeated or replayed:
            break
    model_s = time.monotonic() - t0
    fresh = fresh and not replayed
    usage = (Usage.from_dict(state.get("usage")) + spent).to_dict()
    message = reply.recorded_message()  # with the sampled token ids, for training; prompts never see them
    update: dict[str, Any] = {"usage": usage, "elapsed_s": state.get("elapsed_s", 0.0) + model_s,
                              "thought": message.get("content") or ""}
    reply_usage = Usage(spent.prompt_tokens, spent.completion_tokens, spent.cost, spent.calls)
    try:
        calls = fmt.parse(message, ctx.env.tool_specs())
        _refuse_repeat(calls, state.get("steps", []))
    except ActionFormatError as exc:
        stuck = retries if retries and repeated and not replayed else 0  # resampling found nothing else
        rejected = _rejected(state, message, exc, reply_usage, model_s, ctx.limits.max_format_errors, stuck)
        rejected["steps"][0]["shown"] = "fresh_revision" if fresh else "conversation"  # for training rows
        return {**update, **rejected}
    update.update(messages=[message], format_errors=0, pending=[
        {"name": c.name, "arguments": c.arguments, "id": c.id, "usage": reply_usage.to_dict(), "model_s": model_s,
         "shown": "fresh_revision" if fresh else "conversation"} for c in calls])
    return update


def _revising(state: AgentState) -> bool:
    """The last visible checks the agent ran (after an edit) failed, or its last edit gave the code back unchanged
    (the model sees no bug: asked again greedily, it gives the same code): the next reply is a revision."""
    acted = [s for s in state.get("steps", []) if s.get("action")]
    if acted and _info(acted[-1]).get("unchanged"):
        return True
    checked = [c for s in state.get("steps", []) if (c := _info(s).get("checks"))]
    return bool(checked) and checked[-1].get("all_passed") is False


def _info(step: dict[str, Any]) -> dict[str, Any]:
    return step.get("info") or {}


def _rejected(state: AgentState, message: dict[str, Any], exc: ActionFormatError, usage: Usage, model_s: float,
              max_errors: int, stuck_after: int) -> dict[str, Any]:
    """The update for a reply without an acceptable action: its text kept, the error shown to the model as the next
    user turn; the attempt ends after `max_errors` in a row, or at once when it is stuck (`stuck_after` > 0: that
    many resamples repeated the action too)."""
    errors = state.get("format_errors", 0) + 1
    feedback: dict[str, Any] = {"role": "user", "content": f"Format error: {exc}"}
    # Native mode: tool calls must be answered before another user turn, so keep only the text.
    kept = {"role": "assistant", "content": message.get("content") or ""}
    repeat = isinstance(exc, RepeatedActionError)
    step = {"index": len(state.get("steps", [])), "thought": message.get("content") or "", "action": None,
            "format_error": str(exc), "repeated_action": repeat, "usage": usage.to_dict(), "model_s": model_s}
    update: dict[str, Any] = {"messages": [kept, feedback], "steps": [step], "format_errors": errors, "pending": []}
    # Every refusal in this run of errors was a well-formed repeat: the model is stuck, not malformed.
    previous = state.get("steps", [])
    recent = [*previous[len(previous) - (errors - 1):], step]
    status = "stuck" if all(s.get("repeated_action") for s in recent) else "format_errors"
    if errors >= max_errors:
        update.update(status=status, exit_message=f"{errors} refused replies in a row: {exc}")
    elif stuck_after:
        update.update(status=status, exit_message=f"repeated one reply {stuck_after + 1} "
                                                  f"times, also when sampled: {exc}")
    return update


def _query(state: AgentState, ctx: AgentContext, fmt: ActionFormat, shown: list[dict[str, Any]],
           params: dict[str, Any], turn: int) -> tuple[ModelReply, bool]:
    """The model's reply to `shown` for this turn, or the replayed one (no model call) while a replay lasts."""
    replay = state.get("replay") or []
    if turn < len(replay):
        return ModelReply(dict(replay[turn]), Usage()), True
    return ctx.model.chat(fmt.render_history(shown), fmt.model_tools(ctx.env.tool_specs()), **params), False


def fresh_revision(state: AgentState) -> list[dict[str, Any]]:
    """A revision with `revision_context: fresh`: the first turn again with the last failed check after it and
    without the earlier code (the 0.5B copied its wrong function back whenever it was in view)."""
    messages = state["messages"]
    first = next(i for i, m in enumerate(messages) if m.get("role") == "user")
    return [*messages[:first], {"role": "user", "content": f"{messages[first]['content']}\n\n{failed_check(state)}"}]


def failed_check(state: AgentState) -> str:
    """The last failed check report (or the unchanged answer's refusal), as the fresh revision prompt shows it."""
    last = next(s for s in reversed(state.get("steps", [])) if _info(s).get("checks") or _info(s).get("unchanged"))
    if _info(last).get("unchanged"):
        return ("An earlier answer gave this code back unchanged, but the issue shows that it is wrong: find the "
                "bug.\nReply with a corrected, complete function in one ```python block.")
    obs = last.get("observation") or ""
    report = obs[obs.find("Checks:"):] if "Checks:" in obs else obs
    lines = [line for line in report.splitlines() if not line.startswith("Fix the code")]
    return ("An earlier answer failed the checks:\n" + "\n".join(lines).strip()
            + "\nReply with a corrected, complete function in one ```python block.")


def _repeated(calls: list[ToolCall], steps: list[dict[str, Any]]) -> int | None:
    """The index of an earlier step whose action this repeats with nothing new to show: the action just executed,
    or one taken from the same state (small models loop, also as A, B, A, B). States are compared where the
    environment reports `info["state"]` (a key of the repository's contents)."""
    if len(calls) != 1:
        return None
    action = {"name": calls[0].name, "arguments": calls[0].arguments}
    acted = [s for s in steps if s.get("action")]
    if not acted:
        return None
    if acted[-1]["action"] == action:  # twice in a row: nothing happened in between
        return acted[-1].get("index")
    now = (acted[-1].get("info") or {}).get("state")
    if now is None:
        return None
    before = [INITIAL_STATE] + [(s.get("info") or {}).get("state") for s in acted[:-1]]
    return next((s.get("index") for s, was in zip(acted, before, strict=True) if s["action"] == action and was == now),
                None)


def _repeats(calls: list[ToolCall], steps: list[dict[str, Any]]) -> bool:
    return _repeated(calls, steps) is not None


def _repeats_rejected(message: dict[str, Any], steps: list[dict[str, Any]]) -> bool:
    """The reply is word for word the one the last turn refused (a 0.5B answers its format error with the same
    block, and greedily it always will)."""
    return bool(steps) and bool(steps[-1].get("format_error")) and \
        (message.get("content") or "") == steps[-1].get("thought", "")


class RepeatedActionError(ActionFormatError):
    """A well-formed action the agent already ran from the same state: refused like a malformed reply (the model
    must choose again), but an attempt that ends on these is `stuck`, not `format_errors`."""


def _refuse_repeat(calls: list[ToolCall], steps: list[dict[str, Any]]) -> None:
    if _repeated(calls, steps) is not None:
        raise RepeatedActionError(f"You already ran this exact `{calls[0].name}` action from the same state as "
                                "now, and saw its result. Repeating it gives the same output: take a different "
                                "action.")


def run_tools(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    fmt = action_format.of_state(state.get("native_tools", True))
    messages: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    status, elapsed = state.get("status", "running"), state.get("elapsed_s", 0.0)
    for i, call in enumerate(state.get("pending", [])):
        t0 = time.monotonic()
        try:
            obs = ctx.env.step(ToolCall(call["name"], call["arguments"], call.get("id", "")))
        except Exception as exc:  # a broken sandbox ends the attempt; what was recorded so far is kept
            obs = Observation(f"Environment error: {type(exc).__name__}: {exc}", error=True)
            status = "env_error"
        tool_s = time.monotonic() - t0
        elapsed += tool_s
        messages.append(fmt.observation(call.get("id", ""), obs.text))
        steps.append({"index": len(state.get("steps", [])) + i, "thought": state.get("thought", "") if i == 0 else "",
                      "action": {"name": call["name"], "arguments": call["arguments"]}, "observation": obs.text,
                      "observation_error": obs.error, "usage": call.get("usage", {}) if i == 0 else {},
                      "model_s": call.get("model_s", 0.0) if i == 0 else 0.0, "tool_s": tool_s, "info": obs.info,
                      "shown": call.get("shown", "conversation")})
        _emit(runtime, {"event": "step", "task_id": state.get("task_id", ""), "index": steps[-1]["index"],
                        "tool": call["name"], "error": obs.error})
        if obs.done:
            status = "submitted"
        if status != "running":
            break
    return {"messages": messages, "steps": steps, "pending": [], "status": status, "elapsed_s": elapsed,
            **({"exit_message": steps[-1]["observation"]} if status == "env_error" else {})}  # for the user


def finish(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    try:
        outcome = runtime.context.env.outcome()
    except Exception as exc:
        outcome = {"patch": "", "error": f"{type(exc).__name__}: {exc}"}
    _emit(runtime, {"event": "agent_finished", "task_id": state.get("task_id", ""),
                    "status": state.get("status"), "steps": len(state.get("steps", []))})
    return {"outcome": outcome}


def _after_model(state: AgentState) -> Literal["tools", "model", "finish"]:
    if state.get("status", "running") != "running":
        return "finish"
    return "tools" if state.get("pending") else "model"


def _after_tools(state: AgentState) -> Literal["model", "finish"]:
    return "model" if state.get("status", "running") == "running" else "finish"


def build_agent_graph() -> StateGraph:
    """The uncompiled graph, for users who add it to their own app (compile it with their checkpointer)."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("start", start)
    graph.add_node("model", call_model)
    graph.add_node("tools", run_tools)
    graph.add_node("finish", finish)
    graph.add_edge(START, "start")
    graph.add_edge("start", "model")
    graph.add_conditional_edges("model", _after_model)
    graph.add_conditional_edges("tools", _after_tools)
    graph.add_edge("finish", END)
    return graph
