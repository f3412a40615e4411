"""The browser environment: a task's web page in an isolated Chromium context, driven by ids from its ARIA tree.

The model sees the page's accessibility tree (Playwright's `aria_snapshot(mode="ai")`, whose refs stay valid
until the page changes) with `[id=...]` on every element it can act on, plus the URL, the focused element and
the last action's error. Rewards come from the page itself (MiniWoB++ globals), the bundled app's server-side
state or the task's declared checks (web_rewards; the user's own app runs per the task's `webapp`, webapp.py), never
from what the agent claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from agent_selfevolve.envs import webapp
from agent_selfevolve.envs.base import Evaluation, Observation, ToolCall
from agent_selfevolve.envs.browser import (
    MARK_CLICKABLES_JS,
    BrowserCrashed,
    BrowserPool,
    Session,
    origin_of,
    render_page,
    shared_pool,
)
from agent_selfevolve.envs.web_rewards import GonePage, PlaywrightProbe, SpecError, reward_evaluation
from agent_selfevolve.tasks import Task
from agent_selfevolve.web_tasks import app_call, check_web_task, resolve_url, reward_base_url, web_task_urls

WEB_SYSTEM_PROMPT = """You are an autonomous web agent operating a browser. Each observation shows the page as an \
accessibility tree; act on elements through their [id=...] with click, fill and select_option. Ids change when \
the page changes: always use ids from the latest observation. Work step by step and check each result. When the \
task is done, call `stop` with your answer (or a short summary)."""


def _fn(name: str, description: str, props: dict[str, Any] | None = None) -> dict[str, Any]:
    props = props or {}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}


_ID = {"id": {"type": "string", "description": "An element id from the latest observation, e.g. e12."}}
WEB_TOOLS = [
    _fn("click", "Click the element with this id.", _ID),
    _fn("fill", "Replace the text of an input or textarea.", {**_ID, "text": {"type": "string"}}),
    _fn("select_option", "Choose an option (by value or visible label) in a select box.",
        {**_ID, "value": {"type": "string"}}),
    _fn("press", "Press a key or chord on the focused element, e.g. Enter, Tab, Control+a.",
        {"key": {"type": "string"}}),
    _fn("scroll", "Scroll the page.", {"direction": {"type": "string", "enum": ["up", "down", "left", "right"]}}),
    _fn("goto", "Open a URL (only the task's allowed sites can be reached).", {"url": {"type": "string"}}),
    _fn("go_back", "Go back to the previous page."),
    _fn("send_msg_to_user", "Tell the user something (does not end the task).", {"text": {"type": "string"}}),
    _fn("stop", "Finish the task. `answer` is your final answer, or a short summary when none is asked for.",
        {"answer": {"type": "string"}}),
]
_ID_RE = re.compile(r"^\[?(?:id=|ref=)?((?:f\d+)?e\d+|c\d+)\]?$")
_WOB_JS = ("() => ({done: WOB_DONE_GLOBAL, raw_reward: WOB_RAW_REWARD_GLOBAL, env_reward: WOB_REWARD_GLOBAL, "
           "reason: WOB_REWARD_REASON})")


class ActionError(Exception):
    """A refused or failed action; the message goes to the model as an error observation."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class BrowserEnvironment:
    """One attempt at a web task. `name` keys its browser session, so a resumed attempt in the same process
    re-attaches to its page; in a new process it starts the task again."""

    def __init__(self, task: Task, name: str, pool: BrowserPool | None = None, *, char_budget: int = 6000,
                 action_timeout_s: float = 5.0, navigation_timeout_s: float = 15.0, screenshot_dir: str | None = None,
                 viewport: tuple[int, int] = (1000, 700), miniwob_max_time_s: float = 3600.0,
                 end_on_page_done: bool = True, executable_path: str | None = None, headless: bool = True):
        if task.kind != "web":
            raise ValueError(f"task {task.instance_id} is a {task.kind} task, not a web task")
        self.task, self.name = task, name
        try:
            self.checks, self.app_spec = check_web_task(task)
        except SpecError as exc:
            raise ValueError(f"task {task.instance_id}: {exc}") from None
        self.pool = pool or shared_pool(executable_path=executable_path, headless=headless)
        self.char_budget, self.viewport = char_budget, viewport
        self.action_timeout_s, self.navigation_timeout_s = action_timeout_s, navigation_timeout_s
        self.screenshot_dir = Path(screenshot_dir) if screenshot_dir else None
        self.miniwob_max_time_s, self.end_on_page_done = miniwob_max_time_s, end_on_page_done
        self.is_miniwob = task.app == "miniwob" or (task.start_url or "").startswith("miniwob://")
        self.is_app = not self.is_miniwob and (task.start_url or "").startswith("app://")
        self.app_session = re.sub(r"[^A-Za-z0-9_.-]", "_", name)  # cookie-safe key of the app's server state
        self.data: dict[str, Any] = {}
        self._opened = False

    @property
    def step_timeout_s(self) -> float:
        return self.action_timeout_s + 2 * self.navigation_timeout_s + 10

    def tool_specs(self) -> list[dict[str, Any]]:
        return WEB_TOOLS

    # -- lifecycle -------------------------------------------------------------------------------------------
    def reset(self) -> Observation:
        session = self.pool.get(self.name)
        if session is not None and not session.crashed:
            self.data, self._opened = session.data, True
            return self.pool.run(self._observe(session, note="(re-attached to the running attempt)"),
                                 self.step_timeout_s)
        base = webapp.acquire(self.app_spec, self.name).base_url if self.app_spec is not None else ""
        start, allowed = web_task_urls(self.task, base)
        cookies = []
        if self.is_app:
            assert self.task.app
            setup = dict((self.task.model_extra or {}).get("setup") or {})
            app_call(self.task.app, "/__reset", {"session": self.app_session}, setup)
            cookies = [{"name": "ase_session", "value": self.app_session, "url": origin_of(start)}]
        return self.pool.run(self._reset(allowed, start, cookies), self.step_timeout_s + self.pool.launch_timeout_s)

    async def _reset(self, allowed: frozenset[str], start: str, cookies: list[dict[str, Any]]) -> Observation:
        session = await self.pool.open(self.name, allowed, deny_paths=("/__",) if self.is_app else (),
                                       viewport=self.viewport, action_timeout_s=self.action_timeout_s,
                                       navigation_timeout_s=self.navigation_timeout_s, cookies=cookies)
        self.data, self._opened = session.data, True
        self.data.update(answer=None, stopped=False, ended=False, messages=[], steps=0, reward_info=None,
                         goal="", url=start)
        error = await self._navigate(session, start)
        if error:
            return await self._observe(session, error=f"The start page did not load: {error}")
        if self.is_miniwob:
            try:
                await session.page.evaluate(
                    "([seed, ms]) => { Math.seedrandom(seed); core.EPISODE_MAX_TIME = ms; core.startEpisodeReal();"
                    " core.startEpisode = function () {}; }",  # no sync screen: the first episode is the attempt
                    [int(self.task.reward.get("seed", 0)), int(self.miniwob_max_time_s * 1000)])
                for _ in range(100):
                    if await session.page.evaluate("() => WOB_TASK_READY"):
                        break
                    await asyncio.sleep(0.05)
                self.data["goal"] = await session.page.evaluate("() => core.getUtterance()")
            except Exception as exc:
                return await self._observe(session, error=f"The MiniWoB++ page did not start: {_first_line(exc)}")
        return await self._observe(session)

    def _session(self) -> Session:
        session = self.pool.get(self.name)
        if session is None:
            if self._opened:
                raise BrowserCrashed("this attempt's browser session is gone (closed, or lost in a browser crash)")
            self.reset()  # resumed in a new process: start the task again
            session = self.pool.get(self.name)
            assert session is not None
        self.pool.check(session)
        return session

    def step(self, call: ToolCall) -> Observation:
        session = self._session()
        if self.data.get("stopped") or self.data.get("ended"):
            return Observation("The attempt is already finished.", error=True, done=True)
        try:
            return self.pool.run(self._step(session, call), self.step_timeout_s)
        except TimeoutError as exc:
            self.pool.check(session)
            return Observation(f"Error: {exc}; the action was abandoned.", error=True, info={"timed_out": True})

    async def _step(self, session: Session, call: ToolCall) -> Observation:
        self.data["steps"] = self.data.get("steps", 0) + 1
        session.blocked_navigation = ""
        error, note, done = "", "", False
        try:
            note, done = await self._act(session, call)
        except ActionError as exc:
            error = str(exc)
        except Exception as exc:
            self.pool.check(session)
            error = f"{call.name} failed: {_first_line(exc)}"
            if "Timeout" in error:
                await self._stop_loading(session)
        if session.blocked_navigation:
            error = (f"Navigation to {session.blocked_navigation} was blocked: that site is outside this task's "
                     f"allowed origins ({', '.join(sorted(session.allowed))}).")
            if session.page.url.startswith("chrome-error://"):
                with contextlib.suppress(Exception):
                    await session.page.go_back(timeout=self.navigation_timeout_s * 1000)
        if self.is_miniwob and not done:
            info = await self._wob_state(session)
            if info.get("done") and self.end_on_page_done:
                self.data["ended"], done = True, True
                note = (note + " " if note else "") + "The task page says the episode is over; the attempt ends."
        if done:
            return Observation(note or "Done.", done=True, info={"url": session.page.url})
        return await self._observe(session, error=error, note=note)

    async def _act(self, s: Session, call: ToolCall) -> tuple[str, bool]:
        """Perform one action; return (a note for the model, whether the attempt is over)."""
        a, ms = call.arguments, self.action_timeout_s * 1000
        if call.name == "click":
            await (await self._locate(s, a)).click(timeout=ms)
            await self._settle(s)
        elif call.name == "fill":
            await (await self._locate(s, a)).fill(str(a.get("text", "")), timeout=ms)
        elif call.name == "select_option":
            await self._select_option(s, a)
        elif call.name == "press":
            await self._press(s, str(a.get("key", "")))
        elif call.name == "scroll":
            await self._scroll(s, str(a.get("direction", "down")))
        elif call.name == "goto":
            await self._goto(s, str(a.get("url", "")))
        elif call.name == "go_back":
            await self._go_back(s)
        elif call.name == "send_msg_to_user":
            self.data["messages"].append(str(a.get("text", "")))
            return "Message sent to the user.", False
        elif call.name == "stop":
            self.data.update(stopped=True, answer=str(a.get("answer", "")))
            return f"Stopped with answer: {self.data['answer']!r}", True
        else:
            raise ActionError(f"Unknown tool '{call.name}'. Available: "
                              + ", ".join(t["function"]["name"] for t in WEB_TOOLS))
        return "", False

    async def _select_option(self, s: Session, a: dict[str, Any]) -> None:
        """A failed selection lists the element's options, so the model can pick an existing one."""
        loc = await self._locate(s, a)
        try:
            await loc.select_option(str(a.get("value", "")), timeout=self.action_timeout_s * 1000)
        except Exception as exc:
            options = await loc.evaluate("el => Array.from(el.options || []).map(o => o.label).join(', ')")
            raise ActionError(f"select_option failed: {_first_line(exc)}. Options: {options or 'none'}") from None
        await self._settle(s)

    async def _press(self, s: Session, key: str) -> None:
        page, focused = s.page, s.page.locator("*:focus")
        if await page.evaluate("() => !!document.activeElement && document.activeElement !== document.body") \
                and await focused.count() == 1:
            # unlike keyboard.press, waits for a navigation it starts
            await focused.press(key, timeout=self.action_timeout_s * 1000)
        else:
            await page.keyboard.press(key)
        await self._settle(s)

    async def _scroll(self, s: Session, direction: str) -> None:
        dx, dy = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}.get(direction, (0, 1))
        await s.page.mouse.move(self.viewport[0] / 2, self.viewport[1] / 2)
        await s.page.mouse.wheel(dx * self.viewport[0] * 0.8, dy * self.viewport[1] * 0.8)
        await asyncio.sleep(0.1)

    async def _goto(self, s: Session, raw: str) -> None:
        """Navigate within the task's allowed origins only."""
        url = resolve_url(raw.strip())
        if s.page.url.startswith("http"):
            url = urljoin(s.page.url, url)
        if origin_of(url) not in s.allowed:
            raise ActionError(f"goto refused: {url} is outside this task's allowed origins "
                              f"({', '.join(sorted(s.allowed))}).")
        if not s.allows(url):
            raise ActionError(f"goto refused: {url} is not reachable from the browser.")
        error = await self._navigate(s, url)
        if error:
            raise ActionError(error)

    async def _go_back(self, s: Session) -> None:
        page = s.page
        response = await page.go_back(timeout=self.navigation_timeout_s * 1000)
        if page.url == "about:blank":  # the blank page every context starts on is not the agent's history
            await page.go_forward(timeout=self.navigation_timeout_s * 1000)
            raise ActionError("go_back: there is no previous page.")
        if response is None and page.url == s.data.get("url"):
            raise ActionError("go_back: there is no previous page.")

    async def _locate(self, s: Session, args: dict[str, Any]) -> Any:
        raw = str(args.get("id", "")).strip()
        m = _ID_RE.match(raw)
        if not m:
            raise ActionError(f"'{raw}' is not an element id; use an id shown as [id=...] in the latest observation.")
        ref = m.group(1)
        loc = s.page.locator(f'[data-ase-id="{ref}"]' if ref.startswith("c") else f"aria-ref={ref}")
        if await loc.count() == 0:
            raise ActionError(f"No element with id {ref} on the current page (ids change when the page changes; "
                              "use one from the latest observation).")
        return loc.first

    async def _navigate(self, s: Session, url: str) -> str:
        """Load `url`; return '' or why it failed (blocked, unreachable, too slow)."""
        try:
            await s.page.goto(url, wait_until="load", timeout=self.navigation_timeout_s * 1000)
            return ""
        except Exception as exc:
            if "Timeout" in type(exc).__name__ or "Timeout" in str(exc).split("\n")[0]:
                await self._stop_loading(s)
                return f"{url} did not finish loading within {self.navigation_timeout_s:.0f} s."
            if s.blocked_navigation:
                return ""  # reported by the caller
            return f"{url} could not be opened: {_first_line(exc)}"

    async def _settle(self, s: Session) -> None:
        """Let a navigation started by the action finish (a no-op on pages that did not navigate)."""
        try:
            await s.page.wait_for_load_state("load", timeout=self.navigation_timeout_s * 1000)
        except Exception:
            await self._stop_loading(s)
            raise ActionError(f"The page did not finish loading within {self.navigation_timeout_s:.0f} s.") from None

    async def _stop_loading(self, s: Session) -> None:
        """Abandon a pending navigation (the page scripts would wait for it forever); the old page stays."""
        with contextlib.suppress(Exception):
            cdp = await s.context.new_cdp_session(s.page)
            await cdp.send("Page.stopLoading")
            await cdp.detach()

    async def _wob_state(self, s: Session) -> dict[str, Any]:
        try:
            info = await s.page.evaluate(_WOB_JS)
        except Exception:
            return self.data.get("reward_info") or {}
        if info.get("done") and not (self.data.get("reward_info") or {}).get("done"):
            self.data["reward_info"] = info  # the first finished episode counts
        return self.data.get("reward_info") or info

    async def _observe(self, s: Session, error: str = "", note: str = "") -> Observation:
        page, secs = s.page, self.action_timeout_s
        tree, marks = "", {}
        for attempt in (1, 2):  # a page that navigates during the snapshot is read again once it has loaded
            try:
                marks = await asyncio.wait_for(page.evaluate(MARK_CLICKABLES_JS), secs)
                tree = await page.aria_snapshot(mode="ai", timeout=secs * 1000)
                break
            except Exception as exc:
                self.pool.check(s)
                if attempt == 2:
                    tree = f"(the page could not be read: {_first_line(exc)})"
                    break
                try:
                    await page.wait_for_load_state("load", timeout=secs * 1000)
                except Exception:
                    await self._stop_loading(s)
        title = ""
        with contextlib.suppress(Exception):
            title = await asyncio.wait_for(page.title(), secs)
        header = [f"Goal: {self.data['goal']}"] if self.data.get("goal") else []
        notes = [note] if note else []
        if s.dialogs:
            notes.append("Dialogs shown and accepted: " + " | ".join(s.dialogs))
            s.dialogs.clear()
        text, truncated = render_page(tree, marks or {}, url=page.url, title=title, error=error, notes=notes,
                                      header=header, budget=self.char_budget)
        self.data["url"] = page.url
        info: dict[str, Any] = {"url": page.url, "truncated": truncated, "blocked_requests": len(s.blocked)}
        if self.screenshot_dir is not None:
            self.screenshot_dir.mkdir(parents=True, exist_ok=True)
            path = self.screenshot_dir / f"{self.name}-{self.data.get('steps', 0):03d}.png"
            with contextlib.suppress(Exception):
                await page.screenshot(path=str(path), timeout=secs * 1000)
                info["screenshot"] = str(path)
        return Observation(text, error=bool(error), info=info)

    # -- results ---------------------------------------------------------------------------------------------
    def outcome(self) -> dict[str, Any]:
        """{"answer", "url", "reward_info"} (+ messages, stopped); live page state when the session is up."""
        session = self.pool.get(self.name)
        if session is not None and self.is_miniwob and not session.crashed:
            with contextlib.suppress(Exception):
                self.pool.run(self._wob_state(session), self.action_timeout_s + 5)
        return {"answer": self.data.get("answer"), "url": self.data.get("url", ""),
                "reward_info": self.data.get("reward_info"), "messages": list(self.data.get("messages", [])),
                "stopped": bool(self.data.get("stopped"))}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """The task's own verdict: MiniWoB++ page globals, the bundled app's server-side check, or an expected
        answer; never the agent's claim of success."""
        outcome = outcome if outcome is not None else self.outcome()
        spec = self.task.reward
        if self.is_miniwob:
            session = self.pool.get(self.name)
            info: dict[str, Any] | None = None
            if session is not None and not session.crashed:
                with contextlib.suppress(Exception):
                    info = self.pool.run(self._wob_state(session), self.action_timeout_s + 5)
            info = info or self.data.get("reward_info") or outcome.get("reward_info") or {}
            raw = float(info.get("raw_reward") or 0.0)
            done = bool(info.get("done"))
            return Evaluation(done and raw > 0, max(0.0, raw) if done else 0.0, "page", dict(info))
        if self.is_app and "check" in spec:
            assert self.task.app
            res = app_call(self.task.app, "/__reward", {"session": self.app_session, "check": spec["check"],
                                                        "args": json.dumps(spec.get("args", {}))})
            if "error" in res:
                return Evaluation(False, 0.0, "app", {"error": res["error"]})
            return Evaluation(bool(res["resolved"]), float(res["reward"]), "app", dict(res.get("details", {})))
        if self.checks is not None:
            session = self.pool.get(self.name)
            probe = PlaywrightProbe(self.pool, session, self.action_timeout_s + 5) if session and not session.crashed \
                else GonePage(str(outcome.get("url") or ""))
            return reward_evaluation(self.checks, probe, reward_base_url(self.task, self.name))
        if "answer" in spec:
            got = " ".join(str(outcome.get("answer") or "").lower().split())
            want = " ".join(str(spec["answer"]).lower().split())
            ok = got == want if spec.get("match") == "exact" else bool(want) and want in got
            return Evaluation(ok, float(ok), "answer", {"expected": spec["answer"], "answer": outcome.get("answer")})
        return Evaluation(False, 0.0, "none", {"error": "this task has no reward spec"})

    def proxy_evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """Nothing hidden: 1.0 when the agent stopped with an answer, 0.5 when it stopped (or the page ended the
        episode) without one, else 0."""
        outcome = outcome if outcome is not None else self.outcome()
        answered = bool(str(outcome.get("answer") or "").strip())
        ended = bool(outcome.get("stopped") or self.data.get("ended"))
        reward = 1.0 if ended and answered else 0.5 if ended else 0.0
        return Evaluation(False, reward, "proxy", {"stopped": ended, "answered": answered})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.run(self.pool.close(self.name), self.action_timeout_s + 5)
        webapp.release(self.name)
