"""The life cycle of the user's own web app, declared in the task file: start, readiness, reset, teardown.

A web task's `webapp` object:

    {"command": "python3 app.py --port {port} --db {tmp}/orders.sqlite", "cwd": ".",
     "ready": {"url": "/health", "timeout_s": 30}, "reset": "restart"}

`{port}` is a free port (or the fixed `port`), `{tmp}` a fresh folder removed at teardown; `PORT` is exported too.
`url` (default `http://127.0.0.1:{port}`) is where the app answers; `cwd` is relative to the task file.

- `reset: "restart"` (the default with a command): every attempt starts its own app, on its own port unless `port`
  is fixed (then attempts take turns), so concurrent attempts never share state; it stops when the attempt closes.
- `reset: {"post": "/__reset"}`: one app per worker process (or the app already running, without a command),
  shared one attempt at a time: an attempt holds a file lock on the app's URL from its reset POST to its end.
- `reset: "none"`: a read-only app, shared freely.

Each app runs under `app_guard.py` in a session of its own: teardown signals the whole session, and the guard does
the same by itself when the runner dies, kill -9 included, so no app process outlives the runner.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from agent_selfevolve.envs.app_guard import session_pids
from agent_selfevolve.envs.base import EnvironmentFailure
from agent_selfevolve.envs.web_rewards import SpecError, check_local_url, http_request, is_loopback_url, join_url

GUARD = Path(__file__).with_name("app_guard.py")
_FIELDS = ("command", "cwd", "url", "port", "env", "ready", "reset", "stop_timeout_s", "lock_timeout_s")


class AppStartError(EnvironmentFailure):
    """The app did not start, did not get ready, or could not be reset: the attempt ends as env_error."""


@dataclass(frozen=True)
class WebAppSpec:
    command: tuple[str, ...] = ()
    cwd: str = ""
    url: str = "http://127.0.0.1:{port}"
    port: int = 0
    env: tuple[tuple[str, str], ...] = ()
    ready_url: str = "/"
    ready_timeout_s: float = 30.0
    reset: str = "restart"
    """'restart', 'post' (to `reset_url`) or 'none'."""
    reset_url: str = ""
    stop_timeout_s: float = 5.0
    lock_timeout_s: float = 3600.0


def _seconds(data: dict[str, Any], key: str, path: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SpecError(f"{path}.{key}", "must be a number of seconds > 0")
    return float(value)


def parse_webapp(data: Any, base_dir: Path | None = None, path: str = "webapp") -> WebAppSpec:
    """The spec from its task-file form; `cwd` is made absolute against `base_dir` (the task file's folder)."""
    if not isinstance(data, dict):
        raise SpecError(path, "expected an object (command, ready, reset, ...)")
    for key in data:
        if key not in _FIELDS:
            raise SpecError(f"{path}.{key}", f"unknown field (expected one of {', '.join(_FIELDS)})")
    raw = data.get("command")
    command = shlex.split(raw) if isinstance(raw, str) else raw if raw is not None else []
    if not isinstance(command, list) or (raw is not None and not command) or \
            not all(isinstance(a, str) for a in command):
        raise SpecError(f"{path}.command", "must be a non-empty command line or list of arguments")
    cwd_raw = data.get("cwd", ".")
    if not isinstance(cwd_raw, str):
        raise SpecError(f"{path}.cwd", "must be a folder path")
    cwd = Path(cwd_raw) if Path(cwd_raw).is_absolute() else (base_dir or Path.cwd()) / cwd_raw
    if command and not cwd.is_dir():
        raise SpecError(f"{path}.cwd", f"no such folder: {cwd}")
    port = data.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SpecError(f"{path}.port", "must be a port number (0: a free port at each start)")
    url = data.get("url", WebAppSpec.url)
    if not isinstance(url, str) or not is_loopback_url(url.replace("{port}", "1")):
        raise SpecError(f"{path}.url", "must be an http URL on 127.0.0.1, ::1 or localhost")
    if "{port}" in url and not port and not command:
        raise SpecError(f"{path}.url", "without a 'command', give the URL your app runs on (or a fixed 'port')")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError(f"{path}.env", "must map names to string values")
    ready = data.get("ready", {})
    if not isinstance(ready, dict) or set(ready) - {"url", "timeout_s"}:
        raise SpecError(f"{path}.ready", "must be an object with 'url' and 'timeout_s'")
    ready_url = ready.get("url", "/")
    if not isinstance(ready_url, str):
        raise SpecError(f"{path}.ready.url", "must be a path or loopback URL")
    check_local_url(ready_url, f"{path}.ready.url")
    reset, reset_url = data.get("reset", "restart" if command else None), ""
    if isinstance(reset, dict) and set(reset) == {"post"} and isinstance(reset["post"], str):
        check_local_url(reset["post"], f"{path}.reset.post")
        reset, reset_url = "post", reset["post"]
    elif reset not in ("restart", "none"):
        raise SpecError(f"{path}.reset", "must be \"restart\", {\"post\": \"/reset-url\"} or \"none\""
                        + ("" if command else " (required without a 'command')"))
    if reset == "restart" and not command:
        raise SpecError(f"{path}.reset", "\"restart\" needs a 'command' to start the app with")
    return WebAppSpec(command=tuple(command), cwd=str(cwd.resolve()), url=url.rstrip("/"), port=port,
                      env=tuple(sorted(env.items())), ready_url=ready_url,
                      ready_timeout_s=_seconds(ready, "timeout_s", f"{path}.ready", 30.0), reset=reset,
                      reset_url=reset_url, stop_timeout_s=_seconds(data, "stop_timeout_s", path, 5.0),
                      lock_timeout_s=_seconds(data, "lock_timeout_s", path, 3600.0))


class AppProcess:
    """One start of the app under its guard, in a new session (so its whole process tree can be found)."""

    def __init__(self, command: list[str], cwd: str, env: dict[str, str], workdir: Path, grace_s: float):
        self.command, self.workdir, self.grace_s = command, workdir, grace_s
        self.owner = os.getpid()
        self.log_path = workdir / "app.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(GUARD), str(os.getpid()), str(grace_s), "--", *command], cwd=cwd or None,
                env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The guard and every live process of its session (the app and what it spawned)."""
        return sorted({self.proc.pid, *session_pids(self.proc.pid)}) if self.alive() else []

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")
        return ""

    def stop(self) -> None:
        """SIGTERM to the guard (it ends the session, SIGKILL after the grace); SIGKILL the lot if it hangs."""
        if os.getpid() != self.owner:
            return  # a forked copy: the app belongs to the parent
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace_s + 5)
            except subprocess.TimeoutExpired:
                for pid in session_pids(self.proc.pid):  # the guard is not reaped yet: its session id is still ours
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait()
        stdin: IO[bytes] | None = self.proc.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, spec: WebAppSpec, app: AppProcess | None) -> None:
    """Poll the readiness URL until it answers 2xx; fail early when the app exits, with its output."""
    url = join_url(base_url, spec.ready_url)
    deadline, last = time.monotonic() + spec.ready_timeout_s, "no answer"
    while True:
        if app is not None and not app.alive():
            raise AppStartError(f"the app ({shlex.join(app.command)}) exited with code {app.proc.returncode} before "
                                f"{url} answered; its output ends with:\n{app.log_tail()}")
        try:
            status, _ = http_request(url, timeout_s=2.0)
            if 200 <= status < 300:
                return
            last = f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            hint = f"; its output ends with:\n{app.log_tail()}" if app else \
                " (the task has no 'command': is your app running?)"
            raise AppStartError(f"{url} did not answer 2xx within {spec.ready_timeout_s:g} s (last: {last}){hint}")
        time.sleep(0.1)


def launch(spec: WebAppSpec) -> tuple[AppProcess | None, str]:
    """Start the app (when the spec has a command) and wait until it is ready: (process, base URL)."""
    if not spec.command:
        base = spec.url.replace("{port}", str(spec.port))
        wait_ready(base, spec, None)
        return None, base
    port = spec.port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ase-webapp-"))

    def fill(text: str) -> str:
        return text.replace("{port}", str(port)).replace("{tmp}", str(workdir))

    base = fill(spec.url)
    env = {**os.environ, "PORT": str(port), **{k: fill(v) for k, v in spec.env}}
    app = AppProcess([fill(a) for a in spec.command], spec.cwd, env, workdir, spec.stop_timeout_s)
    try:
        wait_ready(base, spec, app)
    except BaseException:
        app.stop()
        raise
    return app, base


class FileLock:
    """An exclusive flock on a file named after `key`, waited for with a timeout (threads and processes alike)."""

    def __init__(self, key: str):
        from agent_selfevolve.envs.worktree import cache_root

        self.key = key
        self.path = cache_root() / "webapp-locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.lock"
        self._fh: IO[str] | None = None

    def acquire(self, timeout_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a")  # noqa: SIM115 (held until release)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fh = fh
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.close()
                    raise AppStartError(f"waited {timeout_s:g} s for another attempt on {self.key} to end") from None
                time.sleep(0.05)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass
class Lease:
    """One attempt's use of the app: where it answers, and what to undo at the end."""

    name: str
    base_url: str
    app: AppProcess | None = None
    lock: FileLock | None = field(default=None, repr=False)

    def pids(self) -> list[int]:
        return self.app.pids() if self.app is not None else []


_leases: dict[str, Lease] = {}
_shared: dict[WebAppSpec, tuple[AppProcess | None, str]] = {}
_registry_lock = threading.Lock()
_shared_lock = threading.Lock()


def _shared_app(spec: WebAppSpec) -> tuple[AppProcess | None, str]:
    """This process's instance of a shared app, (re)started when missing or dead; probed ready every time."""
    with _shared_lock:
        app, base = _shared.get(spec, (None, ""))
        if not base or (app is not None and not app.alive()):
            if app is not None:
                app.stop()
            _shared.pop(spec, None)
            app, base = launch(spec)
            _shared[spec] = (app, base)
        else:
            wait_ready(base, spec, app)
        return app, base


def acquire(spec: WebAppSpec, name: str) -> Lease:
    """The app ready and reset for attempt `name` (an earlier lease of that name is released first)."""
    release(name)
    if spec.reset == "restart":
        lock = FileLock(spec.url.replace("{port}", str(spec.port))) if spec.port else None
        if lock is not None:
            lock.acquire(spec.lock_timeout_s)
        try:
            app, base = launch(spec)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        lease = Lease(name, base, app, lock)
    else:
        _, base = _shared_app(spec)
        lock = FileLock(base) if spec.reset == "post" else None
        if lock is not None:
            lock.acquire(spec.lock_timeout_s)
            try:
                url = join_url(base, spec.reset_url)
                status, body = http_request(url, "POST", {"attempt": name})
                if not 200 <= status < 300:
                    raise AppStartError(f"the reset hook POST {url} answered HTTP {status}: {body[:300]!r}")
            except BaseException as exc:
                lock.release()
                if isinstance(exc, OSError | http.client.HTTPException):
                    raise AppStartError(f"the reset hook POST {base}{spec.reset_url} failed: {exc}") from exc
                raise
        lease = Lease(name, base, None, lock)
    with _registry_lock:
        _leases[name] = lease
    return lease


def leased(name: str) -> Lease | None:
    return _leases.get(name)


def release(name: str) -> None:
    """End attempt `name`'s use of the app: stop its own instance, let the next attempt in."""
    with _registry_lock:
        lease = _leases.pop(name, None)
    if lease is not None:
        try:
            if lease.app is not None:
                lease.app.stop()
        finally:
            if lease.lock is not None:
                lease.lock.release()


def shutdown() -> None:
    """Stop every app this process started (leases and shared instances)."""
    for name in list(_leases):
        with contextlib.suppress(Exception):
            release(name)
    with _shared_lock:
        for app, _ in _shared.values():
            if app is not None:
                with contextlib.suppress(Exception):
                    app.stop()
        _shared.clear()


def _forget_after_fork() -> None:
    """A forked worker starts its own apps; the parent's stay the parent's (their locks too: only closed here)."""
    for lease in _leases.values():
        if lease.lock is not None and lease.lock._fh is not None:
            with contextlib.suppress(OSError):
                lease.lock._fh.close()
    _leases.clear()
    _shared.clear()


atexit.register(shutdown)
os.register_at_fork(after_in_child=_forget_after_fork)
