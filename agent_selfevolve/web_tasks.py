"""Web tasks: MiniWoB++ pages and our bundled apps, served locally, and a success-rate report.

Ports are only known at run time, so tasks name pages with schemes the environment resolves:
`miniwob://click-button` (a MiniWoB++ task page) and `app://shop/cart` (a bundled app under `sandboxes/web/`).
Each server is a small threaded stdlib server on 127.0.0.1 with a random port, started once per process on
first use; every bundled app gets its own port, hence its own origin, so one app's task cannot reach another.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from agent_selfevolve.envs.web_rewards import (
    Check,
    HttpCheck,
    SpecError,
    is_loopback_url,
    iter_checks,
    join_url,
    parse_reward,
)
from agent_selfevolve.envs.webapp import WebAppSpec, leased, parse_webapp
from agent_selfevolve.infra import data_dir
from agent_selfevolve.tasks import Task, load_tasks

MINIWOB = "miniwob://"
APP = "app://"
_servers: dict[str, ThreadingHTTPServer] = {}
_apps: dict[str, Any] = {}
_lock = threading.Lock()
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local servers: never via a proxy


def miniwob_html_dir() -> Path:
    """The `html/` folder of the installed `miniwob` package, found without importing it (no gymnasium)."""
    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("MiniWoB++ tasks need `pip install miniwob==1.1.0`")
    return Path(next(iter(spec.submodule_search_locations))) / "html"


def miniwob_task_names() -> list[str]:
    return sorted(p.stem for p in (miniwob_html_dir() / "miniwob").glob("*.html"))


def apps_dir() -> Path:
    """The bundled apps: `$AGENT_SELFEVOLVE_WEB_APPS`, else `sandboxes/web/` at the repository root."""
    env = os.environ.get("AGENT_SELFEVOLVE_WEB_APPS")
    return Path(env) if env else data_dir("sandboxes") / "web"


def app_names() -> list[str]:
    return sorted(p.stem for p in apps_dir().glob("*.py") if not p.stem.startswith(("ase_", "_")))


class _QuietStatic(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def _serve(key: str, factory: Any) -> str:
    with _lock:
        server = _servers.get(key)
        if server is None:
            server = factory()
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, name=f"web-{key}", daemon=True).start()
            _servers[key] = server
    return f"http://127.0.0.1:{server.server_address[1]}"


def miniwob_origin() -> str:
    """The MiniWoB++ static server's origin (started on first call)."""
    handler = functools.partial(_QuietStatic, directory=str(miniwob_html_dir()))
    return _serve("miniwob", lambda: ThreadingHTTPServer(("127.0.0.1", 0), handler))


def load_app(name: str) -> Any:
    """The `APP` object of `sandboxes/web/<name>.py`, imported once per process."""
    with _lock:
        if name not in _apps:
            path = apps_dir() / f"{name}.py"
            if not path.exists() or name.startswith(("ase_", "_")):
                raise KeyError(f"no bundled web app '{name}' in {apps_dir()} (have: {', '.join(app_names())})")
            if str(apps_dir()) not in sys.path:
                sys.path.insert(0, str(apps_dir()))  # so the apps can `import ase_webkit`
            spec = importlib.util.spec_from_file_location(f"ase_webapp_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _apps[name] = module.APP
        return _apps[name]


def app_origin(name: str) -> str:
    app = load_app(name)
    from ase_webkit import make_server  # importable once load_app put the apps folder on sys.path

    return _serve(f"app:{name}", lambda: make_server(app, "127.0.0.1", 0))


def resolve_url(url: str) -> str:
    """`miniwob://name` and `app://name/path` -> http://127.0.0.1:<port>/...; other URLs unchanged."""
    if url.startswith(MINIWOB):
        rest = url[len(MINIWOB):].strip("/")
        return f"{miniwob_origin()}/miniwob/{rest}.html" if rest else f"{miniwob_origin()}/miniwob/"
    if url.startswith(APP):
        name, _, path = url[len(APP):].partition("/")
        return f"{app_origin(name)}/{path}"
    return url


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def resolve_origin(spec: str) -> str:
    """An allowed-origin entry (`app://shop`, `miniwob://`, `https://example.org`) -> its http origin."""
    if spec.startswith((MINIWOB, APP)):
        return origin_of(resolve_url(spec if spec.startswith(MINIWOB) else spec.rstrip("/") + "/"))
    return origin_of(spec) or spec.lower().rstrip("/")


def app_call(app: str, path: str, params: dict[str, Any], body: dict[str, Any] | None = None,
             timeout_s: float = 10) -> dict[str, Any]:
    """Call an app's internal endpoint directly (not through the agent's browser)."""
    url = f"{app_origin(app)}{path}?{urlencode(params)}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with _direct.open(req, timeout=timeout_s) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code}", **json.loads(exc.read() or b"{}")}


