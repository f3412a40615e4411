"""Rewards a search may select with when the task's hidden tests must stay held out.

- 'proxy' lives in the environment (`proxy_evaluate`: applies, parses, visible tests still pass).
- 'judge' is here: an LLM reads the issue and the attempt's summary and patch, and scores it 0-10. For a web task
  it reads the first page and each action with the element it acted on (the page's own verdict, `reward_info`,
  is never shown): a web proxy only knows that the attempt stopped, which a wrong click does as well as a right one.
Neither ever sees `patch`, `test_patch` or the FAIL_TO_PASS lists.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent_selfevolve.infra import parse_json_object
from agent_selfevolve.models.base import Model, ModelError
from agent_selfevolve.search.summary import head_tail, summarize_trajectory
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

JUDGE_PROMPT = """You review a candidate fix for a software issue. You cannot run code. Judge whether the patch \
resolves the issue without breaking other behaviour.
Reply with JSON only: {{"score": <0-10>, "reason": "<one sentence>"}}.

<issue>
{issue}
</issue>

<attempt>
{summary}
</attempt>

<patch>
{patch}
</patch>"""


WEB_JUDGE_PROMPT = """You review an agent's attempt at a web task. You cannot see the page now. From the goal and \
the first page below, and the actions the agent took (each with the element it acted on), judge whether it did \
exactly what the goal asks: the right element, the right text, nothing missing.
Reply with JSON only: {{"score": <0-10>, "reason": "<one sentence>"}}.

<first_page>
{page}
</first_page>

<actions>
{actions}
</actions>"""

_ELEMENT = re.compile(r"^(\s*)-?\s*(.*?)\s*\[id=([^\]]+)\]\s*$")
_NAMED = re.compile(r"^(\s*)-\s*\w+ '([^']+)'")


def element_labels(page: str) -> dict[str, str]:
    """{id: "role 'name'"} for each `- role 'name' [id=13]` line of a web observation, with the text of the lines
    nested under it (`listitem ''` whose child reads 'Cheree'), since a bare role names nothing."""
    lines = page.splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = _ELEMENT.match(line)
        if not m:
            continue
        depth, inner = len(m.group(1)), []
        for below in lines[i + 1:i + 12]:
            child = _NAMED.match(below)
            if len(below) - len(below.lstrip()) <= depth:
                break
            if child and len(inner) < 3:
                inner.append(child.group(2)[:40])
        out[m.group(3)] = m.group(2)[:120] + (f" (text: {' / '.join(inner)})" if inner else "")
    return out


def web_judge_prompt(traj: Trajectory) -> str:
    """What the judge reads of a web attempt: the first page (the goal is on it) and the labelled actions."""
    first = next((m.get("content") or "" for m in traj.messages if m.get("role") == "user"), "")
    return WEB_JUDGE_PROMPT.format(page=head_tail(first if isinstance(first, str) else "", 4000),
                                   actions=head_tail(web_actions_text(traj), 3000))


def web_actions_text(traj: Trajectory) -> str:
    """One line per step: the action, its arguments, and the element it named, as labelled on the page the agent
    acted on (an id alone says nothing to a reader who never saw that page); then what came back, in brief."""
    first = next((m.get("content") or "" for m in traj.messages if m.get("role") == "user"), "")
    page = first if isinstance(first, str) else ""
    lines, labels = [], element_labels(page)
    for step in traj.step_records():
        if step.format_error or not step.action:
            lines.append(f"{step.index}. (no valid action)")
            continue
        args = dict(step.action.get("arguments") or {})
        named = re.search(r"[A-Za-z]*\d+", str(args.pop("id", "") or ""))  # '13', '[id=13]', 'bid=a13'
        target = named.group(0) if named else ""
        label = labels.get(target, "(not on the page shown)") if target else ""
        shown = f"{step.action.get('name')}" + (f" [{target}] {label}" if target else "") + \
            "".join(f" {k}={json.dumps(v)[:200]}" for k, v in args.items())
        result = step.observation.strip().splitlines()
        error = next((ln for ln in result if ln.startswith("Last action error:") and not ln.endswith("none")), "")
        # a new page is in the next action's label; "the episode is over" follows a wrong submit as a right one
        quiet = not result or result[0].startswith(("Goal:", "Last action error:")) or \
            "episode is over" in step.observation
        brief = error or ("" if quiet else result[0])
        lines.append(f"{step.index}. {shown}" + (f"\n   -> {brief[:200]}" if brief else ""))
        if "[id=" in step.observation:
            labels = element_labels(step.observation)
    answer = str(traj.outcome.get("answer") or "").strip()
    lines.append(f"Final answer: {answer[:300]}" if answer else "Final answer: none")
    return "\n".join(lines)


def parse_score(text: str) -> float | None:
    """Score 0..10 from a JSON reply, or from the first 'score: N' / bare number as a fallback."""
    value = (parse_json_object(text or "") or {}).get("score")
    if isinstance(value, int | float):
        return max(0.0, min(10.0, float(value)))
    found = re.search(r"score\D{0,5}(\d+(?:\.\d+)?)", text or "", re.I) or re.search(r"\b(\d+(?:\.\d+)?)\b", text or "")
    return max(0.0, min(10.0, float(found.group(1)))) if found else None


def llm_judge(model: Model, max_patch_chars: int = 6000) -> Any:
    """A `Judge` for run_attempt/SearchContext: (task, trajectory) -> {"reward", "source": "judge", ...}."""

    def judge(task: Task, traj: Trajectory) -> dict[str, Any]:
        if task.kind == "web":
            if not traj.steps:
                return {"reward": 0.0, "source": "judge", "reason": "no action"}
            prompt = web_judge_prompt(traj)
        elif not traj.patch.strip():
            return {"reward": 0.0, "source": "judge", "reason": "empty patch"}
        else:
            prompt = JUDGE_PROMPT.format(issue=head_tail(task.problem_statement, 4000),
                                         summary=summarize_trajectory(traj, 2500),
                                         patch=head_tail(traj.patch, max_patch_chars))
        try:
            reply = model.chat([{"role": "user", "content": prompt}])
        except ModelError as exc:
            return {"reward": 0.0, "source": "judge", "error": str(exc)}
        text = reply.message.get("content") or ""
        score = parse_score(text)
        return {"reward": (score or 0.0) / 10.0, "source": "judge", "raw": text[:500],
                "usage": reply.usage.to_dict(), **({"error": "unparseable judge reply"} if score is None else {})}

    return judge
