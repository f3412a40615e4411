"""Typed shapes of what search graphs keep in state: attempt records and tree nodes.

They are TypedDicts, not dataclasses, because graph state is plain JSON that the checkpointer stores and a
resumed run reads back as dicts; the types name the keys every node reads and writes.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict


class AttemptRecord(TypedDict):
    """The slice of a trajectory a search decides on (`common.record_of`). `hidden_resolved` is for reports only,
    never for choices."""

    attempt_id: str
    task_id: str
    status: str
    """A `trajectory.Status` value."""
    reward: float
    """The selection reward (proxy, judge, or the hidden tests in an oracle run)."""
    reward_source: str
    reward_ceiling: float | None
    """The most this attempt's reward could have been (None when unknown, e.g. an empty patch)."""
    hidden_resolved: bool
    usage: dict[str, Any]
    parent_ids: list[str]
    operator: str
    node_id: str
    steps: int
    patch_chars: int


class Variant(TypedDict):
    """An HGM agent variant: what goes into the agent's first prompt and its model call."""

    strategy: str
    guidance: str
    model_params: dict[str, Any]


class HGMNode(TypedDict):
    """One node of the HGM tree; `s`/`f` are its own (possibly fractional) outcomes, recomputed from `attempts`."""

    id: str
    parent: str | None
    operator: str
    variant: Variant
    depth: int
    parent_ids: list[str]
    diagnosis: str
    children: list[str]
    attempt_ids: list[str]
    s: float
    f: float
    error: NotRequired[str]
    """Set when the operator call that made this node failed (the child kept its parent's variant)."""


class HGMAction(TypedDict):
    """One slot of an HGM wave: evaluate `node` as `attempt_id`, or expand `node` into `child`."""

    kind: Literal["evaluate", "expand"]
    node: str
    attempt_id: NotRequired[str]
    child: NotRequired[str]


class HGMExpansion(TypedDict):
    """What an expansion returns for `absorb` to fold into the tree."""

    node: str
    parent: str
    parent_ids: list[str]
    variant: Variant
    diagnosis: str
    error: NotRequired[str]


class MCTSNode(TypedDict):
    """One node of the step-level tree: an agent state reached by the attempt `attempt_id` (None at the root)."""

    id: str
    parent: str | None
    attempt_id: str | None
    steps: int
    """Actions taken to reach this state."""
    terminal: bool
    closed: bool
    visits: int
    value_sum: float
    value: float | None
    feedback: str
    """The value model's explanation, passed to this node's children as guidance."""
    children: list[str]
