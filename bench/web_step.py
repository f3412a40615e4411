"""Browser environment cost: start-up and time per step (action + observation) vs a bare Playwright script doing
the same clicks without building observations.

Two click kinds: an in-page click (MiniWoB++ click-checkboxes: toggle a checkbox, no navigation) and a
navigating click (the bundled todo app: each toggle posts a form and reloads the page).

    python bench/web_step.py [--steps 30]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import sync_playwright  # noqa: E402

from agent_selfevolve.envs.base import ToolCall  # noqa: E402
from agent_selfevolve.envs.browser import LAUNCH_ARGS, BrowserPool, chromium_executable  # noqa: E402
from agent_selfevolve.envs.web import BrowserEnvironment  # noqa: E402
from agent_selfevolve.web_tasks import bundled_web_tasks, miniwob_tasks, resolve_url  # noqa: E402

TODO = bundled_web_tasks(ids=["web.todo.groceries"])[0]
WOB = miniwob_tasks(["click-checkboxes"], seeds=[0])[0]


def _ms(samples: list[float]) -> str:
    p90 = sorted(samples)[int(len(samples) * 0.9)]
    return f"median {statistics.median(samples) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def bare(steps: int) -> dict[str, list[float]]:
    """Plain sync Playwright: launch, one context, click by CSS selector; no ARIA snapshot, no guard."""
    out: dict[str, list[float]] = {"startup": [], "inpage": [], "navigating": []}
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_executable(), headless=True, args=list(LAUNCH_ARGS))
        out["startup"].append(time.monotonic() - t0)
        page = browser.new_context().new_page()
        page.goto(resolve_url(WOB.start_url or ""))
        page.evaluate("() => { Math.seedrandom(0); core.EPISODE_MAX_TIME = 3600000; core.startEpisodeReal(); "
                      "core.startEpisode = function () {}; }")
        for _ in range(steps):
            t = time.monotonic()
            page.click("#boxes input >> nth=0")
            out["inpage"].append(time.monotonic() - t)
        page.goto(resolve_url(TODO.start_url or ""))
        for _ in range(steps):
            t = time.monotonic()
            page.click('form[action="/toggle"] button >> nth=0')
            page.wait_for_load_state("load")
            out["navigating"].append(time.monotonic() - t)
        browser.close()
    return out


def ours(steps: int) -> dict[str, list[float]]:
    """BrowserEnvironment on a fresh pool: each step is click(id) + wait + ARIA observation."""
    out: dict[str, list[float]] = {"startup": [], "reset": [], "inpage": [], "navigating": []}
    pool = BrowserPool()
    t0 = time.monotonic()
    pool.run(pool.browser(), 60)
    out["startup"].append(time.monotonic() - t0)

    def drive(env: BrowserEnvironment, pick: Callable[[str], str], key: str) -> None:
        t = time.monotonic()
        obs = env.reset()
        out["reset"].append(time.monotonic() - t)
        for _ in range(steps):
            t = time.monotonic()
            obs = env.step(ToolCall("click", {"id": pick(obs.text)}))
            out[key].append(time.monotonic() - t)
            assert not obs.error, obs.text
        env.close()

    first_checkbox = re.compile(r"checkbox [^\n]*?\[id=(\w+)\]")
    todo_button = re.compile(r'button "Mark (?:not )?done: Water the plants" \[id=(\w+)\]')
    drive(BrowserEnvironment(WOB, "bench-wob", pool, end_on_page_done=False),
          lambda text: first_checkbox.search(text).group(1), "inpage")  # type: ignore[union-attr]
    drive(BrowserEnvironment(TODO, "bench-todo", pool),
          lambda text: todo_button.search(text).group(1), "navigating")  # type: ignore[union-attr]
    pool.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    steps = parser.parse_args().steps
    b = bare(steps)
    o = ours(steps)
    print(f"browser: {chromium_executable() or 'Playwright bundled'}; {steps} steps per kind")
    print(f"start-up   bare {b['startup'][0]:.2f} s   ours {o['startup'][0]:.2f} s   "
          f"(+ first reset {o['reset'][0]:.2f} s, context + page + load + observation)")
    for kind in ("inpage", "navigating"):
        ratio = statistics.median(o[kind]) / statistics.median(b[kind])
        print(f"{kind:<10} bare {_ms(b[kind])}   ours {_ms(o[kind])}   ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
