"""The progress events every graph emits, as typed dicts.

Graphs send them through LangGraph's custom stream (`graph.stream(..., stream_mode="custom")`, or
`stream_mode=["updates", "custom"]` with `subgraphs=True`), and the search/evolve helpers also hand them to the
`on_event` callback of their context. The `event` key names the type.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class AttemptStarted(TypedDict):
    event: Literal["attempt_started"]
    task_id: str


class StepEvent(TypedDict):
    event: Literal["step"]
    task_id: str
    index: int
    tool: str
    error: bool


class AgentFinished(TypedDict):
    """The agent graph reached its end (submitted, a limit, an error); grading comes after."""

    event: Literal["agent_finished"]
    task_id: str
    status: str
    steps: int


class BudgetUsed(TypedDict):
    tokens: int
    calls: int
    cost: float
    wall_s: float


class AttemptFinished(TypedDict):
    """A search's attempt was run and scored; budget_used counts the whole search so far."""

    event: Literal["attempt_finished"]
    task_id: str
    attempt_id: str
    reward: float
    status: str
    tokens: int
    budget_used: BudgetUsed
    budget: dict[str, Any]
    """The search budget's set limits (None ones left out)."""


class SearchFinished(TypedDict, total=False):
    """The SearchResult fields, plus the event name."""

    event: Literal["search_finished"]
    run_id: str
    strategy: str
    task_id: str
    best_attempt_id: str | None
    best_reward: float
    selection_source: str
    resolved: bool
    pass_at_n: bool
    attempts: int
    usage: dict[str, Any]
    stop_reason: str
    extra: dict[str, Any]
    oracle: bool


class OperatorEvent(TypedDict):
    """SE-Agent operator call (rate, revise, recombine); `ok` is False when the reply was unusable and the
    operator's fallback was used."""

    event: Literal["operator"]
    generation: int
    operator: str
    parent_ids: list[str]
    child_id: str
    ok: bool
    error: str


class HGMExpanded(TypedDict):
    event: Literal["hgm_expanded"]
    task_id: str
    run_id: str
    parent: str
    node: str
    error: str


class MCTSNodeValued(TypedDict):
    """MCTS: a new child was valued (its reward if it ended, else the value model's) and backed up."""

    event: Literal["mcts_node"]
    task_id: str
    run_id: str
    node: str
    parent: str | None
    value: float | None
    terminal: bool


class EpisodeFinished(TypedDict, total=False):
    """Evolve: one episode's report (held-out before/after, promotion, paired test, data sizes)."""

    event: Literal["episode_finished"]


Event = (AttemptStarted | StepEvent | AgentFinished | AttemptFinished | SearchFinished | OperatorEvent | HGMExpanded
         | MCTSNodeValued | EpisodeFinished)