def check_web_task(task: Task, base_dir: Path | None = None) -> tuple[Check | None, WebAppSpec | None]:
    """A web task's reward checks and app life cycle, parsed at load time (SpecError naming the field). The app's
    `cwd` becomes absolute against `base_dir`, the task file's folder, and is written back into the task."""
    from agent_selfevolve.browsergym_tasks import is_browsergym_task, parse_browsergym

    if is_browsergym_task(task):  # BrowserGym's own env runs and grades it
        parse_browsergym(task)
        return None, None
    check = parse_reward(task.reward)
    raw = (task.model_extra or {}).get("webapp")
    app = parse_webapp(raw, base_dir) if raw is not None else None
    if app is not None and task.model_extra is not None:
        task.model_extra["webapp"] = {**raw, "cwd": app.cwd}
    start = task.start_url or ""
    if "://" not in start and (app is None or not start.startswith("/")):
        raise SpecError("start_url", "a path ('/...') needs a 'webapp' to say where the app runs; else give a URL")
    local = app is not None or start.startswith((APP, MINIWOB)) or is_loopback_url(start)
    for path, leaf in iter_checks(check) if check is not None else ():
        if isinstance(leaf, HttpCheck) and "://" not in leaf.url and not local:
            raise SpecError(f"{path}.url", f"a path resolves against the start URL {start}, which is not on this "
                                           "machine: give a 'webapp' or a loopback URL")
    return check, app


def web_task_urls(task: Task, base: str = "") -> tuple[str, frozenset[str]]:
    """The start URL and the allowed origins; with the user's app running at `base`, paths resolve there and its
    origin is always allowed."""
    start_spec = task.start_url or ""
    start = join_url(base, start_spec) if base and "://" not in start_spec else resolve_url(start_spec)
    allowed = {resolve_origin(o) for o in (task.allowed_origins or ([] if base else [start_spec]))}
    return start, frozenset(allowed | ({origin_of(base)} if base else set()))


def reward_base_url(task: Task, name: str) -> str:
    """Where the reward's HTTP paths resolve: attempt `name`'s app, else the start URL's origin."""
    lease = leased(name)
    return lease.base_url if lease is not None else origin_of(resolve_url(task.start_url or ""))


def miniwob_tasks(names: Iterable[str] | None = None, seeds: Iterable[int] = (0,)) -> list[Task]:
    """One Task per (MiniWoB++ page, seed). The instruction depends on the seed, so the first observation
    carries it ("Goal: ..."); `problem_statement` says where to look."""
    available = set(miniwob_task_names())
    chosen = list(names) if names is not None else sorted(available)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise KeyError(f"unknown MiniWoB++ tasks: {', '.join(unknown)}")
    return [Task(instance_id=f"miniwob.{name}.{seed}", kind="web", app="miniwob", start_url=f"{MINIWOB}{name}",
                 allowed_origins=[MINIWOB], reward={"type": "miniwob", "seed": seed},
                 problem_statement=f"Complete the MiniWoB++ task '{name}' in the browser. The exact instruction "
                                   "is shown on the page and repeated as 'Goal:' in the first observation.")
            for name in chosen for seed in seeds]


def bundled_tasks_file() -> Path:
    return apps_dir() / "tasks.jsonl"


def bundled_web_tasks(ids: Iterable[str] | None = None, pattern: str | None = None) -> list[Task]:
    """The tasks of our bundled apps (`sandboxes/web/tasks.jsonl`)."""
    return load_tasks(bundled_tasks_file(), ids=ids, pattern=pattern)


def task_family(task_id: str) -> str:
    """`miniwob.click-button.3` -> `miniwob.click-button`: seeds of one page count as one task."""
    head, _, tail = task_id.rpartition(".")
    return head if head.startswith("miniwob.") and tail.isdigit() else task_id


def success_report(trajectories: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Success rate per task (MiniWoB++ seeds pooled) from Trajectory objects or their dicts."""
    report: dict[str, dict[str, Any]] = {}
    for traj in trajectories:
        data = traj if isinstance(traj, dict) else traj.to_dict()
        ev = data.get("evaluation") or {}
        row = report.setdefault(task_family(data["task_id"]), {"attempts": 0, "resolved": 0, "reward": 0.0,
                                                                "errors": 0})
        row["attempts"] += 1
        row["resolved"] += bool(ev.get("resolved"))
        row["reward"] += float(ev.get("reward", 0.0))
        row["errors"] += data.get("status") in ("env_error", "error")
    for row in report.values():
        row["success_rate"] = row["resolved"] / row["attempts"]
        row["mean_reward"] = row.pop("reward") / row["attempts"]
    return dict(sorted(report.items()))


def format_success_report(report: dict[str, dict[str, Any]]) -> str:
    """A plain-text table, with the overall rate (mean of per-task rates) on the last line."""
    width = max([len(k) for k in report] + [4])
    lines = [f"{'task':<{width}}  attempts  resolved  rate    errors"]
    lines += [f"{k:<{width}}  {r['attempts']:>8}  {r['resolved']:>8}  {r['success_rate']:>5.1%}  {r['errors']:>6}"
              for k, r in report.items()]
    if report:
        overall = sum(r["success_rate"] for r in report.values()) / len(report)
        lines.append(f"{'overall (mean of tasks)':<{width}}  {'':>8}  {'':>8}  {overall:>5.1%}")
    return "\n".join(lines)
