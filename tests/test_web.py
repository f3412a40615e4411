"""Browser environment with a real headless Chromium: MiniWoB++ and bundled app tasks to a verified reward,
bad actions as clear error observations, crash recovery, JSON-serialisable checkpoints."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.attempt import AttemptSpec, compiled_agent, run_attempt, sqlite_checkpointer
from agent_selfevolve.envs.base import Observation, ToolCall
from agent_selfevolve.envs.browser import truncate_tree
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.tasks import Task
from agent_selfevolve.web_tasks import (
    app_names,
    bundled_web_tasks,
    format_success_report,
    miniwob_tasks,
    success_report,
)

pytest.importorskip("playwright")
web = pytest.mark.web


def element_id(text: str, role: str, name: str) -> str:
    """The id of the first `role "name"` line of an observation."""
    m = re.search(rf'{role} "{re.escape(name)}"[^\n]*?\[id=([\w]+)\]', text)
    assert m, f'no {role} "{name}" in:\n{text}'
    return m.group(1)


def last_observation(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] or "" for m in reversed(messages) if m["role"] in ("tool", "user"))


@pytest.fixture
def env_factory() -> Iterator[Callable[..., Any]]:
    from agent_selfevolve.envs.web import BrowserEnvironment

    made: list[Any] = []

    def make(task: Task, name: str, **options: Any) -> Any:
        made.append(BrowserEnvironment(task, name, **options))
        return made[-1]

    yield make
    for env in made:
        env.close()


@web
def test_miniwob_click_link_through_run_attempt(tmp_path: Path) -> None:
    task = miniwob_tasks(["click-link"], seeds=[7])[0]

    def responder(messages: list[dict[str, Any]]) -> dict[str, Any]:
        goal = re.search(r'Goal: Click on the link "([^"]+)"', messages[1]["content"])
        assert goal, messages[1]["content"]
        return tool_call("click", {"id": element_id(last_observation(messages), "link", goal.group(1))})

    checkpointer = sqlite_checkpointer(tmp_path / "ck.sqlite")
    spec = AttemptSpec(task.instance_id, attempt_id="wob1")
    traj = run_attempt(task, ScriptedFakeModel(responder), spec, checkpointer=checkpointer)
    assert traj.status == "submitted", traj.exit_message
    assert traj.evaluation and traj.evaluation["source"] == "page"
    assert traj.resolved and traj.reward == 1.0 and traj.evaluation["details"]["raw_reward"] == 1
    assert traj.outcome["reward_info"]["done"] is True
    state = compiled_agent(checkpointer).get_state({"configurable": {"thread_id": "wob1"}}).values
    json.dumps(state)  # plain JSON: no page or browser object leaked into graph state
    json.dumps(traj.to_dict())
    # A wrong link ends the episode too, with the page's negative reward: not resolved, reward 0.
    def wrong(messages: list[dict[str, Any]]) -> dict[str, Any]:
        goal = re.search(r'Goal: Click on the link "([^"]+)"', messages[1]["content"])
        links = re.findall(r'link "([^"]+)" \[id=(\w+)\]', last_observation(messages))
        return tool_call("click", {"id": next(i for name, i in links if goal and name != goal.group(1))})

    miss = run_attempt(task, ScriptedFakeModel(wrong), AttemptSpec(task.instance_id, attempt_id="wob2"))
    assert miss.status == "submitted" and not miss.resolved and miss.reward == 0.0
    assert miss.evaluation and miss.evaluation["details"]["raw_reward"] == -1
    report = success_report([traj, miss.to_dict()])
    assert report["miniwob.click-link"]["success_rate"] == 0.5 and report["miniwob.click-link"]["attempts"] == 2
    assert "miniwob.click-link" in format_success_report(report)


def shop_responder(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Reads the page title and the tree to find the next id: notebook link, add to cart, stop."""
    plan = {"Welcome": ("link", "Pocket Notebook"), "Pocket Notebook": ("button", "Add to cart")}
    obs = last_observation(messages)
    title = re.search(r"Title: (.*?) - Corner Shop", obs)
    if title and title.group(1) in plan:
        role, name = plan[title.group(1)]
        return tool_call("click", {"id": element_id(obs, role, name)})
    return tool_call("stop", {"answer": "The pocket notebook is in the cart."})


