"""What the model was shown at each turn of a trajectory, so that training rows hold the contexts it replied to.

`traj.messages` is the whole conversation. A turn the agent asked as a fresh revision (`revision_context: fresh`, its
step recorded with "shown": "fresh_revision") was shown something else: the first turn again with the last failed
check after it, without the earlier code (`agent.fresh_revision`). A row built from `traj.messages` would teach that
reply after a context the model never had. Here a trajectory splits into segments, each a message list the model
really saw: every fresh revision is a segment of its own (its context, its reply, what answered it: the next turn is
asked afresh again or from the whole conversation, never after this context), and conversation turns extend the
whole conversation, in which fresh replies are history (kept with "weight": 0: they were made in another context).

A trajectory without fresh revisions (every set-up but `selfcheck`, and stored ones from before steps said what was
shown) is one segment: `traj.messages` itself, so its rows are what they always were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.models.base import Message
from agent_selfevolve.trajectory import Trajectory

FRESH = "fresh_revision"
"""A step's "shown" when its turn was asked as a fresh revision (the other value is "conversation")."""


@dataclass
class Segment:
    messages: list[Message]
    """The context of its first reply, then each reply with the observations that answered it (copies)."""
    replies: list[int] = field(default_factory=list)
    """Positions in `messages` of the replies made after exactly the messages before them."""
    sources: list[int] = field(default_factory=list)
    """For each of `replies`, that assistant message's index in `traj.messages`."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """The steps of every assistant message in `messages`, in order (as `turn_steps` matches them)."""
    fresh: bool = False

    def turns(self) -> list[tuple[list[Message], Message]]:
        """(what the model was shown, its reply) for each reply made in this segment's context."""
        return [(self.messages[:i], self.messages[i]) for i in self.replies]


def turn_steps(traj: Trajectory) -> list[tuple[int, list[dict[str, Any]]]]:
    """(index in `traj.messages`, steps) of each assistant turn, in order.

    The agent appends one assistant message per model reply and then one step per tool call it made (native), or
    one for a text action or for a reply rejected as a format error; the last turn may have fewer (the attempt
    ended while its calls ran)."""
    out: list[tuple[int, list[dict[str, Any]]]] = []
    s = 0
    for i, msg in enumerate(traj.messages):
        if msg.get("role") != "assistant":
            continue
        n = max(1, len(msg.get("tool_calls") or []))
        out.append((i, traj.steps[s:s + n]))
        s += n
    return out


def fresh_turns(traj: Trajectory, turns: list[tuple[int, list[dict[str, Any]]]] | None = None) -> list[bool]:
    """Whether each assistant turn was asked as a fresh revision.

    The turn's first step says so. Steps recorded before rejected replies said it too have no "shown": in a
    trajectory with any fresh revision (so its set-up asks them) such a turn was fresh when it was a revision, by
    the agent's own rule (`agent._revising`). Without any, the trajectory is taken as one conversation."""
    turns = turn_steps(traj) if turns is None else turns
    recorded = [steps[0].get("shown") if steps else None for _, steps in turns]
    if FRESH not in recorded:
        return [False] * len(turns)
    from agent_selfevolve.agent import _revising  # the agent's rule; imported only where it is needed

    out, s = [], 0
    for (_, steps), shown in zip(turns, recorded, strict=True):
        out.append(shown == FRESH if shown is not None else _revising({"steps": traj.steps[:s]}))
        s += len(steps)
    return out


def shown_segments(traj: Trajectory) -> list[Segment]:
    """The message lists the model was shown, in the order of their first turns (see the module's docstring).

    A fresh revision's context is rebuilt by the agent's own `fresh_revision` on the state it had then: the
    trajectory's first messages and the steps before that turn. The last segment holds the final turn."""
    from agent_selfevolve.agent import fresh_revision

    turns = turn_steps(traj)
    fresh = fresh_turns(traj, turns)
    segments: list[Segment] = []
    conversation: Segment | None = None
    s = 0
    for t, ((i, steps), is_fresh) in enumerate(zip(turns, fresh, strict=True)):
        end = turns[t + 1][0] if t + 1 < len(turns) else len(traj.messages)
        turn = copy.deepcopy(traj.messages[i:end])
        if is_fresh:
            context = copy.deepcopy(fresh_revision({"messages": traj.messages, "steps": traj.steps[:s]}))
            segments.append(Segment([*context, *turn], [len(context)], [i], list(steps), fresh=True))
            conversation = None
        else:
            if conversation is None:  # the first turn, or the first after fresh revisions: the whole history
                conversation = Segment(copy.deepcopy(traj.messages[:i]), steps=list(traj.steps[:s]))
                for (j, _), was_fresh in zip(turns[:t], fresh[:t], strict=True):
                    if was_fresh:
                        conversation.messages[j]["weight"] = 0
                    else:
                        conversation.replies.append(j)
                        conversation.sources.append(j)
                segments.append(conversation)
            conversation.replies.append(i)
            conversation.sources.append(i)
            conversation.messages.extend(turn)
            conversation.steps.extend(steps)
        s += len(steps)
    return segments or [Segment(copy.deepcopy(traj.messages), steps=list(traj.steps))]


def has_fresh_revisions(traj: Trajectory) -> bool:
    return any(fresh_turns(traj))


def segment_views(traj: Trajectory) -> list[Trajectory]:
    """Each segment as a trajectory (a copy with its messages and steps), for the row builders; `[traj]` itself
    when it has no fresh revision, so rows from such trajectories are unchanged."""
    if not has_fresh_revisions(traj):
        return [traj]
    views = []
    for seg in shown_segments(traj):
        view = copy.copy(traj)
        view.messages, view.steps = seg.messages, seg.steps
        views.append(view)
    return views


def final_view(traj: Trajectory) -> Trajectory:
    """The segment that made the final turn: what a successful attempt's rows teach."""
    return segment_views(traj)[-1]
