"""Deterministic trajectory summaries for search operators (SE-Agent reflection, HGM diagnosis).

Actions, key observations (errors, test results; for web attempts the page changes: title and URL when they
move, the last action's error), files touched or the answer given, and the outcome, truncated head+tail so the
beginning (the plan) and the end (what happened last) both survive. Nothing from the hidden evaluation is ever
included: a reward appears only when its source uses nothing hidden (proxy or judge), so an oracle run
(selection by hidden tests) shows operators no reward at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent_selfevolve.trajectory import Trajectory

VISIBLE_SOURCES = frozenset({"proxy", "judge"})
"""Reward sources an operator, value or judge prompt may show: neither reads the hidden tests."""
_KEY_LINE = re.compile(r"(error|exception|traceback|failed|passed|assert|refused|not found|timed out)", re.I)


def visible_reward(selection: dict[str, Any] | None) -> float | None:
    """The selection reward when a prompt may show it (proxy or judge), else None (hidden tests, page verdicts)."""
    if not selection or selection.get("source") not in VISIBLE_SOURCES:
        return None
    return float(selection.get("reward", 0.0))


def reward_text(reward: float | None, source: str) -> str:
    """'reward=0.60 (proxy)' for a shown reward; '' for a hidden one (an oracle run shows no reward)."""
    return f"reward={reward:.2f} ({source}); " if reward is not None and source in VISIBLE_SOURCES else ""


def checks_text(selection: dict[str, Any] | None) -> str:
    """The proxy's own checks in one line ('repo_tests 3/4, doctests 1/1'), '' for any other source."""
    if not selection or selection.get("source") != "proxy":
        return ""
    checks = (selection.get("details") or {}).get("checks") or {}
    return ", ".join(f"{g} {c.get('passed', 0)}/{c.get('total', 0)}" for g, c in sorted(checks.items()))


def head_tail(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def files_touched(patch: str) -> list[str]:
    return re.findall(r"^diff --git a/(\S+) b/", patch, re.M)


def key_observation(text: str, max_lines: int = 4) -> str:
    lines = [ln.strip() for ln in text.splitlines() if _KEY_LINE.search(ln)]
    picked = lines[:2] + lines[-2:] if len(lines) > max_lines else lines
    return " | ".join(ln[:160] for ln in picked) or text.strip().splitlines()[0][:160] if text.strip() else ""


_PAGE_FIELD = re.compile(r"^(URL|Title|Last action error): (.*)$", re.M)


def page_change(text: str, previous: dict[str, str]) -> str | None:
    """For a browser observation: what changed since `previous` (updated in place); None if not a page."""
    fields = dict(_PAGE_FIELD.findall(text))
    if "URL" not in fields:
        return None
    parts = []
    if (fields.get("Title"), fields["URL"]) != (previous.get("Title"), previous.get("URL")):
        parts.append(f"page: {fields.get('Title', '')[:80]} ({fields['URL'][:120]})")
    if fields.get("Last action error", "none") != "none":
        parts.append(f"error: {fields['Last action error'][:160]}")
    previous.update(fields)
    return " | ".join(parts) or "page unchanged"


def summarize_trajectory(traj: Trajectory, limit: int = 3000) -> str:
    """A compact, operator-readable account of one attempt."""
    lines = [f"Attempt {traj.attempt_id} (operator: {traj.operator or 'sample'})"]
    page: dict[str, str] = {}
    first = next((m.get("content") or "" for m in traj.messages if m.get("role") == "user"), "")
    start = page_change(first if isinstance(first, str) else "", page)
    if start is not None:
        lines.append(f"Start {start}")
    if traj.strategy:
        lines.append(f"Strategy: {traj.strategy}")
    for step in traj.step_records():
        if step.format_error:
            lines.append(f"{step.index}. [format error] {step.format_error[:120]}")
            continue
        action = step.action or {}
        args = action.get("arguments", {})
        shown = args.get("command") if action.get("name") == "bash" else json.dumps(args)[:200]
        change = page_change(step.observation, page)
        obs = change if change is not None else key_observation(step.observation)
        err = " (error)" if step.observation_error else ""
        lines.append(f"{step.index}. {action.get('name')}: {shown}{err}" + (f"\n   -> {obs}" if obs else ""))
    if "url" in traj.outcome or "answer" in traj.outcome:  # a web attempt
        lines.append(f"Final page: {str(traj.outcome.get('url', ''))[:120]}; answer: "
                     f"{str(traj.outcome.get('answer') or 'none')[:200]}")
    else:
        files = files_touched(traj.patch)
        lines.append(f"Files changed: {', '.join(files) if files else 'none'}")
    sel = traj.selection or {}
    lines.append(f"Outcome: status={traj.status}; {reward_text(visible_reward(sel), sel.get('source', ''))}"
                 f"steps={len(traj.steps)}")
    if checks_text(sel):
        lines.append(f"Proxy checks passed: {checks_text(sel)}")
    if traj.exit_message:
        lines.append(f"Exit: {traj.exit_message.splitlines()[0][:200]}")
    return head_tail("\n".join(lines), limit)
