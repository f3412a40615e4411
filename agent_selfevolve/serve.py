"""`selfevolve serve`: an OpenAI-compatible chat endpoint on 127.0.0.1, so agents we did not write (LangChain,
litellm, mini-swe-agent, the openai client) run on the embedded model or on any registered adapter version.

- `POST /v1/chat/completions` (messages, tools, tool_choice, temperature, top_p, max_tokens, stop, seed, stream)
  and `GET /v1/models`. `model` names the base (`local`, or whatever spec the server was started with, or
  `base`) or an adapter `name@N` / `name` (its latest version). Models load on first use and stay cached (the
  least recently used beyond `max_loaded` is closed). One model generates one request at a time (a lock);
  different models run in parallel.
- A model without tool calling (the embedded model in text mode, the transformers backend) gets the conversation
  in the text action format (`action_format.of_model`): the client's tool calls as fenced blocks, their results
  as "Observation:" user turns; the tools are then not passed to it.
- `stream: true` is answered with server-sent events in the chat.completion.chunk shape, sent once the reply is
  generated (the Model protocol returns whole replies), which is what streaming clients need to work.
- Disconnects: a request whose client has gone while it waits for its model is dropped before it generates, and
  a reply whose client has gone is neither sent nor recorded. A generation already running is not interrupted
  (the Model protocol has no cancel); its lock is released when it returns, whatever happens (`with`).
- Every request can be recorded (`serve_record.py`): one trajectory per conversation, in the trajectory store.
  `POST /v1/trajectories/<id>/finish` {"status", "patch"?, "evaluation"?, "exit_message"?} closes one; the id of
  each reply's trajectory comes back in the `X-Trajectory-Id` response header.
- The task a conversation belongs to comes from an `X-Task-Id` header or `metadata.task_id` (default 'serve').
- Errors are OpenAI-shaped JSON (`serve_api.py`; {"error": {"message", "type", "param", "code"}}): 400 for a
  malformed request, 404 for an unknown model or path, 413 for an oversized body, 500 (503 if transient) for a
  model failure or anything that breaks inside; no handler exception reaches the server loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent_selfevolve import action_format
from agent_selfevolve.models.base import Model, ModelError
from agent_selfevolve.serve_api import ApiError, ClientGone, completion_body, invalid, parse_chat_request, stream_chunks
from agent_selfevolve.serve_record import ConversationRecorder

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 << 20


@dataclass
class _Slot:
    load: Callable[[], Model]
    lock: threading.Lock = field(default_factory=threading.Lock)
    model: Model | None = None
    used: float = 0.0


class ModelPool:
    """Served models by public id, loaded on first use, cached, one generation at a time per model.

    `load_adapter(ref)` returns a loader for a registered adapter (`name@N`, `name`) or raises KeyError when there
    is none; `adapter_ids()` lists what `/v1/models` shows.
    """

    def __init__(self, base_id: str, load_base: Callable[[], Model],
                 load_adapter: Callable[[str], tuple[str, Callable[[], Model]]] | None = None,
                 adapter_ids: Callable[[], list[str]] | None = None, max_loaded: int = 2):
        self.base_id = base_id
        self.load_adapter, self.adapter_ids, self.max_loaded = load_adapter, adapter_ids, max_loaded
        self._slots: dict[str, _Slot] = {base_id: _Slot(load_base)}
        self._lock = threading.Lock()

    def ids(self) -> list[str]:
        return [self.base_id, *(self.adapter_ids() if self.adapter_ids else [])]

    def _slot(self, name: str) -> _Slot:
        key = self.base_id if name in (self.base_id, "base") else name
        with self._lock:
            if key in self._slots:
                return self._slots[key]
        if self.load_adapter is None:
            raise ApiError(404, f"The model '{name}' does not exist (this server has {self.base_id})",
                           param="model", code="model_not_found")
        try:
            key, load = self.load_adapter(name)
        except KeyError as exc:
            raise ApiError(404, f"The model '{name}' does not exist: {exc}", param="model",
                           code="model_not_found") from exc
        with self._lock:
            return self._slots.setdefault(key, _Slot(load))

    @contextlib.contextmanager
    def use(self, name: str, gone: Callable[[], bool] = lambda: False) -> Iterator[Model]:
        """The model `name`, with its lock held; ClientGone if `gone()` turns true while waiting for it."""
        slot = self._slot(name)
        while not slot.lock.acquire(timeout=0.2):
            if gone():
                raise ClientGone()
        try:
            if gone():
                raise ClientGone()
            if slot.model is None:
                slot.model = slot.load()
            slot.used = time.monotonic()
            yield slot.model
        finally:
            slot.lock.release()
        self._evict()

    def _evict(self) -> None:
        with self._lock:
            loaded = sorted((s for s in self._slots.values() if s.model is not None), key=lambda s: s.used)
            for slot in loaded[:max(0, len(loaded) - self.max_loaded)]:
                if slot.lock.acquire(blocking=False):  # never wait for (or close) a model that is generating
                    try:
                        close = getattr(slot.model, "close", None)
                        if callable(close):
                            close()
                        slot.model = None
                    finally:
                        slot.lock.release()

    def close(self) -> None:
        self.max_loaded = 0
        self._evict()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server API)
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method, self.path.split("?", 1)[0].rstrip("/"))
        except ApiError as exc:
            self._json(exc.status, exc.body())
        except ClientGone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug or a broken model: the client gets a 500, the server keeps serving
            log.exception("serve: %s %s failed", method, self.path)
            with contextlib.suppress(OSError):
                self._json(500, ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").body())

    def _route(self, method: str, path: str) -> None:
        app = self.server.app
        if path in ("/v1/models", "/models") and method == "GET":
            self._json(200, {"object": "list", "data": [_model_card(i) for i in app.pool.ids()]})
        elif path.startswith(("/v1/models/", "/models/")) and method == "GET":
            name = path.split("/models/", 1)[1]
            if name not in app.pool.ids():
                raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
            self._json(200, _model_card(name))
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self._require(method, "POST")
            self._chat(app)
        elif path.startswith("/v1/trajectories/") and path.endswith("/finish"):
            self._require(method, "POST")
            self._finish(app, path.removeprefix("/v1/trajectories/").removesuffix("/finish"))
        elif path in ("/health", "/v1/health") and method == "GET":
            self._json(200, {"status": "ok"})
        else:
            raise ApiError(404, f"no route {method} {path}", code="not_found")

    def _require(self, method: str, want: str) -> None:
        if method != want:
            self._read_body()
            raise ApiError(405, f"use {want}", code="method_not_allowed")

    def _read_body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise invalid("bad Content-Length") from exc
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise invalid(f"the request body is not valid JSON: {exc}") from exc

    def _chat(self, app: ServeApp) -> None:
        req = parse_chat_request(self._read_body(), {k.lower(): v for k, v in self.headers.items()})
        try:
            with app.pool.use(req.model, self._client_gone) as model:  # loading it may fail too
                # a text-mode model sees the client's tool calls and results as fenced blocks and observations
                history = action_format.of_model(model).render_history(req.messages)
                reply = model.chat(history, req.tools, **req.params)
                name = model.name
        except ModelError as exc:
            if "context window" in str(exc):
                raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
            raise ApiError(503 if exc.transient else 500, str(exc), "server_error") from exc
        if self._client_gone():
            raise ClientGone()
        body = completion_body(req, reply, f"chatcmpl-{uuid.uuid4().hex[:24]}")
        traj_id = app.recorder.record(req.messages, reply, model=name, tools=req.tools,
                                      explicit_id=req.trajectory_id, task_id=req.task_id) if app.recorder else None
        extra = {"X-Trajectory-Id": traj_id} if traj_id else {}
        if not req.stream:
            self._json(200, body, extra)
            return
        data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in stream_chunks(body, req.include_usage))
        self.close_connection = True
        self.send_response(200)
        for key, value in {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "close",
                           **extra}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data + b"data: [DONE]\n\n")

    def _finish(self, app: ServeApp, traj_id: str) -> None:
        body = self._read_body() or {}
        if not isinstance(body, dict) or not isinstance(body.get("status", "submitted"), str):
            raise invalid("the body must be an object with a string 'status'", "status")
        if app.recorder is None:
            raise ApiError(404, "this server does not record trajectories (start it with --store)", code="not_found")
        evaluation = body.get("evaluation")
        if evaluation is not None and not isinstance(evaluation, dict):
            raise invalid("'evaluation' must be an object {resolved, reward?, source?}", "evaluation")
        try:
            traj = app.recorder.finish(traj_id, body.get("status", "submitted"), exit_message=str(
                body.get("exit_message", "")), patch=body.get("patch"), evaluation=evaluation)
        except ValueError as exc:
            raise invalid(str(exc), "status") from exc
        if traj is None:
            raise ApiError(404, f"no trajectory '{traj_id}' recorded by this server", code="not_found")
        self._json(200, {"id": traj.attempt_id, "status": traj.status, "messages": len(traj.messages)})

    def _client_gone(self) -> bool:
        """True once the client has closed its end (readable with nothing to read)."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "agent-selfevolve"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: ServeApp


