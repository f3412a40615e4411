"""A tiny stdlib kit for the bundled web apps: plain HTML forms, state kept server-side per browser session.

Each attempt's browser context carries a cookie `ase_session=<attempt name>`; the app keys all state by it, so
concurrent attempts never see each other. Three internal endpoints (the environment's route guard refuses every
browser request to `/__*`, so only the environment itself can call them):

- POST /__reset?session=S   (JSON body: setup options) starts the session from the app's initial state
- GET  /__state?session=S   returns the session's state as JSON (for debugging and tests)
- GET  /__reward?session=S&check=NAME&args=JSON  runs a server-side check -> {"resolved", "reward", "details"}
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SESSION_COOKIE = "ase_session"
esc = html.escape


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    state: dict[str, Any]
    session: str

    def arg(self, name: str, default: str = "") -> str:
        """A form field (POST) or query parameter, stripped."""
        values = self.form.get(name) or self.query.get(name)
        return values[0].strip() if values else default

    def args(self, name: str) -> list[str]:
        return self.form.get(name) or self.query.get(name) or []


@dataclass
class Response:
    body: str = ""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def redirect(location: str) -> Response:
    """Post/redirect/get: every form post answers with a 303, so reloads never resubmit."""
    return Response(status=303, headers={"Location": location})


def as_json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, "application/json")


def verdict(resolved: bool, details: dict[str, Any] | None = None, reward: float | None = None) -> dict[str, Any]:
    return {"resolved": resolved, "reward": float(reward if reward is not None else resolved),
            "details": details or {}}


Handler = Callable[[Request], Response]
Check = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class WebApp:
    """Subclasses fill `title`, `nav`, `initial_state`, the GET/POST routes and the reward checks."""

    name = "app"
    title = "App"
    nav: list[tuple[str, str]] = []

    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self.get: dict[str, Handler] = {}
        self.post: dict[str, Handler] = {}
        self.checks: dict[str, Check] = {}

    def initial_state(self, setup: dict[str, Any]) -> dict[str, Any]:
        return {}

    def page(self, heading: str, body: str, notice: str = "", error: str = "") -> Response:
        """A whole HTML page with the app's navigation; `notice`/`error` show as status/alert regions."""
        links = "".join(f'<a href="{esc(href)}">{esc(text)}</a> ' for href, text in self.nav)
        flash = f'<p role="status" class="notice">{esc(notice)}</p>' if notice else ""
        flash += f'<p role="alert" class="error">{esc(error)}</p>' if error else ""
        return Response(f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>{esc(heading)} - {esc(self.title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}} .error{{color:#b00}} .notice{{color:#070}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .5em}} form.inline{{display:inline}}</style>
</head><body><header><strong>{esc(self.title)}</strong> <nav aria-label="Main">{links}</nav></header>
<main><h1>{esc(heading)}</h1>{flash}{body}</main></body></html>""")

    def reset(self, session: str, setup: dict[str, Any]) -> None:
        with self.lock:
            self.sessions[session] = self.initial_state(setup)

    def state_of(self, session: str) -> dict[str, Any]:
        with self.lock:
            if session not in self.sessions:
                self.sessions[session] = self.initial_state({})
            return self.sessions[session]

    def handle(self, method: str, raw_path: str, body: bytes, cookie: str) -> Response:
        url = urlsplit(raw_path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path.startswith("/__"):
            return self._internal(method, url.path, query, body)
        jar = SimpleCookie(cookie or "")
        session = jar[SESSION_COOKIE].value if SESSION_COOKIE in jar else "default"
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True) if method == "POST" else {}
        handler = (self.post if method == "POST" else self.get).get(url.path)
        if handler is None:
            return self.page("Not found", f"<p>No page at {esc(url.path)}.</p>") if method == "GET" else \
                Response("method not allowed", 405, "text/plain")
        state = self.state_of(session)
        with self.lock:
            return handler(Request(method, url.path, query, form, state, session))

    def _internal(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        session = (query.get("session") or ["default"])[0]
        if path == "/__reset" and method == "POST":
            self.reset(session, json.loads(body or b"{}"))
            return as_json({"ok": True})
        if path == "/__state":
            with self.lock:
                return as_json(copy.deepcopy(self.state_of(session)))
        if path == "/__reward":
            name = (query.get("check") or [""])[0]
            check = self.checks.get(name)
            if check is None:
                return as_json({"error": f"unknown check '{name}'", "checks": sorted(self.checks)}, 400)
            args = json.loads((query.get("args") or ["{}"])[0])
            with self.lock:
                return as_json(check(copy.deepcopy(self.state_of(session)), args))
        return as_json({"error": f"no internal endpoint {method} {path}"}, 404)


def make_server(app: WebApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threaded HTTP server for `app` (not started). Binds 127.0.0.1 by default and nothing wider."""

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            try:
                resp = app.handle(method, self.path, body, self.headers.get("Cookie", ""))
            except Exception as exc:  # a bug in an app answers 500 instead of hanging the browser
                resp = Response(f"internal error: {type(exc).__name__}: {exc}", 500, "text/plain")
            data = resp.body.encode()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for key, value in resp.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            self._serve("POST")

    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


def main(app: WebApp) -> None:
    """`python sandboxes/web/<app>.py --port 8000`: browse an app by hand on 127.0.0.1."""
    parser = argparse.ArgumentParser(description=f"Serve the '{app.name}' web app on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    port = parser.parse_args().port
    server = make_server(app, "127.0.0.1", port)
    print(f"{app.title}: http://127.0.0.1:{port}/")
    server.serve_forever()