@web
def test_bundled_shop_task_through_run_attempt_and_claims_are_not_trusted(tmp_path: Path) -> None:
    task = bundled_web_tasks(ids=["web.shop.cheapest-notebook"])[0]
    checkpointer = sqlite_checkpointer(tmp_path / "ck.sqlite")
    traj = run_attempt(task, ScriptedFakeModel(shop_responder), AttemptSpec(task.instance_id, attempt_id="shop1"),
                       checkpointer=checkpointer)
    assert traj.status == "submitted" and [s["action"]["name"] for s in traj.steps] == ["click", "click", "stop"]
    assert traj.evaluation and traj.evaluation["source"] == "app" and traj.resolved
    assert traj.outcome["answer"].startswith("The pocket notebook")
    json.dumps(compiled_agent(checkpointer).get_state({"configurable": {"thread_id": "shop1"}}).values)
    # An agent that only claims success gets no reward: the app's own state decides.
    liar = run_attempt(task, ScriptedFakeModel([tool_call("stop", {"answer": "Done, it is in the cart!"})]),
                       AttemptSpec(task.instance_id, attempt_id="shop2"))
    assert liar.status == "submitted" and not liar.resolved and liar.evaluation["details"]["cart"] == {}


@web
def test_concurrent_attempts_from_many_threads_stay_isolated() -> None:
    """Attempts on worker threads share one browser; each has its own context and its own server-side cart."""
    task = bundled_web_tasks(ids=["web.shop.cheapest-notebook"])[0]
    with ThreadPoolExecutor(4) as pool:
        trajs = list(pool.map(lambda i: run_attempt(task, ScriptedFakeModel(shop_responder),
                                                    AttemptSpec(task.instance_id, attempt_id=f"par{i}")), range(4)))
    assert all(t.status == "submitted" and t.resolved for t in trajs), [t.evaluation for t in trajs]


SOLUTIONS: dict[str, list[tuple[str, str, str, str]]] = {
    # (action, role, name, value); the first step of a few makes a validation error on purpose
    "web.wizard.pro-yearly": [
        ("fill", "textbox", "Full name", "Grace Hopper"), ("fill", "textbox", "Email", "grace-at-navy"),
        ("fill", "textbox", "Password", "CobolRules1"), ("fill", "textbox", "Confirm password", "CobolRules1"),
        ("click", "button", "Next", ""), ("expect", "alert", "", "valid email"),
        ("fill", "textbox", "Email", "grace@navy.example"), ("fill", "textbox", "Password", "CobolRules1"),
        ("fill", "textbox", "Confirm password", "CobolRules1"), ("click", "button", "Next", ""),
        ("click", "radio", "Pro", ""), ("select_option", "combobox", "Billing period", "Yearly"),
        ("click", "checkbox", "I accept the terms of service", ""), ("click", "button", "Next", ""),
        ("click", "button", "Create account", "")],
    "web.settings.alice-paris": [
        ("fill", "textbox", "Username", "alice"), ("fill", "textbox", "Password", "nope"),
        ("click", "button", "Log in", ""), ("expect", "alert", "", "Wrong username"),
        ("fill", "textbox", "Username", "alice"), ("fill", "textbox", "Password", "wonderland"),
        ("click", "button", "Log in", ""), ("select_option", "combobox", "Timezone", "Europe/Paris"),
        ("click", "checkbox", "Email notifications", ""), ("click", "button", "Save settings", "")],
    "web.table.engineering-100k": [
        ("select_option", "combobox", "Department", "Engineering"), ("fill", "textbox", "Minimum salary", "100000"),
        ("click", "button", "Apply filters", ""), ("click", "button", "Export all shown", "")],
    "web.todo.groceries": [
        ("fill", "textbox", "New todo", "Buy milk"), ("click", "button", "Add", ""),
        ("fill", "textbox", "New todo", "Call the plumber"), ("press", "", "", "Enter"),
        ("click", "button", "Mark done: Water the plants", "")],
    "web.shop.express-mugs": [
        ("click", "link", "Blue Ceramic Mug", ""), ("fill", "spinbutton", "Quantity", "2"),
        ("click", "button", "Add to cart", ""), ("click", "link", "Proceed to checkout", ""),
        ("fill", "textbox", "Full name", "Ada Lovelace"), ("fill", "textbox", "Street address", "12 Analytical St"),
        ("click", "button", "Place order", ""), ("expect", "alert", "", "Please fill in: city"),
        ("fill", "textbox", "City", "London"), ("select_option", "combobox", "Shipping", "express"),
        ("click", "button", "Place order", "")],
}


