"""Rewards a search may select with when the task's hidden tests must stay held out.

- 'proxy' lives in the environment (`proxy_evaluate`: applies, parses, visible tests still pass).
- 'judge' is here: an LLM reads the issue and the attempt's summary and patch, and scores it 0-10.
Neither ever sees `patch`, `test_patch` or the FAIL_TO_PASS lists.
"""

from __future__ import annotations

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
        if not traj.patch.strip():
            return {"reward": 0.0, "source": "judge", "reason": "empty patch"}
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
