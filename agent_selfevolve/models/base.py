"""The model protocol: chat messages (+ tool schemas) in, one assistant message and its usage out.

Messages are plain OpenAI-style dicts, so the same trajectory flows from the agent to the store and to the
trainer without conversion. Every backend (litellm, openai-compatible, llama.cpp, transformers, the scripted
fake) implements `Model.chat`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

Message = dict[str, Any]
"""An OpenAI chat message: {"role", "content", optional "tool_calls", "tool_call_id", "name"}."""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.cost + other.cost, self.calls + other.calls)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Usage:
        data = data or {}
        return cls(**{k: data.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "cost", "calls")})


EXTRA_KEY = "extra"
"""Assistant-message key for what the engine recorded about a reply ({"token_ids", "logprobs"}): kept in the
trajectory for the trainer, stripped from every prompt by `prompt_messages` (mini-swe-agent's trajectories use
the same key the same way)."""


@dataclass
class ModelReply:
    message: Message
    """The assistant message: {"role": "assistant", "content": str | None, "tool_calls": [...]?}."""
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    token_ids: list[int] | None = None
    """The completion's token ids as the engine sampled them; None when the backend cannot say. Training on these
    instead of a re-tokenization of the text avoids rollout/training token drift."""
    logprobs: list[float] | None = None
    """Per-token log-probabilities of `token_ids`, where the engine gives them cheaply."""

    def recorded_message(self) -> Message:
        """The assistant message as a trajectory keeps it: with the token ids/logprobs under EXTRA_KEY."""
        message = dict(self.message)
        if self.token_ids:
            extra: dict[str, Any] = {"token_ids": [int(t) for t in self.token_ids]}
            if self.logprobs and len(self.logprobs) == len(self.token_ids):
                extra["logprobs"] = [float(x) for x in self.logprobs]
            message[EXTRA_KEY] = {**(message.get(EXTRA_KEY) or {}), **extra}
        return message


def prompt_messages(messages: list[Message]) -> list[Message]:
    """Messages as a model may see them: without the recorded EXTRA_KEY (copies only where it was present)."""
    return [{k: v for k, v in m.items() if k != EXTRA_KEY} if EXTRA_KEY in m else m for m in messages]


def recorded_token_ids(message: Message) -> list[int] | None:
    """The token ids recorded with an assistant message, or None."""
    ids = (message.get(EXTRA_KEY) or {}).get("token_ids") if isinstance(message.get(EXTRA_KEY), dict) else None
    return list(ids) if isinstance(ids, list) and ids else None


def recorded_logprobs(message: Message) -> list[float] | None:
    """The policy's log-probability of each recorded token id (same length), or None where not recorded."""
    extra = message.get(EXTRA_KEY)
    lps = extra.get("logprobs") if isinstance(extra, dict) else None
    ids = recorded_token_ids(message)
    return [float(x) for x in lps] if isinstance(lps, list) and ids and len(lps) == len(ids) else None


class ModelError(RuntimeError):
    """A provider failed. `transient` errors (rate limits, timeouts, 5xx) are worth retrying."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@runtime_checkable
class Model(Protocol):
    name: str
    """Identity recorded with every trajectory, e.g. 'local/qwen2.5-coder-0.5b-instruct-q4_k_m'."""

    supports_tools: bool
    """False: the agent describes tools in the prompt and parses the plain-text action format instead."""

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
             **params: Any) -> ModelReply: ...


T = TypeVar("T")


def with_retries(call: Callable[[], T], attempts: int = 4, base_delay: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep,
                 jitter: Callable[[], float] = random.random) -> T:
    """Retry transient `ModelError`s with jittered exponential backoff; re-raise the rest at once.

    Delay k is `base_delay * 2**k * (0.5 + jitter())`: the jitter spreads retries of many clients
    hit by one rate limit, so two consecutive delays need not grow; their envelope does.
    """
    for attempt in range(attempts):
        try:
            return call()
        except ModelError as exc:
            if not exc.transient or attempt == attempts - 1:
                raise
            sleep(base_delay * (2**attempt) * (0.5 + jitter()))
    raise AssertionError("unreachable")
