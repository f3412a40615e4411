"""BrowserGym's own environment behind our Environment protocol.

BrowserGym (0.14.3) runs a task with Playwright's *sync* API on a process-global driver, and sync Playwright objects
belong to the thread that made them, while LangGraph runs our nodes on any thread of its pool. So one daemon thread
per process owns that driver and every BrowserGym env; attempts hand it closures (`_Driver.call`). BrowserGym
launches Chromium itself (one browser for the page, one for its chat); it is given the system Chromium through its
own hook for the global Playwright (`browsergym.core._set_global_playwright`), wrapped so every launch gets our
`executable_path` and flags. The model reads BrowserGym's accessibility tree (`flatten_axtree_to_str`) rendered as our
other web observations are (`- role 'name' [id=13]`); its tool calls become BrowserGym's high-level actions
(`click('13')`, `fill('14', 'text')`, ...); the reward is what BrowserGym's task validation returned, never the
agent's claim.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent_selfevolve.browsergym_tasks import BrowserGymSpec, default_task_kwargs, import_benchmark, parse_browsergym
from agent_selfevolve.envs.base import EnvironmentFailure, Evaluation, Observation, ToolCall
from agent_selfevolve.envs.browser import LAUNCH_ARGS, chromium_executable, truncate_tree
from agent_selfevolve.envs.browsergym_map import BROWSERGYM_TOOLS, ActionError, action_mapping, render_tree, to_action
from agent_selfevolve.envs.web_rewards import SpecError
from agent_selfevolve.tasks import Task

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """JSON-safe copy (BrowserGym's infos may hold numpy values)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


class _Chromium:
    """BrowserGym's `pw.chromium`, launching the system Chromium with our flags."""

    def __init__(self, inner: Any, executable_path: str | None, args: tuple[str, ...]):
        self._inner, self._path, self._args = inner, executable_path, args

    def launch(self, **kwargs: Any) -> Any:
        kwargs["args"] = [*(kwargs.get("args") or []), *(a for a in self._args if a not in (kwargs.get("args") or []))]
        if self._path and not kwargs.get("executable_path"):
            kwargs["executable_path"] = self._path
        return self._inner.launch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Playwright:
    def __init__(self, inner: Any, chromium: _Chromium):
        self._inner, self.chromium = inner, chromium

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class _Live:
    env: Any
    data: dict[str, Any] = field(default_factory=dict)


class _Driver:
    """The thread that owns BrowserGym's Playwright and every live BrowserGym env of this process."""

    def __init__(self, executable_path: str | None, args: tuple[str, ...] = LAUNCH_ARGS):
        self.executable_path, self.args = executable_path, args
        self.live: dict[str, _Live] = {}
        self._pw: Any = None
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = \
            queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="browsergym", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller's thread
                    future.set_exception(exc)

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run `fn` on the driver thread; TimeoutError after `timeout_s` (the call itself cannot be interrupted)."""
        if threading.current_thread() is self.thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fn, future))
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"BrowserGym did not answer within {timeout_s:.0f} s") from None

    def ensure_playwright(self) -> None:
        """On the driver thread: start Playwright once and make it BrowserGym's global instance."""
        if self._pw is None:
            import browsergym.core
            from playwright.sync_api import sync_playwright

            self._pw = sync_playwright().start()
            browsergym.core._set_global_playwright(
                _Playwright(self._pw, _Chromium(self._pw.chromium, self.executable_path, self.args)))

    def shutdown(self) -> None:
        """On the driver thread: close every env (their browsers) and stop Playwright's driver."""
        for name in list(self.live):
            with contextlib.suppress(Exception):
                self.live.pop(name).env.close()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                self._pw.stop()
            self._pw = None

    def stop(self, timeout_s: float = 15.0) -> None:
        with contextlib.suppress(Exception):
            self.call(self.shutdown, timeout_s)
        self._queue.put(None)
        self.thread.join(timeout_s)


_DRIVERS: dict[int, _Driver] = {}
_DRIVERS_LOCK = threading.Lock()


def shared_driver(executable_path: str | None = None) -> _Driver:
    """This process's driver (a forked worker makes its own); `executable_path` applies when it is created."""
    with _DRIVERS_LOCK:
        driver = _DRIVERS.get(os.getpid())
        if driver is None:
            driver = _DRIVERS[os.getpid()] = _Driver(executable_path or chromium_executable())
            atexit.register(_stop_at_exit, os.getpid())
        return driver


def _stop_at_exit(pid: int) -> None:
    driver = _DRIVERS.pop(pid, None) if pid == os.getpid() else None
    if driver is not None:
        driver.stop(10.0)


class BrowserGymEnvironment:
    """One attempt at a BrowserGym task. `name` keys the live env, so a resumed attempt in the same process
    re-attaches to its page; in a new process the task starts again (same seed, same instance)."""

    def __init__(self, task: Task, name: str, *, char_budget: int = 6000, executable_path: str | None = None,
                 headless: bool = True, reset_timeout_s: float = 120.0, step_timeout_s: float = 60.0,
                 pre_observation_delay_s: float = 0.5):
        if task.kind != "web":
            raise ValueError(f"task {task.instance_id} is a {task.kind} task, not a web task")
        try:
            self.spec: BrowserGymSpec = parse_browsergym(task)
        except SpecError as exc:
            raise ValueError(f"task {task.instance_id}: {exc}") from None
        self.task, self.name = task, name
        self.char_budget, self.headless = char_budget, headless
        self.reset_timeout_s, self.step_timeout_s = reset_timeout_s, step_timeout_s
        self.pre_observation_delay_s = pre_observation_delay_s
        self.driver = shared_driver(executable_path)
        self.data: dict[str, Any] = {}
        self._opened = False

    def tool_specs(self) -> list[dict[str, Any]]:
        return BROWSERGYM_TOOLS

    # -- lifecycle -------------------------------------------------------------------------------------------
    def reset(self) -> Observation:
        live = self.driver.live.get(self.name)
        if live is not None:
            self.data, self._opened = live.data, True
            return self._observation(note="(re-attached to the running attempt)")
        self._call(self._open, self.reset_timeout_s, "start")
        return self._observation()

    def _open(self) -> None:
        """On the driver thread: make BrowserGym's env for the task and reset it with the task's seed."""
        import gymnasium as gym

        import_benchmark(self.spec.benchmark)
        self.driver.ensure_playwright()
        env = gym.make(self.spec.gym_id, disable_env_checker=True, headless=self.headless,
                       task_kwargs=default_task_kwargs(self.spec), action_mapping=action_mapping(),
                       pre_observation_delay=self.pre_observation_delay_s)
        try:
            obs, info = env.reset(seed=self.spec.seed)
        except BaseException:
            with contextlib.suppress(Exception):
                env.close()
            raise
        data: dict[str, Any] = {"answer": None, "stopped": False, "ended": False, "messages": [], "steps": 0,
                                "reward": 0.0, "terminated": False, "task_info": _plain(info.get("task_info"))}
        self.driver.live[self.name] = _Live(env, data)
        self.data, self._opened = data, True
        self._record(obs)

    def _record(self, obs: dict[str, Any]) -> None:
        """Keep what the observation text needs (plain data), so an error can be shown without a new step."""
        titles = obs.get("open_pages_titles") or ()
        index = int(obs["active_page_index"][0]) if len(titles) else 0
        self.data.update(goal=str(obs.get("goal") or ""), url=str(obs.get("url") or ""),
                         title=str(titles[index]) if len(titles) > index else "",
                         tree=render_tree(obs["axtree_object"], obs.get("extra_element_properties")),
                         focused=str(obs.get("focused_element_bid") or ""),
                         action_error=str(obs.get("last_action_error") or ""))

    def _call(self, fn: Callable[[], T], timeout_s: float, what: str) -> T:
        try:
            return self.driver.call(fn, timeout_s)
        except TimeoutError as exc:
            raise EnvironmentFailure(f"BrowserGym task {self.spec.task}: {exc} ({what})") from None
        except ModuleNotFoundError as exc:
            raise EnvironmentFailure(str(exc)) from None
        except EnvironmentFailure:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise EnvironmentFailure(f"BrowserGym task {self.spec.task} could not {what}: "
                                     f"{type(exc).__name__}: {first}") from exc

    def _live(self) -> _Live:
        live = self.driver.live.get(self.name)
        if live is None:
            if self._opened:
                raise EnvironmentFailure("this attempt's BrowserGym env is gone (closed, or its process restarted)")
            self.reset()  # resumed in a new process: start the task again
            live = self.driver.live[self.name]
        return live

    def step(self, call: ToolCall) -> Observation:
        live = self._live()
        if self.data.get("stopped") or self.data.get("ended"):
            return Observation("The attempt is already finished.", error=True, done=True)
        self.data["steps"] = self.data.get("steps", 0) + 1
        if call.name == "stop":  # BrowserGym grades the final state; chat-graded tasks read the answer
            answer = str(call.arguments.get("answer", ""))
            self._gym_step(live, f"send_msg_to_user({answer!r})" if answer.strip() else "noop(0)")
            self.data.update(stopped=True, answer=answer)
            return Observation(f"Stopped with answer: {answer!r}", done=True, info={"url": self.data.get("url")})
        try:
            action = to_action(call)
        except ActionError as exc:
            return self._observation(error=str(exc))
        if call.name == "send_msg_to_user":
            self.data["messages"].append(str(call.arguments.get("text", "")))
        self._gym_step(live, action)
        error = self.data.get("action_error", "")
        if self.data["terminated"]:
            self.data["ended"] = True
            note = "The task page says the episode is over; the attempt ends."
            return Observation(f"Last action error: {error}\n{note}" if error else note, done=True,
                               info={"url": self.data.get("url"), "action": action})
        obs = self._observation(error=f"{action} failed: {error}" if error else "")
        obs.info["action"] = action
        return obs

    def _gym_step(self, live: _Live, action: str) -> None:
        def run() -> None:
            obs, reward, terminated, truncated, info = live.env.step(action)
            self.data.update(reward=float(reward), terminated=bool(terminated or truncated),
                             task_info=_plain(info.get("task_info")))
            self._record(obs)

        self._call(run, self.step_timeout_s, f"run {action}")

    def _observation(self, error: str = "", note: str = "") -> Observation:
        d = self.data
        focused = "nothing (the page body)"
        if d.get("focused"):
            line = next((ln for ln in d.get("tree", "").split("\n") if ln.endswith(f"[id={d['focused']}]")), "")
            focused = line.strip(" -") or "an element not shown in the tree"
        head = [f"Goal: {d.get('goal', '')}", f"URL: {d.get('url', '')}", f"Title: {d.get('title', '')}",
                f"Focused: {focused}", f"Last action error: {error or 'none'}", *([note] if note else []),
                "Page (act on elements with the ids shown as [id=...]; they can change when the page changes):"]
        head_text = "\n".join(head)
        body, truncated = truncate_tree(d.get("tree") or "(empty page)", max(400, self.char_budget - len(head_text)))
        return Observation(f"{head_text}\n{body}", error=bool(error),
                           info={"url": d.get("url", ""), "truncated": truncated})

    # -- results ---------------------------------------------------------------------------------------------
    def outcome(self) -> dict[str, Any]:
        d = self.data
        return {"answer": d.get("answer"), "url": d.get("url", ""), "stopped": bool(d.get("stopped")),
                "messages": list(d.get("messages", [])),
                "reward_info": {"reward": d.get("reward", 0.0), "terminated": bool(d.get("terminated")),
                                "task_info": d.get("task_info")} if d else None}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """BrowserGym's verdict: the reward its task validation gave after the last action (for `stop`, after
        the answer reached its chat). A stored outcome is used only when this env never ran."""
        info = self.outcome()["reward_info"] if self.data else (outcome or {}).get("reward_info")
        details = {"task": self.spec.task, "seed": self.spec.seed}
        if not info:
            return Evaluation(False, 0.0, "browsergym", {**details, "error": "the attempt never started"})
        reward, done = float(info.get("reward") or 0.0), bool(info.get("terminated"))
        return Evaluation(done and reward > 0, reward, "browsergym", {**details, **info})

    def proxy_evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """Nothing hidden: 1.0 when the agent stopped with an answer, 0.5 when it stopped (or the task ended the
        episode) without one, else 0."""
        outcome = outcome if outcome is not None else self.outcome()
        answered = bool(str(outcome.get("answer") or "").strip())
        ended = bool(outcome.get("stopped") or self.data.get("ended"))
        return Evaluation(False, 1.0 if ended and answered else 0.5 if ended else 0.0, "proxy",
                          {"stopped": ended, "answered": answered})

    def close(self) -> None:
        live = self.driver.live.pop(self.name, None)
        if live is not None:
            with contextlib.suppress(Exception):
                self.driver.call(live.env.close, 30.0)
