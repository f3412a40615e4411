"""The Trajectory: one attempt at one task, the same plain type from the agent to the store to the trainer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

from agent_selfevolve.models.base import Message, Usage, prompt_messages


class Status(StrEnum):
    """How an attempt ended. Members are `str`s equal to their stored values, so old trajectories still load."""

    RUNNING = "running"
    UNFINISHED = "unfinished"
    """Stopped on purpose before it ended (a tree search's step chunk); never graded by the hidden tests."""
    SUBMITTED = "submitted"
    STEP_LIMIT = "step_limit"
    TOKEN_LIMIT = "token_limit"
    COST_LIMIT = "cost_limit"
    TIME_LIMIT = "time_limit"
    FORMAT_ERRORS = "format_errors"
    """Too many replies in a row without a valid action."""
    STUCK = "stuck"
    """It kept giving an action it had already run from the same state, also when resampled: the model sees
    nothing else to do. Kept apart from FORMAT_ERRORS, since the reply itself was well formed."""
    MODEL_ERROR = "model_error"
    ENV_ERROR = "env_error"
    ERROR = "error"


FINISHED_OK = Status.SUBMITTED
STATUSES = tuple(s.value for s in Status)
CRASHES = (Status.ENV_ERROR, Status.ERROR)
"""The sandbox or the harness broke: the attempt says nothing about the policy and is not graded."""
INFRA_FAILURES = (Status.MODEL_ERROR, *CRASHES)
"""Ended because the provider or the sandbox broke."""


def used_native_tools(messages: list[Message]) -> bool:
    """Tool schemas belong in a training row only when the model called them natively; a text-mode attempt
    (fenced actions, observations as user turns) must be rendered as it was served, without them."""
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


@dataclass
class Step:
    """One turn: what the model said, the action it took, and what it observed."""

    index: int
    thought: str = ""
    action: dict[str, Any] | None = None
    """{"name", "arguments"} of the tool call; None for a format error."""
    observation: str = ""
    observation_error: bool = False
    format_error: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    model_s: float = 0.0
    tool_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        """A stored step (a plain dict in `Trajectory.steps`); keys it does not know are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trajectory:
    attempt_id: str
    task_id: str
    model: str = ""
    status: str = Status.RUNNING.value
    exit_message: str = ""
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    """Plain dicts with `Step`'s fields (JSON as stored); read them typed with `step_records()`."""
    usage: dict[str, Any] = field(default_factory=dict)
    patch: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    """Ground truth once graded: {"resolved", "reward", "source", "details"} from the task's own check."""
    selection: dict[str, Any] | None = None
    """The reward a search may use to choose: {"reward", "source"}; 'tests' only when tests are not held out."""
    run_id: str = ""
    parent_ids: list[str] = field(default_factory=list)
    operator: str = ""
    """What produced this attempt: 'sample', 'greedy', 'revision', 'recombination', 'mutation', 'expand'..."""
    node_id: str = ""
    guidance: str = ""
    strategy: str = ""
    elapsed_s: float = 0.0

    @property
    def resolved(self) -> bool:
        return bool(self.evaluation and self.evaluation.get("resolved"))

    @property
    def reward(self) -> float:
        return float(self.evaluation.get("reward", 0.0)) if self.evaluation else 0.0

    @property
    def total_usage(self) -> Usage:
        return Usage.from_dict(self.usage)

    def step_records(self) -> list[Step]:
        return [Step.from_dict(s) for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_mini_swe_agent(self) -> dict[str, Any]:
        """mini-swe-agent's traj.json shape, so its inspector and tooling read our trajectories."""
        usage = self.total_usage
        return {"trajectory_format": "mini-swe-agent-1", "messages": self.messages,
                "info": {"exit_status": self.status, "submission": self.patch,
                         "model_stats": {"instance_cost": usage.cost, "api_calls": usage.calls},
                         "config": {"model": {"model_name": self.model}}, "instance_id": self.task_id,
                         "attempt_id": self.attempt_id, "evaluation": self.evaluation}}

    def to_openai_finetune(self) -> dict[str, Any]:
        """OpenAI chat fine-tuning format: {"messages", "tools"} (tool schemas only when tools were native; no
        recorded token ids, which that format has no field for)."""
        row: dict[str, Any] = {"messages": prompt_messages(self.messages)}
        if self.tools and used_native_tools(self.messages):
            row["tools"] = self.tools
        return row

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)