@web
@pytest.mark.parametrize("task_id", sorted(SOLUTIONS))
def test_each_bundled_app_is_solvable_and_checked_server_side(task_id: str, env_factory: Any) -> None:
    task = bundled_web_tasks(ids=[task_id])[0]
    env = env_factory(task, f"solve-{task_id}")
    obs = env.reset()
    assert not obs.error and not env.evaluate().resolved
    for action, role, name, value in SOLUTIONS[task_id]:
        if action == "expect":
            assert re.search(rf"{role} \[id=\w+\]: .*{re.escape(value)}", obs.text), obs.text
            continue
        args: dict[str, Any] = {} if action == "press" else {"id": element_id(obs.text, role, name)}
        args.update({"fill": {"text": value}, "select_option": {"value": value}, "press": {"key": value}}.get(
            action, {}))
        obs = env.step(ToolCall(action, args))
        assert not obs.error, obs.text
    ev = env.evaluate()
    assert ev.resolved and ev.reward == 1.0 and ev.source == "app", ev.details


class _Site(BaseHTTPRequestHandler):
    """A page with a link off-site, an off-site image and a link to a page that never loads."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path.startswith("/hang"):
            time.sleep(8)
            return
        body = (b'<html><head><title>Start</title></head><body><h1>Start</h1><img src="http://blocked.example/p.png" '
                b'alt="tracker"><a href="http://blocked.example/">Elsewhere</a> <a href="/hang">Slow page</a> '
                b'<input aria-label="Notes"></body></html>')
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _timed(env: Any, call: ToolCall, limit_s: float) -> Observation:
    t0 = time.monotonic()
    obs = env.step(call)
    assert time.monotonic() - t0 < limit_s, f"{call} took {time.monotonic() - t0:.1f} s"
    return obs


@web
def test_bad_actions_give_clear_errors_within_a_timeout(site: str, env_factory: Any, tmp_path: Path) -> None:
    task = Task(instance_id="site", kind="web", start_url=f"{site}/", allowed_origins=[site],
                problem_statement="Explore.", reward={"answer": "start"})
    env = env_factory(task, "bad-actions", navigation_timeout_s=2, action_timeout_s=2, screenshot_dir=str(tmp_path))
    obs = env.reset()
    assert "Title: Start" in obs.text and obs.info["blocked_requests"] >= 1  # the off-site image never left
    assert Path(obs.info["screenshot"]).stat().st_size > 0
    obs = _timed(env, ToolCall("go_back", {}), 5)
    assert obs.error and "no previous page" in obs.text and "Title: Start" in obs.text
    obs = _timed(env, ToolCall("click", {"id": "e999"}), 5)
    assert obs.error and "No element with id e999" in obs.text
    obs = _timed(env, ToolCall("fill", {"id": "not an id", "text": "x"}), 5)
    assert obs.error and "is not an element id" in obs.text
    obs = _timed(env, ToolCall("goto", {"url": "https://example.org/"}), 5)
    assert obs.error and "outside this task's allowed origins" in obs.text and "Title: Start" in obs.text
    obs = _timed(env, ToolCall("click", {"id": element_id(obs.text, "link", "Elsewhere")}), 10)
    assert obs.error and "Navigation to http://blocked.example/ was blocked" in obs.text
    assert "Title: Start" in obs.text  # back on the page the agent came from
    obs = _timed(env, ToolCall("goto", {"url": "/hang"}), 10)
    assert obs.error and "did not finish loading within 2 s" in obs.text and "Title: Start" in obs.text
    obs = _timed(env, ToolCall("press", {"key": "NoSuchKey"}), 5)
    assert obs.error and "Unknown key" in obs.text
    obs = _timed(env, ToolCall("teleport", {}), 5)
    assert obs.error and "Unknown tool 'teleport'" in obs.text
    obs = _timed(env, ToolCall("fill", {"id": element_id(obs.text, "textbox", "Notes"), "text": "hello"}), 5)
    assert not obs.error and 'textbox "Notes"' in obs.text and "hello" in obs.text
    assert env.step(ToolCall("stop", {"answer": "Start"})).done
    assert env.evaluate().resolved and env.evaluate().source == "answer"
    assert env.proxy_evaluate().reward == 1.0


@web
def test_start_page_that_never_loads(env_factory: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # accepts connections, never answers
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = Task(instance_id="hang", kind="web", start_url=f"{origin}/", allowed_origins=[origin],
                problem_statement="Wait.")
    env = env_factory(task, "never-loads", navigation_timeout_s=1.5)
    t0 = time.monotonic()
    obs = env.reset()
    assert time.monotonic() - t0 < 8 and obs.error and "did not finish loading within 2 s" in obs.text
    assert env.step(ToolCall("stop", {"answer": ""})).done
    sock.close()


@web
def test_browser_crash_fails_the_attempt_with_a_reason_and_the_next_attempt_relaunches() -> None:
    from agent_selfevolve.envs.browser import shared_pool

    task = bundled_web_tasks(ids=["web.todo.cleanup"])[0]
    pool = shared_pool()

    def crash_then_click(messages: list[dict[str, Any]]) -> dict[str, Any]:
        assert pool._browser is not None
        pool.run(pool._browser.close(), 10)  # stands in for a Chromium crash
        return tool_call("click", {"id": "e1"})

    traj = run_attempt(task, ScriptedFakeModel(crash_then_click), AttemptSpec(task.instance_id, attempt_id="crash"))
    assert traj.status == "env_error" and "BrowserCrashed" in traj.steps[-1]["observation"]
    assert traj.evaluation is None
    restarts = pool.restarts
    ok = run_attempt(task, ScriptedFakeModel([tool_call("stop", {"answer": "nothing"})]),
                     AttemptSpec(task.instance_id, attempt_id="after-crash"))
    assert ok.status == "submitted" and pool.restarts == restarts + 1 and pool.connected


def test_truncation_keeps_structure_and_actionable_ids() -> None:
    tree = "\n".join(["- main [id=e1]:", "  - heading \"Shop\" [level=1] [id=e2]", "  - list [id=e3]:"]
                     + [f"    - listitem [id=i{i}]:\n      - link \"Item {i}\" [id=l{i}]:\n        - /url: /p?{i}\n"
                        f"      - text: {'long description ' * 12}" for i in range(40)]
                     + ["  - button \"Checkout\" [id=e9]"])
    out, truncated = truncate_tree(tree, 2500)
    assert truncated and len(out) <= 2500
    assert out.startswith("- main [id=e1]:") and 'button "Checkout" [id=e9]' in out
    assert "/url" not in out and "hidden)" in out or "…" in out
    assert 'link "Item 0" [id=l0]' in out  # text goes before links
    assert truncate_tree("- a [id=e1]", 100) == ("- a [id=e1]", False)
    tiny, _ = truncate_tree(tree, 300)
    assert len(tiny) <= 300 and tiny.startswith("- main")


def test_bundled_task_file_covers_every_app() -> None:
    tasks = bundled_web_tasks()
    apps = {t.app for t in tasks}
    assert set(app_names()) == apps and len(apps) >= 5
    assert all(sum(t.app == a for t in tasks) >= 2 for a in apps)
    assert all(t.kind == "web" and t.start_url and t.allowed_origins and t.reward.get("check") for t in tasks)
