"""Rewards declared in a web task file and the life cycle of the user's own app: each check kind true and false on a
real Chromium page, all/any, load-time errors naming task and field, loopback-only HTTP, no reward for a claim,
start/ready/reset/teardown with no orphan even after kill -9 of the runner, and the worked Flask example end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs import webapp
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.web_rewards import (
    GonePage,
    HttpCheck,
    PlaywrightProbe,
    evaluate_check,
    http_request,
    is_loopback_url,
    parse_check,
)
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.tasks import Task, TaskFileError, load_tasks

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "sandboxes" / "webapps" / "user_orders" / "tasks.json"
web = pytest.mark.web


# -- helpers ------------------------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def pids_running(marker: str) -> list[int]:
    """Live processes whose command line mentions `marker` (a test's own script path): orphans cannot hide."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and alive(int(entry)):
                found.append(int(entry))
    return found


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def element_id(text: str, role: str, name: str) -> str:
    m = re.search(rf'{role} "{re.escape(name)}"[^\n]*?\[id=(\w+)\]', text)
    assert m, f'no {role} "{name}" in:\n{text}'
    return m.group(1)


def last_observation(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] or "" for m in reversed(messages) if m["role"] in ("tool", "user"))


def get_json(url: str) -> Any:
    status, body = http_request(url)
    assert status == 200, (url, status)
    return json.loads(body)


def write_task(tmp_path: Path, **fields: Any) -> Path:
    record = {"instance_id": "my.task-7", "kind": "web", "goal": "Do it.", "start_url": "http://127.0.0.1:1/", **fields}
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([record]))
    return path


# -- a page and an API to check ---------------------------------------------------------------------------------
PAGE = b"""<!doctype html><html><head><title>Orders</title></head><body>
<p>Welcome,   Ada</p><p id="status">Payment: pending</p><ul><li>a</li><li>b</li><li>c</li></ul>
<button onclick="document.getElementById('status').textContent = 'Payment: Paid, Shipped';
                 history.pushState({}, '', '/page?x=1&shipped=1')">Ship</button></body></html>"""
API = {"orders": [{"id": 1, "item": "Blue Mug", "qty": 2, "tags": ["gift", "express"]}], "total": 17.0, "open": True}


class Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def site() -> Iterator[tuple[str, str]]:
    """(origin of the page and API, origin of a recorder a redirect points at)."""
    recorder, recorder_url = _serve(Recorder)
    Recorder.hits = []

    class Site(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            routes: dict[str, tuple[int, str, bytes]] = {
                "/page": (200, "text/html", PAGE), "/api/orders": (200, "application/json", json.dumps(API).encode()),
                "/text": (200, "text/plain", b"status: shipped"), "/broken": (200, "application/json", b"{oops"),
                "/missing": (404, "text/plain", b"no")}
            path = self.path.split("?")[0]
            if path == "/moved":
                self.send_response(302)
                self.send_header("Location", f"{recorder_url}/followed")
                self.end_headers()
                return
            status, ctype, body = routes.get(path, (404, "text/plain", b""))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server, origin = _serve(Site)
    yield origin, recorder_url
    server.shutdown()
    recorder.shutdown()


# (check spec, passes on the final page after clicking "Ship")
CASES: list[tuple[dict[str, Any], bool]] = [
    ({"url": {"glob": "/page?x=1&shipped=1"}}, True), ({"url": {"glob": "/other*"}}, False),
    ({"url": {"glob": "http://127.0.0.1:*/page*"}}, True), ({"url": {"regex": r"shipped=1$"}}, True),
    ({"url": {"regex": r"^https://"}}, False),
    ({"text": {"contains": "Welcome, Ada"}}, True), ({"text": {"contains": "welcome, ada"}}, False),
    ({"text": {"contains": "welcome, ada", "ignore_case": True}}, True),
    ({"text": {"contains": "Shipped", "selector": "#status"}}, True),
    ({"text": {"contains": "Welcome", "selector": "#status"}}, False),
    ({"text": {"contains": "pending"}}, False),  # the start page said it; the final page does not
    ({"text": {"matches": r"Payment: \w+, Shipped"}}, True), ({"text": {"matches": r"^Refunded"}}, False),
    ({"text": {"contains": "a", "selector": "#no-such-element"}}, False),
    ({"js": "() => document.querySelectorAll('li').length === 3"}, True),
    ({"js": "() => document.querySelectorAll('li').length === 4"}, False),
    ({"js": "document.title === 'Orders'"}, True), ({"js": "() => 'yes'"}, False),  # truthy is not true
    ({"js": "() => { throw new Error('bad predicate') }"}, False),
    ({"http": {"url": "/api/orders", "json_path": "orders.0.item", "equals": "Blue Mug"}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders.0.qty", "equals": 3}}, False),
    ({"http": {"url": "/api/orders", "json_path": "open", "equals": 1}}, False),  # JSON true is not 1
    ({"http": {"url": "/api/orders", "json_path": "total", "equals": 17}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders.0.tags", "contains": "gift"}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders.0.item", "contains": "Lamp"}}, False),
    ({"http": {"url": "/api/orders", "json_path": "orders.1", "exists": False}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders.0.qty", "exists": True}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders", "length": 1}}, True),
    ({"http": {"url": "/api/orders", "json_path": "orders.5.item", "equals": "Blue Mug"}}, False),
    ({"http": {"url": "/text", "matches": r"status: (shipped|delivered)"}}, True),
    ({"http": {"url": "/broken", "json_path": "a", "exists": True}}, False),
    ({"http": {"url": "/missing", "status": 404}}, True), ({"http": {"url": "/missing"}}, False),
    ({"http": {"url": "/api/orders", "status": 201}}, False),
    ({"all": [{"url": {"regex": "shipped"}}, {"text": {"contains": "Shipped"}}]}, True),
    ({"all": [{"url": {"regex": "shipped"}}, {"text": {"contains": "Refunded"}}]}, False),
    ({"any": [{"text": {"contains": "Refunded"}}, {"js": "() => true"}]}, True),
    ({"any": [{"text": {"contains": "Refunded"}}, {"http": {"url": "/missing"}}]}, False),
    ({"any": [{"all": [{"js": "() => false"}, {"url": {"glob": "*"}}]},
              {"all": [{"http": {"url": "/api/orders", "json_path": "orders", "length": 1}},
                       {"text": {"contains": "Shipped"}}]}]}, True),
]


@web
def test_each_check_kind_true_and_false_on_the_final_page(site: tuple[str, str]) -> None:
    from agent_selfevolve.envs.web import BrowserEnvironment

    origin, _ = site
    task = Task(instance_id="checks", kind="web", start_url=f"{origin}/page?x=1", problem_statement="Ship it.",
                reward={"text": {"contains": "Shipped", "selector": "#status"}})
    env = BrowserEnvironment(task, "checks")
    try:
        obs = env.reset()
        assert not env.evaluate().resolved  # before the agent's action the declared check fails
        obs = env.step(ToolCall("click", {"id": element_id(obs.text, "button", "Ship")}))
        assert not obs.error, obs.text
        ev = env.evaluate()
        assert ev.resolved and ev.reward == 1.0 and ev.source == "checks", ev.details
        probe = PlaywrightProbe(env.pool, env.pool.get("checks"))  # what env.evaluate reads the page with
        results = [(spec, evaluate_check(parse_check(spec), probe, origin)) for spec, _ in CASES]
    finally:
        env.close()
    wrong = [(spec, details) for (spec, (ok, details)), (_, want) in zip(results, CASES, strict=True) if ok != want]
    assert not wrong, wrong
    failed_js = next(d for s, (_, d) in results if "throw" in json.dumps(s))
    assert "bad predicate" in failed_js["error"]


BAD: list[tuple[dict[str, Any], str]] = [
    ({"reward": {"txt": {"contains": "x"}}}, "reward.txt"),
    ({"reward": {"all": []}}, "reward.all"),
    ({"reward": {"all": [{"url": {"glob": "*"}}, {"text": {"matches": "(unclosed"}}]}}, "reward.all.1.text.matches"),
    ({"reward": {"any": [{"js": "() => true"}, {"http": {"url": "http://example.org/api"}}]}},
     "reward.any.1.http.url"),
    ({"reward": {"http": {"url": "http://127.0.0.1@example.org/api"}}}, "reward.http.url"),
    ({"reward": {"http": {"url": "/api", "equals": 1, "contains": "x"}}}, "reward.http.contains"),
    ({"reward": {"http": {"url": "/api", "status": "200"}}}, "reward.http.status"),
    ({"reward": {"http": {"url": "/api", "exists": True}}}, "reward.http.exists"),
    ({"reward": {"http": {"json_path": "a"}}}, "reward.http.url"),
    ({"reward": {"url": {"glob": "*", "regex": "x"}}}, "reward.url.regex"),
    ({"reward": {"text": {"contains": "x", "selectr": "#a"}}}, "reward.text.selectr"),
    ({"reward": {"js": ""}}, "reward.js"),
    ({"reward": {"answer": "x", "url": {"glob": "*"}}}, "reward"),
    ({"start_url": "https://example.org/", "reward": {"http": {"url": "/api"}}}, "reward.http.url"),
    ({"start_url": "/"}, "start_url"),
    ({"start_url": "/", "webapp": {"command": "python3 app.py", "ready": {"timeout_s": 0}}}, "webapp.ready.timeout_s"),
    ({"start_url": "/", "webapp": {"command": "python3 app.py", "reset": {"post": "http://10.0.0.1/r"}}},
     "webapp.reset.post"),
    ({"start_url": "/", "webapp": {"url": "http://127.0.0.1:5000"}}, "webapp.reset"),
    ({"start_url": "/", "webapp": {"reset": "none"}}, "webapp.url"),
    ({"start_url": "/", "webapp": {"command": "python3 app.py", "cwd": "no-such-folder"}}, "webapp.cwd"),
    ({"start_url": "/", "webapp": {"command": "python3 app.py", "restart": True}}, "webapp.restart"),
]


@pytest.mark.parametrize(("fields", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_specs_fail_at_load_naming_task_and_field(tmp_path: Path, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(TaskFileError) as err:
        load_tasks(write_task(tmp_path, **fields))
    assert err.value.field == field and f"'{field}'" in str(err.value)
    assert "my.task-7" in str(err.value) and "tasks.json" in str(err.value)


def test_good_specs_load_and_programmatic_tasks_are_checked_too(tmp_path: Path) -> None:
    (task,) = load_tasks(EXAMPLE)
    assert task.model_extra and task.model_extra["webapp"]["cwd"] == str(EXAMPLE.parent)  # resolved to the file
    legacy = load_tasks(write_task(tmp_path, reward={"answer": "42", "match": "exact"}))
    assert legacy[0].reward == {"answer": "42", "match": "exact"}
    pytest.importorskip("playwright")
    from agent_selfevolve.envs.web import BrowserEnvironment

    bad = Task(instance_id="py.task", kind="web", start_url="http://127.0.0.1:1/", problem_statement="x",
               reward={"all": [{"url": {"regex": "["}}]})
    with pytest.raises(ValueError, match=r"task py\.task: field 'reward\.all\.0\.url\.regex'"):
        BrowserEnvironment(bad, "never-opened")


def test_http_checks_refuse_other_hosts_and_never_follow_redirects(site: tuple[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    origin, _ = site
    assert all(is_loopback_url(u) for u in ("http://127.0.0.1:5/", "http://localhost/x", "http://[::1]:8/",
                                            "https://127.8.9.10/"))
    assert not any(is_loopback_url(u) for u in ("http://example.org/", "http://127.0.0.1.nip.io/", "ftp://127.0.0.1/",
                                                "http://127.0.0.1@example.org/", "http://10.0.0.1/", "/path"))
    connects: list[Any] = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a) or real(*a, **k))
    for url in ("http://example.invalid/api", "http://127.0.0.1@example.invalid/"):
        with pytest.raises(PermissionError, match="not a loopback URL"):
            http_request(url)
    # A path resolved against a remote base at run time is refused the same way, before any connection.
    no_page = GonePage("")
    ok, details = evaluate_check(HttpCheck(url="/api/orders"), no_page, "http://example.invalid")
    assert not ok and "PermissionError" in details["error"] and connects == []
    # A redirect is reported as its status, never followed (it could lead off the machine).
    ok, details = evaluate_check(parse_check({"http": {"url": "/moved", "status": 302}}), no_page, origin)
    assert ok and details["status"] == 302
    ok, _ = evaluate_check(parse_check({"http": {"url": "/moved"}}), no_page, origin)
    assert not ok and Recorder.hits == []


# -- the app's life cycle -----------------------------------------------------------------------------------------
COUNTER_APP = r'''
import json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "crash":
    sys.exit("boom: cannot open the database")
if mode == "slow":
    time.sleep(120)
ignore = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " if mode == "stubborn" else ""
helper = subprocess.Popen([sys.executable, "-c", ignore + "import time; time.sleep(600)", "counter-helper"])
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
state = {"count": 0, "resets": 0}
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply({**state, "pid": os.getpid(), "helper": helper.pid, "cwd": os.getcwd(),
                    "tmp": os.environ.get("APP_TMP")})
    def do_POST(self):
        if self.path == "/__reset":
            state["count"] = 0; state["resets"] += 1
        else:
            state["count"] += 1
        self.reply(state)
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


@pytest.fixture
def counter_app(tmp_path: Path) -> Iterator[Callable[..., webapp.WebAppSpec]]:
    script = tmp_path / "counter_app.py"
    script.write_text(COUNTER_APP)

    def spec(mode: str = "normal", **fields: Any) -> webapp.WebAppSpec:
        data = {"command": [sys.executable, str(script), "{port}", mode], "env": {"APP_TMP": "{tmp}"},
                "ready": {"url": "/health", "timeout_s": 20}, "stop_timeout_s": 1, **fields}
        return webapp.parse_webapp(data, tmp_path)

    yield spec
    webapp.shutdown()
    assert wait_until(lambda: not pids_running(str(script))), pids_running(str(script))


@pytest.mark.parametrize("mode", ["normal", "stubborn"])
def test_app_starts_gets_ready_and_teardown_ends_its_whole_session(counter_app: Any, tmp_path: Path,
                                                                    mode: str) -> None:
    lease = webapp.acquire(counter_app(mode), "life")
    state = get_json(f"{lease.base_url}/state")
    assert state["cwd"] == str(tmp_path) and Path(state["tmp"]).is_dir()
    pids = lease.pids()
    assert {state["pid"], state["helper"]} <= set(pids) and all(alive(p) for p in pids)
    webapp.release("life")  # "stubborn" ignores SIGTERM, app and helper: the guard's SIGKILL ends them
    assert not any(alive(p) for p in pids) and not Path(state["tmp"]).exists()
    assert webapp.leased("life") is None


def test_readiness_failures_are_clear_and_leave_nothing_behind(counter_app: Any, tmp_path: Path) -> None:
    script = str(tmp_path / "counter_app.py")
    with pytest.raises(webapp.AppStartError, match=r"(?s)exited with code 1 before .*/health.*boom: cannot open"):
        webapp.acquire(counter_app("crash"), "crash")
    with pytest.raises(webapp.AppStartError, match=r"did not answer 2xx within 1 s"):
        webapp.acquire(counter_app("slow", ready={"url": "/health", "timeout_s": 1}), "slow")
    assert pids_running(script) == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = webapp.parse_webapp({"url": f"http://127.0.0.1:{port}", "reset": "none", "ready": {"timeout_s": 0.5}})
    with pytest.raises(webapp.AppStartError, match="is your app running"):
        webapp.acquire(gone, "no-app")


def test_restart_per_attempt_isolates_concurrent_attempts(counter_app: Any) -> None:
    spec = counter_app()
    a, b = webapp.acquire(spec, "a"), webapp.acquire(spec, "b")
    assert a.base_url != b.base_url and not set(a.pids()) & set(b.pids())
    http_request(f"{a.base_url}/bump", "POST", {})
    assert get_json(f"{a.base_url}/state")["count"] == 1 and get_json(f"{b.base_url}/state")["count"] == 0
    webapp.release("a")
    c = webapp.acquire(spec, "c")
    assert get_json(f"{c.base_url}/state")["count"] == 0  # a fresh app: nothing of attempt a is left
    webapp.release("b")
    webapp.release("c")


def test_post_reset_shares_one_app_one_attempt_at_a_time(counter_app: Any) -> None:
    spec = counter_app(reset={"post": "/__reset"})
    a = webapp.acquire(spec, "first")
    http_request(f"{a.base_url}/bump", "POST", {})
    first = get_json(f"{a.base_url}/state")
    assert first["count"] == 1 and first["resets"] == 1
    got: list[webapp.Lease] = []
    waiter = threading.Thread(target=lambda: got.append(webapp.acquire(spec, "second")))
    waiter.start()
    waiter.join(1.0)
    assert not got  # the second attempt waits while the first one holds the app
    webapp.release("first")
    waiter.join(20)
    assert got and got[0].base_url == a.base_url
    second = get_json(f"{a.base_url}/state")
    assert second["pid"] == first["pid"] and second["count"] == 0 and second["resets"] == 2
    webapp.release("second")


RUNNER = r'''
import json, sys, time
from agent_selfevolve.envs import webapp
script, cwd = sys.argv[1], sys.argv[2]
base = {"command": [sys.executable, script, "{port}", "stubborn"], "ready": {"url": "/health", "timeout_s": 20},
        "stop_timeout_s": 1}
own = webapp.acquire(webapp.parse_webapp(base), "own")
shared = webapp.acquire(webapp.parse_webapp({**base, "reset": {"post": "/__reset"}}), "shared")
apps = [app for app, _ in webapp._shared.values()]
print(json.dumps(own.pids() + apps[0].pids()), flush=True)
time.sleep(600)
'''


def test_kill_9_of_the_runner_leaves_no_app_process(counter_app: Any, tmp_path: Path) -> None:
    script = str(tmp_path / "counter_app.py")
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, script, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    try:
        line = runner.stdout.readline() if runner.stdout else ""
        pids = json.loads(line)
        assert len(pids) >= 6 and all(alive(p) for p in pids)  # 2 x (guard, app, helper)
        assert set(pids_running(script)) - {runner.pid} <= set(pids)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    # No teardown code of the runner ran: the guards saw it die and ended their sessions (SIGTERM ignored: SIGKILL).
    assert wait_until(lambda: not any(alive(p) for p in pids)), [p for p in pids if alive(p)]
    assert pids_running(script) == []


# -- the worked example, end to end ---------------------------------------------------------------------------------
def order_responder(quantity: str, done: threading.Event | None = None) -> Callable[[list[dict[str, Any]]], Any]:
    """FAKE model: new order -> name, product, quantity -> place -> stop."""
    def respond(messages: list[dict[str, Any]]) -> dict[str, Any]:
        obs = last_observation(messages)
        title = re.search(r"Title: (.*?) - Corner Orders", obs)
        page = title.group(1) if title else ""
        if page == "Welcome":
            return tool_call("click", {"id": element_id(obs, "link", "New order")})
        if page == "New order":  # one form field per step, in order (the first action opened the form)
            acted = sum(m["role"] == "assistant" for m in messages)
            name, role, label, extra = [("fill", "textbox", "Customer name", {"text": "Ada Lovelace"}),
                                        ("select_option", "combobox", "Product", {"value": "Blue Mug"}),
                                        ("fill", "spinbutton", "Quantity", {"text": quantity}),
                                        ("click", "button", "Place order", {})][acted - 1]
            return tool_call(name, {"id": element_id(obs, role, label), **extra})
        if done is not None:
            done.set()
        return tool_call("stop", {"answer": f"Order placed: {quantity} Blue Mug for Ada Lovelace."})
    return respond


@web
def test_worked_example_end_to_end_reward_from_the_apps_database_not_the_claim() -> None:
    pytest.importorskip("flask")
    (task,) = load_tasks(EXAMPLE)
    placed = threading.Event()
    seen_pids: dict[str, list[int]] = {}

    def liar(messages: list[dict[str, Any]]) -> dict[str, Any]:
        lease = webapp.leased("liar")
        seen_pids["liar"] = lease.pids() if lease else []
        placed.wait(60)  # the honest attempt's order exists by now, in its own app's database
        return tool_call("stop", {"answer": "Order #1 placed: 2 Blue Mug for Ada Lovelace. It is in the database."})

    def honest(messages: list[dict[str, Any]]) -> dict[str, Any]:
        lease = webapp.leased("honest")
        seen_pids.setdefault("honest", lease.pids() if lease else [])
        return order_responder("2", placed)(messages)

    with ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(run_attempt, task, ScriptedFakeModel(script), AttemptSpec(task.instance_id,
                                                                                          attempt_id=name))
                for name, script in (("honest", honest), ("liar", liar))}
        good, lie = runs["honest"].result(), runs["liar"].result()
    assert good.status == "submitted" and good.resolved and good.reward == 1.0, good.evaluation
    assert good.evaluation and good.evaluation["source"] == "checks"
    assert [s["action"]["name"] for s in good.steps] == ["click", "fill", "select_option", "fill", "click", "stop"]
    assert lie.status == "submitted" and not lie.resolved and lie.reward == 0.0
    assert lie.outcome["answer"].startswith("Order #1 placed")  # the claim is there; it is worth nothing
    assert all(not c["ok"] for c in lie.evaluation["details"]["checks"])  # its own app saw no order
    assert seen_pids["honest"] and seen_pids["liar"] and not set(seen_pids["honest"]) & set(seen_pids["liar"])
    # The wrong quantity reaches an "Order #1 placed" page: only the app's database tells it apart.
    wrong = run_attempt(task, ScriptedFakeModel(order_responder("1")), AttemptSpec(task.instance_id,
                                                                                   attempt_id="wrong"))
    assert wrong.status == "submitted" and not wrong.resolved and wrong.reward == 0.0
    checks = {(c["kind"], c.get("json_path")): c for c in wrong.evaluation["details"]["checks"]}
    assert checks[("text", None)]["ok"] and checks[("http", "orders.0.product")]["ok"]
    assert not checks[("http", "orders.0.quantity")]["ok"] and checks[("http", "orders.0.quantity")]["got"] == 1
    # Each attempt's app stopped with it.
    assert all(webapp.leased(n) is None for n in ("honest", "liar", "wrong"))
    assert not any(alive(p) for pids in seen_pids.values() for p in pids)
