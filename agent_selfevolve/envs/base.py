"""The environment protocol shared by the coding sandbox and the browser.

An environment owns its side effects (a worktree, a browser context) and speaks plain data: the agent sends a
`ToolCall`, gets an `Observation` back, and when it is done the environment reports an `Outcome` (the patch or
answer) and, where the task allows, an `Evaluation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


INITIAL_STATE = "base"
"""`Observation.info["state"]` of an environment that has not changed yet. Environments that can key their state
(the coding one: a hash of the patch and the agent's own checks) report it after every step, so the agent can
refuse an action repeated from the same state."""


@dataclass
class Observation:
    text: str
    """What the model reads next."""
    error: bool = False
    """True when the action failed (bad arguments, refused path, timeout); the text says why."""
    done: bool = False
    """True after `submit`/`stop`: the attempt is over."""
    info: dict[str, Any] = field(default_factory=dict)
    """Machine-readable detail: returncode, duration_s, truncated, url..."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    resolved: bool
    reward: float
    source: str
    """Which signal produced the reward: 'tests' (the task's hidden tests), 'proxy', 'judge', 'page'."""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnvironmentFailure(RuntimeError):
    """The environment cannot give the agent what its actions need (a sandbox without the interpreter, a dead
    browser). Raised from `reset`/`step`, it ends the attempt as `env_error` with this message for the user: the
    model never reads it as the result of its own action."""


@runtime_checkable
class Environment(Protocol):
    def tool_specs(self) -> list[dict[str, Any]]:
        """OpenAI tool schemas ({"type": "function", "function": {...}}) of the actions available."""
        ...

    def reset(self) -> Observation:
        """Prepare (or re-attach to) the attempt's sandbox; return the first observation."""
        ...

    def step(self, call: ToolCall) -> Observation: ...

    def outcome(self) -> dict[str, Any]:
        """What the attempt produced so far: {"patch": ...} for coding, {"answer", "url"} for web."""
        ...

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """The task's own reward (hidden tests, the web app's verdict). `outcome` defaults to `self.outcome()`."""
        ...

    def proxy_evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        """A reward that uses nothing hidden from the agent, for selection during runs that report held-out."""
        ...

    def close(self) -> None: ...
