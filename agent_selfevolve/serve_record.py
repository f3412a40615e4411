"""Recording what an agent we did not write does through `selfevolve serve`: each conversation becomes one trajectory.

An agent talks to the endpoint one request at a time, each request carrying the whole history so far. Requests of
one conversation are grouped into one trajectory (like Agent Lightning's tracing proxy, which collects training
data from unmodified agents):
- explicitly, by an `X-Trajectory-Id` header or the request's `user` field: that id names the trajectory; a
  request whose history does not extend it (the agent rewrote its history) starts a fork `<id>.2`, `<id>.3`...
- otherwise by prefix: a request continues the open conversation whose recorded messages (its last reply
  included) are a prefix of the request's messages; the longest such prefix wins, and among equal ones the
  conversation that has waited longest (siblings that answer identically stay apart, alternating).
The stored messages are the recorded ones, so each reply keeps the token ids the engine sampled for it
(`models.base.EXTRA_KEY`); the client's copies of earlier replies are only compared, never stored. A
conversation stays 'running' until the client reports how it ended (`finish`).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.models.base import Message, ModelReply, Usage
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.train.dataset import message_key
from agent_selfevolve.trajectory import STATUSES, Trajectory

_KEEP = ("role", "content", "name", "tool_call_id")


def clean_message(message: dict[str, Any]) -> Message:
    """A request message reduced to what a prompt holds (client-side extras such as mini-swe-agent's 'extra',
    `function_call: null` or `refusal` dropped, so nothing a client sends is mistaken for recorded token ids)."""
    out: Message = {k: message[k] for k in _KEEP if k in message and message[k] is not None}
    out.setdefault("content", None)
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        calls.append({"id": str(call.get("id") or ""), "type": "function",
                      "function": {"name": str(fn.get("name") or ""), "arguments": fn.get("arguments") or "{}"}})
    if calls:
        out["tool_calls"] = calls
    return out


@dataclass
class _Conversation:
    traj: Trajectory
    keys: list[str] = field(default_factory=list)
    touched: float = 0.0
    forks: int = 1


class ConversationRecorder:
    """Groups served requests into trajectories and upserts each one into `store` after every reply."""

    def __init__(self, store: TrajectoryStore, run_id: str, max_open: int = 1024):
        self.store, self.run_id, self.max_open = store, run_id, max_open
        self._open: dict[str, _Conversation] = {}
        self._lock = threading.Lock()

    def record(self, messages: list[Message], reply: ModelReply, *, model: str, tools: list[dict[str, Any]] | None,
               explicit_id: str | None = None, task_id: str | None = None) -> str:
        """Add one served reply (to the cleaned request `messages`) to its conversation; returns the trajectory id."""
        keys = [message_key(m) for m in messages]
        with self._lock:
            conv = self._match(keys, explicit_id)
            if conv is None:
                conv = self._new(explicit_id, task_id, model)
            start = len(conv.keys)
            traj = conv.traj
            self._observe(traj, messages[start:])
            traj.messages = traj.messages[:start] + copy.deepcopy(messages[start:]) + [reply.recorded_message()]
            conv.keys = keys + [message_key(reply.message)]
            conv.touched = time.monotonic()
            traj.model, traj.tools = model, list(tools or traj.tools)
            traj.usage = (Usage.from_dict(traj.usage) + reply.usage).to_dict()
            traj.elapsed_s += reply.latency_s
            traj.steps.extend(_steps(reply, len(traj.steps)))
            self.store.record(traj)
            self._evict()
            return traj.attempt_id

    def finish(self, trajectory_id: str, status: str, *, exit_message: str = "", patch: str | None = None,
               evaluation: dict[str, Any] | None = None) -> Trajectory | None:
        """Close a conversation with how it ended (and, if the client graded it, its evaluation); None if unknown."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        with self._lock:
            conv = self._open.pop(trajectory_id, None)
            traj = conv.traj if conv else self.store.get(trajectory_id)
            if traj is None or traj.run_id != self.run_id:
                return None
            traj.status, traj.exit_message = status, exit_message
            if patch is not None:
                traj.patch, traj.outcome = patch, {**traj.outcome, "patch": patch}
            if evaluation is not None:
                traj.evaluation = {"resolved": bool(evaluation.get("resolved")),
                                   "reward": float(evaluation.get("reward", float(bool(evaluation.get("resolved"))))),
                                   "source": str(evaluation.get("source", "client")),
                                   "details": evaluation.get("details", {})}
            self.store.record(traj)
            return traj

    # ---------------------------------------------------------------------------------------------- helpers
    def _match(self, keys: list[str], explicit_id: str | None) -> _Conversation | None:
        if explicit_id is not None:
            forks = [c for c in self._open.values() if c.traj.attempt_id == explicit_id
                     or c.traj.attempt_id.startswith(explicit_id + ".")]
            fits = [c for c in forks if _extends(keys, c.keys)]
            return max(fits, key=lambda c: len(c.keys), default=None)
        fits = [c for c in self._open.values() if c.traj.operator == "serve" and _extends(keys, c.keys)]
        return max(fits, key=lambda c: (len(c.keys), -c.touched), default=None)

    def _new(self, explicit_id: str | None, task_id: str | None, model: str) -> _Conversation:
        if explicit_id is None:
            attempt_id, operator = f"serve-{uuid.uuid4().hex[:12]}", "serve"
        else:
            n = 1 + sum(1 for c in self._open.values() if c.traj.attempt_id == explicit_id
                        or c.traj.attempt_id.startswith(explicit_id + "."))
            if n == 1 and self.store.has(explicit_id):
                n = 2 + sum(1 for t in self.store.attempts(run_id=self.run_id)
                            if t.attempt_id.startswith(explicit_id + "."))
            attempt_id, operator = (explicit_id if n == 1 else f"{explicit_id}.{n}"), "serve-explicit"
        traj = Trajectory(attempt_id=attempt_id, task_id=task_id or "serve", model=model, run_id=self.run_id,
                          operator=operator, usage=Usage().to_dict())
        conv = _Conversation(traj)
        self._open[attempt_id] = conv
        return conv

    def _evict(self) -> None:
        """Forget the least recently used open conversations beyond `max_open` (they stay in the store)."""
        while len(self._open) > self.max_open:
            oldest = min(self._open, key=lambda k: self._open[k].touched)
            self._open.pop(oldest)

    @staticmethod
    def _observe(traj: Trajectory, new: list[Message]) -> None:
        """Fill the observations of the steps whose tool calls the new tool messages answer."""
        results = {m.get("tool_call_id"): m.get("content") for m in new if m.get("role") == "tool"}
        for step in traj.steps:
            call_id = (step.get("info") or {}).get("tool_call_id")
            if call_id in results and not step.get("observation"):
                step["observation"] = str(results[call_id] or "")


def _extends(keys: list[str], prefix: list[str]) -> bool:
    return bool(prefix) and len(prefix) <= len(keys) and keys[:len(prefix)] == prefix


def _steps(reply: ModelReply, first: int) -> list[dict[str, Any]]:
    """One step per tool call (a reply without one is one step with no action), as the agent records them."""
    calls = reply.message.get("tool_calls") or [None]
    steps = []
    for i, call in enumerate(calls):
        action = None
        if call is not None:
            fn = call.get("function") or {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except json.JSONDecodeError:
                args = {"raw": fn.get("arguments")}
            action = {"name": fn.get("name", ""), "arguments": args}
        steps.append({"index": first + i, "thought": (reply.message.get("content") or "") if i == 0 else "",
                      "action": action, "observation": "", "observation_error": False,
                      "usage": reply.usage.to_dict() if i == 0 else {}, "model_s": reply.latency_s if i == 0 else 0.0,
                      "tool_s": 0.0, "info": {"tool_call_id": call.get("id", "") if call else ""}})
    return steps
