"""A scripted FAKE model for deterministic tests of graph logic: it replays replies, it does not think.

`ScriptedFakeModel` answers in-process; `FakeOpenAIServer` serves the same script over HTTP on 127.0.0.1 in
the OpenAI chat-completions shape, so tests exercise the real openai/litellm client code paths too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage

Reply = str | dict[str, Any]
Responder = Callable[[list[Message]], Reply]


def approx_tokens(messages: list[Message]) -> int:
    return sum(len(json.dumps(m, default=str)) for m in messages) // 4


def bash(command: str, thought: str = "") -> dict[str, Any]:
    """A scripted reply calling the bash tool (native tool-call shape)."""
    return tool_call("bash", {"command": command}, thought)


def tool_call(name: str, arguments: dict[str, Any], thought: str = "") -> dict[str, Any]:
    return {"role": "assistant", "content": thought or None,
            "tool_calls": [{"id": "", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def _as_message(reply: Reply) -> Message:
    if isinstance(reply, str):
        return {"role": "assistant", "content": reply}
    if "error" in reply:
        raise ModelError(f"scripted provider error: {reply['error']}", transient=bool(reply.get("transient")))
    return {"role": "assistant", **{k: v for k, v in reply.items() if k != "role"}}


class ScriptedFakeModel:
    """FAKE model. `script` is a list of replies consumed in order, or a function of the messages.

    Replies are strings (plain content) or assistant-message dicts (with `tool_calls`), or {"error": ...,
    "transient": bool} to simulate a provider failure. Every request is kept in `requests` (and its sampling
    parameters in `params`) for assertions.
    """

    def __init__(self, script: list[Reply] | Responder, name: str = "fake/scripted", supports_tools: bool = True,
                 latency_s: float = 0.0):
        self.script = script
        self.name, self.supports_tools, self.latency_s = name, supports_tools, latency_s
        self.requests: list[list[Message]] = []
        self.params: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._i = 0

    def next_reply(self, messages: list[Message]) -> Reply:
        with self._lock:
            self.requests.append([dict(m) for m in messages])
            if callable(self.script):
                return self.script(messages)
            if self._i >= len(self.script):
                raise ModelError(f"fake model script exhausted after {len(self.script)} replies")
            self._i += 1
            return self.script[self._i - 1]

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        start = time.monotonic()
        self.params.append(dict(params))
        reply = self.next_reply(messages)
        if self.latency_s:
            time.sleep(self.latency_s)
        message = _as_message(reply)
        for i, call in enumerate(message.get("tool_calls") or []):
            call["id"] = call.get("id") or f"call_{len(self.requests)}_{i}"
        usage = Usage(approx_tokens(messages), approx_tokens([message]), 0.0, 1)
        return ModelReply(message, usage, time.monotonic() - start)


def keyed_script(by_prompt: dict[str, list[Reply]], default: list[Reply] | None = None) -> Responder:
    """A stateless FAKE responder for many concurrent conversations: the first key found in the first user
    message picks the script, and the number of assistant turns so far picks the reply."""

    def respond(messages: list[Message]) -> Reply:
        first_user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        script = next((v for k, v in by_prompt.items() if k in first_user), default)
        if script is None:
            raise ModelError("fake model: no scripted conversation matches this prompt")
        turn = sum(m.get("role") == "assistant" for m in messages)
        if turn >= len(script):
            raise ModelError(f"fake model script exhausted after {len(script)} replies")
        return script[turn]

    return respond


def fake_from_spec(data: Any, **options: Any) -> ScriptedFakeModel:
    """`fake:<file.json>` holds a list of replies, or {"by_prompt": {substring: [replies]}, "default": [...],
    "latency_s": 0.2}."""
    if isinstance(data, dict):
        options.setdefault("latency_s", float(data.get("latency_s", 0.0)))
        options.setdefault("supports_tools", bool(data.get("supports_tools", True)))
        return ScriptedFakeModel(keyed_script(data.get("by_prompt", {}), data.get("default")), **options)
    return ScriptedFakeModel(list(data), **options)


class FakeOpenAIServer:
    """Serves a ScriptedFakeModel at http://127.0.0.1:<port>/v1 (chat completions only). Use as a context manager.

    A reply {"error": 429} answers with that HTTP status, to exercise retries.
    """

    def __init__(self, model: ScriptedFakeModel):
        self.model = model
        self.http_calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.http_calls += 1
                reply = outer.model.next_reply(body.get("messages", []))
                if isinstance(reply, dict) and "error" in reply:
                    status = int(reply["error"]) if str(reply["error"]).isdigit() else 500
                    self._send(status, {"error": {"message": f"scripted error {status}", "type": "fake"}})
                    return
                message = _as_message(reply)
                for i, call in enumerate(message.get("tool_calls") or []):
                    call["id"] = call.get("id") or f"call_{outer.http_calls}_{i}"
                prompt, completion = approx_tokens(body.get("messages", [])), approx_tokens([message])
                self._send(200, {
                    "id": f"chatcmpl-{outer.http_calls}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
