"""One Chromium per worker process, driven from one dedicated thread.

Playwright objects belong to the event loop that made them, while LangGraph runs sync nodes on any thread of its
pool. So the browser lives on a private asyncio loop in a daemon thread; environments submit coroutines with
`BrowserPool.run`, and pages stay here, in a registry keyed by environment name, never in graph state.
Each attempt gets its own browser context (cookies, storage, cache) with a route guard that aborts every request
outside the task's allowed origins.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import heapq
import os
import re
import shutil
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from playwright.async_api import Browser, BrowserContext, Dialog, Page, Playwright, Route, async_playwright

T = TypeVar("T")
LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
SYSTEM_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_executable() -> str | None:
    """`$AGENT_SELFEVOLVE_CHROMIUM`, else a system Chromium/Chrome on PATH, else None (Playwright's own build)."""
    env = os.environ.get("AGENT_SELFEVOLVE_CHROMIUM")
    if env:
        return env
    return next((path for name in SYSTEM_BROWSERS if (path := shutil.which(name))), None)


class BrowserCrashed(RuntimeError):
    """The shared browser died under an attempt; that attempt fails, the next one gets a fresh browser."""


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


@dataclass
class Session:
    """One attempt's isolated context and current page; `data` holds what the environment must remember."""

    name: str
    context: BrowserContext
    page: Page
    generation: int
    allowed: frozenset[str]
    deny_paths: tuple[str, ...] = ()
    blocked: list[str] = field(default_factory=list)
    blocked_navigation: str = ""
    dialogs: list[str] = field(default_factory=list)
    crashed: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def allows(self, url: str) -> bool:
        if url.split(":", 1)[0] in ("data", "blob", "about"):
            return True
        return origin_of(url) in self.allowed and not urlsplit(url).path.startswith(self.deny_paths)


class BrowserPool:
    """The process's Playwright driver, its shared Chromium (started lazily, relaunched after a crash) and the
    sessions. All Playwright calls happen on `self.thread`."""

    def __init__(self, executable_path: str | None = None, headless: bool = True,
                 args: tuple[str, ...] = LAUNCH_ARGS, launch_timeout_s: float = 30.0):
        self.executable_path = executable_path if executable_path is not None else chromium_executable()
        self.headless, self.args, self.launch_timeout_s = headless, args, launch_timeout_s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-loop", daemon=True)
        self.thread.start()
        self.sessions: dict[str, Session] = {}
        self.generation = 0
        self.restarts = 0
        self.startup_s: float | None = None
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._launching: asyncio.Lock | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run `coro` on the browser thread; cancel it and raise TimeoutError after `timeout_s`."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("BrowserPool.run called from the browser thread itself (would deadlock)")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout_s), self.loop)
        try:
            return future.result(timeout_s + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the browser did not answer within {timeout_s:.0f} s") from None

    @property
    def connected(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    async def browser(self) -> Browser:
        """The shared browser, launched on first use and relaunched when it has died."""
        if self._launching is None:
            self._launching = asyncio.Lock()
        async with self._launching:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            t0 = time.monotonic()
            for attempt in (1, 2):
                try:
                    if self._pw is None:
                        self._pw = await async_playwright().start()
                    browser = await self._pw.chromium.launch(
                        executable_path=self.executable_path, headless=self.headless, args=list(self.args),
                        timeout=self.launch_timeout_s * 1000)
                    break
                except Exception as exc:  # a dead driver: restart it once, then give a clear reason
                    if self._pw is not None:
                        with contextlib.suppress(Exception):
                            await self._pw.stop()
                        self._pw = None
                    if attempt == 2:
                        where = self.executable_path or "Playwright's bundled Chromium"
                        raise RuntimeError(
                            f"cannot launch Chromium ({where}): {str(exc).splitlines()[0]}. Install a system "
                            "browser (apt-get install chromium) or set AGENT_SELFEVOLVE_CHROMIUM to its path.") from exc
            if self.generation:
                self.restarts += 1
            self.generation += 1
            generation = self.generation
            browser.on("disconnected", lambda _b: self._on_disconnect(generation))
            self._browser = browser
            self.startup_s = time.monotonic() - t0
            return browser

    def _on_disconnect(self, generation: int) -> None:
        if generation == self.generation:
            self._browser = None
        for session in self.sessions.values():
            if session.generation == generation and not session.crashed:
                session.crashed = "the browser process disconnected (crashed or was killed)"

    async def open(self, name: str, allowed: frozenset[str], *, deny_paths: tuple[str, ...] = (),
                   viewport: tuple[int, int] = (1000, 700), action_timeout_s: float = 5.0,
                   navigation_timeout_s: float = 15.0, cookies: list[dict[str, Any]] | None = None) -> Session:
        """A fresh isolated context and page for attempt `name` (closing any earlier one of that name)."""
        await self.close(name)
        browser = await self.browser()
        ctx = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                        service_workers="block", accept_downloads=False)
        ctx.set_default_timeout(action_timeout_s * 1000)
        ctx.set_default_navigation_timeout(navigation_timeout_s * 1000)
        if cookies:
            await ctx.add_cookies(cookies)  # type: ignore[arg-type]
        page = await ctx.new_page()
        session = Session(name, ctx, page, self.generation, allowed, deny_paths)

        async def guard(route: Route) -> None:
            request = route.request
            if session.allows(request.url):
                await route.continue_()
                return
            session.blocked.append(request.url)
            if request.is_navigation_request() and request.frame.parent_frame is None:
                session.blocked_navigation = request.url
            await route.abort("blockedbyclient")

        async def on_dialog(dialog: Dialog) -> None:  # an unanswered alert would freeze the page
            session.dialogs.append(f"{dialog.type}: {dialog.message}")
            with contextlib.suppress(Exception):
                await dialog.accept()

        def on_page(new: Page) -> None:  # a popup or target=_blank link becomes the current page
            new.on("dialog", on_dialog)
            session.page = new

        await ctx.route("**/*", guard)
        page.on("dialog", on_dialog)
        ctx.on("page", on_page)
        self.sessions[name] = session
        return session

    def get(self, name: str) -> Session | None:
        return self.sessions.get(name)

    def check(self, session: Session) -> None:
        """Raise BrowserCrashed when the session's browser is gone (the attempt cannot go on)."""
        if not session.crashed and (session.generation != self.generation or not self.connected):
            session.crashed = "the browser was restarted or closed"
        if session.crashed:
            raise BrowserCrashed(f"{session.crashed}; this attempt's page is lost. The browser is relaunched for "
                                 "the next attempt.")

    async def close(self, name: str) -> None:
        session = self.sessions.pop(name, None)
        if session is not None and not session.crashed:
            with contextlib.suppress(Exception):
                await session.context.close()

    async def shutdown(self) -> None:
        for name in list(self.sessions):
            await self.close(name)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await self._pw.stop()
        self._browser, self._pw = None, None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Close everything and end the browser thread."""
        with contextlib.suppress(Exception):
            self.run(self.shutdown(), timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout_s)


_POOLS: dict[int, BrowserPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(**options: Any) -> BrowserPool:
    """This process's pool (a forked worker gets its own: the parent's thread does not survive a fork).

    `options` (executable_path, headless, args) only apply when the pool is first created."""
    with _POOLS_LOCK:
        pool = _POOLS.get(os.getpid())
        if pool is None:
            pool = _POOLS[os.getpid()] = BrowserPool(**options)
            atexit.register(_stop_at_exit, os.getpid())
        return pool


def _stop_at_exit(pid: int) -> None:
    pool = _POOLS.pop(pid, None) if pid == os.getpid() else None
    if pool is not None:
        pool.stop(5.0)


# -- what the model reads -------------------------------------------------------------------------------------
MARK_CLICKABLES_JS = r"""() => {
  // Elements that react to clicks but have no ARIA role are invisible as actions in the tree (MiniWoB's
  // <span class="alink">, icon spans). Short ones without form controls inside get role=link/button (named by
  // their class when they have no text) so the tree shows them in place with an id; the rest get a data-ase-id
  // (c1, c2...) and are listed separately.
  const roles = new RegExp('^(button|link|checkbox|radio|tab|menuitem|menuitemcheckbox|menuitemradio|option|' +
                           'switch|textbox|combobox|slider|treeitem|searchbox|spinbutton)$');
  const native = 'a[href],button,input,select,textarea,summary,option,label,[contenteditable]';
  const inside = 'a[href],button,select,label,[role=button],[role=link],[role=option],[role=tab],[role=menuitem]';
  let n = window.__aseNext || 0;
  const out = [];
  for (const el of document.body ? document.body.querySelectorAll('*') : []) {
    if (el.closest('svg') || el.matches(native) || roles.test(el.getAttribute('role') || '')) continue;
    if (el.parentElement && el.parentElement.closest(inside)) continue;
    const st = getComputedStyle(el);
    const up = el.parentElement;
    const pointer = st.cursor === 'pointer' && !(up && getComputedStyle(up).cursor === 'pointer');
    const d3 = el.__onclick || (Array.isArray(el.__on) && el.__on.some(h => h.type === 'click'));
    const jq = window.jQuery && jQuery._data && (jQuery._data(el, 'events') || {}).click;
    if (!(pointer || d3 || jq || el.hasAttribute('onclick') || typeof el.onclick === 'function')) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || st.visibility === 'hidden') continue;
    const text = (el.innerText || el.getAttribute('aria-label') || el.title || '').replace(/\s+/g, ' ').trim();
    const cls = (typeof el.className === 'string' ? el.className : '').trim().split(/\s+/).filter(Boolean);
    if (!el.hasAttribute('role') && text.length <= 80 && !el.querySelector(native)) {
      el.setAttribute('role', text && st.display.startsWith('inline') ? 'link' : 'button');
      if (!text) el.setAttribute('aria-label', el.getAttribute('alt') || cls.join(' ') || el.tagName.toLowerCase());
      continue;
    }
    if (!el.dataset.aseId) el.dataset.aseId = 'c' + (++n);
    out.push([el.dataset.aseId, el.tagName.toLowerCase() + cls.map(c => '.' + c).join(''), text.slice(0, 60)]);
  }
  window.__aseNext = n;
  const doc = document.documentElement;
  return {clickables: out, scroll: [Math.round(scrollY), innerHeight, doc ? doc.scrollHeight : 0]};
}"""
_INTERACTIVE = frozenset({"button", "link", "textbox", "checkbox", "radio", "combobox", "option", "tab", "menuitem",
                          "searchbox", "spinbutton", "slider", "switch", "listbox", "treeitem", "menuitemcheckbox",
                          "menuitemradio"})
_ID_TAG = re.compile(r"\[id=[^\]]+\]")


def _role(line: str) -> str:
    body = line.lstrip(" -'\"")
    return body.split(" ", 1)[0].rstrip(":")


def _clip(line: str, cap: int) -> str:
    if len(line) <= cap:
        return line
    cut = line[:cap].rstrip() + "…"
    return cut + "".join(f" {tag}" for tag in _ID_TAG.findall(line) if tag not in cut)


def _drop_empty_colons(lines: list[str]) -> list[str]:
    """A parent whose children were all dropped loses its trailing colon."""
    out = list(lines)
    for j, line in enumerate(out):
        nxt = out[j + 1] if j + 1 < len(out) else ""
        if line.endswith(":") and len(nxt) - len(nxt.lstrip(" ")) <= len(line) - len(line.lstrip(" ")):
            out[j] = line[:-1]
    return out


def truncate_tree(text: str, budget: int) -> tuple[str, bool]:
    """Fit an indented tree into `budget` chars keeping its shape: drop link targets, clip the longest lines, then
    drop leaves deepest first (plain text before actionable elements). A parent that lost children gets one
    `- … (N hidden)` line, so the model knows to scroll or narrow down."""
    if len(text) <= budget:
        return text, False
    lines = text.split("\n")
    if sum(len(x) + 1 for x in lines) > budget:
        lines = _drop_empty_colons([x for x in lines if not x.lstrip(" ").startswith("- /url:")])
    for cap in (300, 200, 120, 80):
        if sum(len(x) + 1 for x in lines) <= budget:
            return "\n".join(lines), True
        lines = [_clip(line, cap) for line in lines]
    depth = [(len(x) - len(x.lstrip(" "))) // 2 for x in lines]
    parent, stack, kids = [-1] * len(lines), [], [0] * len(lines)
    for i, d in enumerate(depth):
        while stack and depth[stack[-1]] >= d:
            stack.pop()
        parent[i] = stack[-1] if stack else -1
        if parent[i] >= 0:
            kids[parent[i]] += 1
        stack.append(i)

    def key(i: int) -> tuple[bool, int, int, int]:
        return (_role(lines[i]) in _INTERACTIVE and "[id=" in lines[i], -depth[i], -len(lines[i]), -i)

    leaves = [(key(i), i) for i in range(len(lines)) if kids[i] == 0 and parent[i] >= 0]
    heapq.heapify(leaves)
    removed, total, reserve = [False] * len(lines), sum(len(x) + 1 for x in lines), 0
    while True:
        while total > budget - reserve and leaves:
            _, i = heapq.heappop(leaves)
            removed[i], total = True, total - len(lines[i]) - 1
            p = parent[i]
            kids[p] -= 1
            if kids[p] == 0 and parent[p] >= 0:
                heapq.heappush(leaves, (key(p), p))
        hidden: dict[int, int] = {}  # kept ancestor -> hidden descendants
        for i in range(len(lines)):
            if removed[i]:
                a = parent[i]
                while removed[a]:
                    a = parent[a]
                hidden[a] = hidden.get(a, 0) + 1
        out = []
        for i, line in enumerate(lines):
            if not removed[i]:
                out.append(line)
            elif parent[i] in hidden and not removed[parent[i]]:
                out.append("  " * (depth[parent[i]] + 1) + f"- … ({hidden.pop(parent[i])} hidden)")
        rendered = "\n".join(_drop_empty_colons(out))
        if len(rendered) <= budget or not leaves:
            break
        reserve += len(rendered) - budget + 20
    if len(rendered) > budget:
        rendered = rendered[: max(0, budget - 10)] + "\n… (cut)"
    return rendered, True


def render_page(tree: str, marks: dict[str, Any], *, url: str, title: str, error: str = "",
                notes: list[str] | None = None, header: list[str] | None = None,
                budget: int = 6000) -> tuple[str, bool]:
    """The observation text: header lines, URL, focus, last error, then the (truncated) tree and the clickables
    outside it. `marks` is what MARK_CLICKABLES_JS returned."""
    clickables: list[list[str]] = marks.get("clickables") or []
    tree = re.sub(r"\[ref=", "[id=", tree).replace(" [cursor=pointer]", "")
    focused = next((ln for ln in tree.split("\n") if "[active]" in ln), "")
    focus = re.sub(r"\s*\[(?:active|id=[^\]]+)\]", "", focused).strip(" -'").rstrip(":") if focused else ""
    ids = _ID_TAG.findall(focused)
    if not focus or _role(focused) in ("generic", "document"):
        focus = "nothing (the page body)"
    elif ids:
        focus += f" {ids[0]}"
    y, height, total = (marks.get("scroll") or [0, 0, 0])[:3]
    scroll = [f"Scroll: showing {y}-{y + height} of {total} px (the tree covers the whole page)"] \
        if total > height > 0 else []
    head = [*(header or []), f"URL: {url}", f"Title: {title}", *scroll, f"Focused: {focus}",
            f"Last action error: {error or 'none'}", *(notes or []),
            "Page (act on elements with the ids shown as [id=...]; they change when the page changes):"]
    extra = ""
    if clickables:
        extra = "\nOther clickable elements (not in the tree above):\n" + "\n".join(
            f'- {tag} "{text}" [id={cid}]' if text else f"- {tag} [id={cid}]" for cid, tag, text in clickables[:40])
    head_text = "\n".join(head)
    room = max(400, budget - len(head_text) - len(extra) - 2)
    body, truncated = truncate_tree(tree.strip() or "(empty page)", room)
    return f"{head_text}\n{body}{extra}", truncated
