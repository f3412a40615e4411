"""Canonical prompts for training rows: the first user message as an unguided attempt would have seen it.

Search operators put a strategy, guidance or a value model's feedback into an attempt's first user message
(`agent.prompt_extras`), while held-out evaluation (and deployment) prompts carry none. A row trained on the guided
prompt teaches "act well when told how"; the same row with the canonical prompt teaches acting that way unprompted,
which is what evaluation measures. It also lets siblings that were given different guidance (SE-Agent, HGM, MCTS
levels) share a prompt, which DPO pairs and recovery rows need.
"""

from __future__ import annotations

import copy
from typing import Literal

from agent_selfevolve.models.base import Message
from agent_selfevolve.trajectory import Trajectory

PromptMode = Literal["canonical", "as_run"]
PROMPT_MODES: tuple[str, ...] = ("canonical", "as_run")
"""'canonical': strategy/guidance removed from the first user message (the default); 'as_run': kept as served."""


def _strip_last(text: str, part: str) -> str | None:
    at = text.rfind(part)
    return None if at < 0 else text[:at] + text[at + len(part):]


def canonical_messages(traj: Trajectory) -> list[Message] | None:
    """`traj.messages` with its strategy and guidance cut out of the first user message (a copy).

    None when the attempt had some but they cannot be found in that message (a prompt built some other way):
    such a row cannot be made canonical and must not be trained on as if it were."""
    messages = copy.deepcopy(traj.messages)
    if not (traj.strategy or traj.guidance):
        return messages
    from agent_selfevolve.agent import prompt_extras

    first = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
    content = messages[first].get("content") if first is not None else None
    if not isinstance(content, str):
        return None
    strategy, guidance = prompt_extras(traj.strategy, traj.guidance)
    for part in (guidance, strategy):  # the template puts strategy, then guidance, last
        if part:
            stripped = _strip_last(content, part)
            if stripped is None:
                return None
            content = stripped
    messages[first]["content"] = content
    return messages


def canonical_trajectory(traj: Trajectory) -> Trajectory | None:
    """A copy of `traj` whose messages start with the canonical prompt (and no strategy/guidance); None if the
    prompt cannot be rebuilt (see `canonical_messages`)."""
    messages = canonical_messages(traj)
    if messages is None:
        return None
    out = copy.copy(traj)
    out.messages, out.strategy, out.guidance = messages, "", ""
    return out