class ServeApp:
    """The endpoint: `pool` answers, `recorder` (optional) keeps every conversation. Use as a context manager, or
    `serve_forever()` for the CLI."""

    def __init__(self, pool: ModelPool, recorder: ConversationRecorder | None = None, port: int = 0):
        self.pool, self.recorder = pool, recorder
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.app = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.close()

    def __enter__(self) -> ServeApp:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.close()

    def close(self) -> None:
        self.server.server_close()
        self.pool.close()


def registry_adapters(root: str | Path, policy: Callable[[Any, Any], Model],
                      ) -> tuple[Callable[[str], tuple[str, Callable[[], Model]]], Callable[[], list[str]]]:
    """`ModelPool`'s adapter hooks over the adapter registry at `root`: resolve `name@N` / `name` (latest) to its
    version and a loader `policy(version, registry)`, and list every registered version."""
    from agent_selfevolve.train.registry import AdapterRegistry, RegistryError

    @contextlib.contextmanager
    def opened() -> Iterator[AdapterRegistry]:
        reg = AdapterRegistry(root)  # its sqlite handle belongs to one thread: open one per use
        try:
            yield reg
        finally:
            reg.close()

    def ids() -> list[str]:
        with opened() as reg:
            return [v.ref for name in reg.names() for v in reg.versions(name)]

    def adapter(ref: str) -> tuple[str, Callable[[], Model]]:
        with opened() as reg:
            try:
                version = reg.get(ref)
            except RegistryError as exc:
                raise KeyError(str(exc)) from exc

        def load() -> Model:
            with opened() as reg:
                return policy(version, reg)

        return version.ref, load

    return adapter, ids


def local_pool(spec: str = "local", adapters_root: str | Path | None = None, max_loaded: int = 2,
               **options: Any) -> ModelPool:
    """The CLI's pool: the base from a model spec, and (for the embedded model) every adapter registered under
    `adapters_root`, exported to GGUF LoRA on first use (which converts the base to HF once)."""
    from agent_selfevolve.models import make_model

    if adapters_root is None or not spec.startswith("local"):
        return ModelPool(spec, lambda: make_model(spec, **options), max_loaded=max_loaded)

    def policy(version: Any, registry: Any) -> Model:
        from agent_selfevolve.models import DEFAULT_LOCAL_MODEL
        from agent_selfevolve.models.weights import ensure_gguf
        from agent_selfevolve.serving import llama_cpp_policy
        from agent_selfevolve.train.base_model import hf_base_from_gguf

        key = spec.partition(":")[2] or DEFAULT_LOCAL_MODEL
        base_dir = hf_base_from_gguf(ensure_gguf(key))  # the adapter's GGUF export needs the HF base (cached)
        return llama_cpp_policy(key, registry, base_dir, **options)(version)

    adapter, ids = registry_adapters(adapters_root, policy)
    return ModelPool(spec, lambda: make_model(spec, **options), adapter, ids, max_loaded)
