"""The OpenAI chat-completions wire format for `selfevolve serve`: request validation, replies, stream chunks and
OpenAI-shaped errors. No I/O here, so every rule is testable without a socket."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.models.base import Message, ModelReply
from agent_selfevolve.serve_record import clean_message

ROLES = ("system", "developer", "user", "assistant", "tool")
_PASSED = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


class ApiError(Exception):
    """An error the client caused (or a model failure), answered as OpenAI-shaped JSON with `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection; nothing is sent or recorded for it."""


@dataclass
class ChatRequest:
    model: str
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    trajectory_id: str | None = None
    task_id: str | None = None


def invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def parse_chat_request(body: Any, headers: dict[str, str]) -> ChatRequest:
    """Validate a chat completions body the way the OpenAI API would; ApiError(400) names the bad parameter."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise invalid(f"messages[{i}] must be an object with a role in {', '.join(ROLES)}", f"messages[{i}]")
        if not isinstance(m.get("content"), str | list | None):
            raise invalid(f"messages[{i}].content must be a string, an array of parts or null",
                          f"messages[{i}].content")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise invalid(f"messages[{i}] (role tool) needs a string tool_call_id", f"messages[{i}].tool_call_id")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(
            isinstance(t, dict) and isinstance((t.get("function") or {}).get("name"), str) for t in tools)):
        raise invalid("'tools' must be an array of {\"type\": \"function\", \"function\": {\"name\", ...}}", "tools")
    tools = _choose_tools(tools or None, body.get("tool_choice"))
    params: dict[str, Any] = {}
    for key in _PASSED:
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid(f"'{key}' must be a number", key)
        if value is not None:
            params[key] = value
    if not 0 <= params.get("temperature", 0) <= 2:
        raise invalid("'temperature' must be between 0 and 2", "temperature")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise invalid("'max_tokens' must be a positive integer", "max_tokens")
        params["max_tokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
            raise invalid("'stop' must be a string or an array of up to 4 non-empty strings", "stop")
        params["stop"] = stop
    if body.get("n", 1) != 1:
        raise invalid("only n=1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream")
    user = body.get("user")
    explicit = headers.get("x-trajectory-id") or (user if isinstance(user, str) and user else None)
    if explicit is not None and (len(explicit) > 200 or not explicit.isprintable()):
        raise invalid("the trajectory id (X-Trajectory-Id or 'user') must be printable, at most 200 characters",
                   "user")
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    task = headers.get("x-task-id") or meta.get("task_id")
    return ChatRequest(model, [clean_message(m) for m in messages], tools, params, stream,
                       bool((body.get("stream_options") or {}).get("include_usage")), explicit,
                       str(task) if task else None)


def _choose_tools(tools: list[dict[str, Any]] | None, choice: Any) -> list[dict[str, Any]] | None:
    if choice in (None, "auto", "required"):
        return tools
    if choice == "none":
        return None
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    picked = [t for t in tools or [] if t["function"]["name"] == name]
    if not picked:
        raise invalid("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": "
                      "<one of the tools>}}", "tool_choice")
    return picked


def completion_body(req: ChatRequest, reply: ModelReply, completion_id: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply.message.get("content")}
    if reply.message.get("tool_calls"):
        message["tool_calls"] = reply.message["tool_calls"]
    u = reply.usage
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                      "total_tokens": u.total_tokens}}


def stream_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A whole completion as chat.completion.chunk events: role, content, tool calls, finish (, usage)."""
    head = {k: body[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice, message = body["choices"][0], body["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    if message.get("content"):
        out.append(chunk({"content": message["content"]}))
    for i, call in enumerate(message.get("tool_calls") or []):
        out.append(chunk({"tool_calls": [{"index": i, **call}]}))
    out.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        out.append({**head, "choices": [], "usage": body["usage"]})
    return out
