"""Deterministic trajectory summaries for search operators (SE-Agent reflection, HGM diagnosis).

Actions, key observations (errors, test results), files touched and the outcome, truncated head+tail so the
beginning (the plan) and the end (what happened last) both survive. Hidden-test details are never included:
only the selection reward, whose source the caller chose.
"""

from __future__ import annotations

import json
import re

from agent_selfevolve.trajectory import Trajectory

_KEY_LINE = re.compile(r"(error|exception|traceback|failed|passed|assert|refused|not found|timed out)", re.I)


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


def summarize_trajectory(traj: Trajectory, limit: int = 3000) -> str:
    """A compact, operator-readable account of one attempt."""
    lines = [f"Attempt {traj.attempt_id} (operator: {traj.operator or 'sample'})"]
    if traj.strategy:
        lines.append(f"Strategy: {traj.strategy}")
    for step in traj.steps:
        if step.get("format_error"):
            lines.append(f"{step['index']}. [format error] {step['format_error'][:120]}")
            continue
        action = step.get("action") or {}
        args = action.get("arguments", {})
        shown = args.get("command") if action.get("name") == "bash" else json.dumps(args)[:200]
        obs = key_observation(step.get("observation", ""))
        err = " (error)" if step.get("observation_error") else ""
        lines.append(f"{step['index']}. {action.get('name')}: {shown}{err}" + (f"\n   -> {obs}" if obs else ""))
    files = files_touched(traj.patch)
    lines.append(f"Files changed: {', '.join(files) if files else 'none'}")
    sel = traj.selection or {}
    reward = f"{sel.get('reward', 0.0):.2f} ({sel.get('source', 'none')})" if sel else "not scored"
    lines.append(f"Outcome: status={traj.status}; reward={reward}; steps={len(traj.steps)}")
    if traj.exit_message:
        lines.append(f"Exit: {traj.exit_message.splitlines()[0][:200]}")
    return head_tail("\n".join(lines), limit)
