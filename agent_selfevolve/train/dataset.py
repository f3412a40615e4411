"""Training rows from trajectories: SFT on successes, DPO pairs and Agent-R-style recovery rows from siblings.

Rows use the chat shapes the trainers read (and TRL/OpenAI would too): SFT and recovery rows are
{"messages", "tools"}; DPO rows are {"prompt", "chosen", "rejected", "tools"} with message lists. Every row also
carries a "meta" dict (kind, task_id, attempt ids) that the trainers ignore; it is what lets `assert_no_held_out`
prove that no held-out task leaked into a dataset. An assistant message with "weight": 0 (OpenAI's fine-tuning
convention) is context, not a target: the masker gives it no loss.

Siblings are the *finished* attempts at one task within one run (same run_id and task_id); they share the system
and user messages, and often a longer prefix when a search branched from a common state. Their messages are compared
as recorded: every attempt is shown its repository at one fixed path (/testbed, sandboxed or not: `envs.runner`),
so nothing in them names the attempt. An attempt a tree search stopped at its step chunk ('unfinished') goes on in
its descendants, and one the sandbox or provider broke says nothing about the policy: neither is ever a "rejected"
side or a failed path. First user messages are rebuilt unguided by default (`canonical.py`); the report says so,
and why any requested kind came out empty.

Recovery rows (after Agent-R, arXiv 2501.11425), defined simply here: take a failed attempt F and its successful
sibling S. Let k be the first message where they differ (moved back to an assistant turn). F's *first wrong
step* is its first assistant turn at or after k whose action produced a tool error or a format error; if there
is none, it is F's turn at k (the step where it left the successful path). The row is F up to and including
that turn and its observations (assistant turns weighted 0), then S's continuation from k with a short
reflection prepended to S's first assistant message. The environment state after F's bad step is not undone:
like Agent-R, we accept that the spliced path is a teaching signal ("notice, reflect, go back"), not a replay.

Fresh revisions (`revision_context: fresh`, the selfcheck set-up) were not shown `traj.messages` but the first turn
with the failed check after it, so rows come from the message lists the model saw (`shown.py`'s segments): an SFT row
is the segment that made the final turn; a DPO pair or recovery row joins a segment of the failed sibling with the
successful one's final segment at their branch point (longest shared prefix, as siblings are chosen), so both sides
were seen as they stand up to where they part (first answers to [system, user], or revisions after the same failed
check). Skipping such attempts would lose selfcheck's first-answer pairs. Without fresh revisions an attempt is its
own single segment: its rows are unchanged. The report counts attempts with fresh revisions ('segmented').

Rationalized rows (STaR's rationalization, arXiv 2203.14465: generate with a hint, train without it) are the one
exception, so they are their own kind: an attempt resolved by a fresh revision (asked with the failed check) is
trained as if that answer had been its first, after the first turn's context alone. The same attempt also gives a
DPO pair with no sibling needed: its first answer rejected, the revision's answer chosen, after that context
(report: 'dpo_from_revisions'). The 0.5B's outcome is nearly a property of the task, so siblings with mixed
outcomes are rare (4 in 100 tasks at T=0.8, README); a revision that fixed its own first answer is the common case.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.models.base import EXTRA_KEY, Message, recorded_logprobs
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.train.canonical import PROMPT_MODES, canonical_trajectory
from agent_selfevolve.train.jsonl import Row, data_hash, read_jsonl, rows_to_jsonl, write_jsonl
from agent_selfevolve.train.shown import final_view, has_fresh_revisions, segment_views, shown_segments, turn_steps
from agent_selfevolve.trajectory import INFRA_FAILURES, Status, Trajectory, used_native_tools

__all__ = ["ROW_KINDS", "DatasetReport", "HeldOutLeakError", "Row", "assert_no_held_out", "build_dataset",
           "data_hash", "dedup_rows", "dpo_pairs", "mean_policy_logprob", "policy_logprob", "rationalized_rows",
           "read_jsonl", "recovery_rows", "rows_to_jsonl", "sft_rows", "why_empty", "write_jsonl"]
"""The file helpers live in `jsonl.py` and are re-exported here, where callers have always found them."""

log = logging.getLogger(__name__)

ROW_KINDS = ("sft", "recovery", "dpo", "rationalized")
"""Every row kind, in the order arms are named (`sft+recovery+dpo`)."""
REFLECTION = ("Looking back: my previous step was wrong{why}. That approach does not work, so I will go back to "
              "where I was before it and take a different path.")


class HeldOutLeakError(ValueError):
    """A row was built from a task that must stay out of training (it is used to measure the model)."""


@dataclass
class DatasetReport:
    sft: int = 0
    dpo: int = 0
    recovery: int = 0
    rationalized: int = 0
    dpo_from_revisions: int = 0
    """DPO pairs of an attempt's own first answer against its successful fresh revision (no sibling)."""
    duplicates: int = 0
    held_out_skipped: int = 0
    prompts: str = "canonical"
    """How the first user message was built: 'canonical' (unguided) or 'as_run'."""
    unfinished_skipped: int = 0
    """Attempts stopped at a tree search's step chunk: continued by descendants, never paired."""
    not_canonical: int = 0
    """Attempts whose guided prompt could not be rebuilt unguided (left out in 'canonical' mode)."""
    segmented: int = 0
    """Attempts with fresh revisions: their rows come from the contexts the model was shown (`shown.py`)."""
    sft_policy_logprob: float | None = None
    """Mean log-prob per trained token the policy gave its own SFT rows when it sampled them (rows recorded by an
    engine that keeps log-probs, see `policy_logprob`). Near 0 means the rows are what the policy writes anyway."""
    sft_rows_scored: int = 0
    """SFT rows that `sft_policy_logprob` averages over."""
    empty: dict[str, str] = field(default_factory=dict)
    """Requested kind -> why it produced no rows."""
    notes: list[str] = field(default_factory=list)


# -- small helpers ------------------------------------------------------------------------------------------------
def _canon_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    return {"name": fn.get("name", ""), "arguments": args}


def message_key(msg: Message) -> str:
    """Content identity of a message, ignoring tool-call ids (two attempts never share those)."""
    calls = [_canon_call(c) for c in msg.get("tool_calls") or []]
    return json.dumps([msg.get("role"), msg.get("content") or "", calls], sort_keys=True, default=str)


def message_key_list(messages: Sequence[Message]) -> list[str]:
    return [message_key(m) for m in messages]


def shared_prefix_len(a: Sequence[Message], b: Sequence[Message]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if message_key(x) != message_key(y):
            break
        n += 1
    return n


def _first_assistant(messages: Sequence[Message]) -> int:
    return next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))


def branch_point(a: Sequence[Message], b: Sequence[Message]) -> int | None:
    """Where two siblings part: the last index within their shared prefix where both have an assistant turn.

    Never before the first assistant turn (the prompt is at least system+user); None if the prompts differ."""
    head = _first_assistant(a)
    shared = shared_prefix_len(a, b)
    if head != _first_assistant(b) or shared < head:
        return None
    k = shared
    while k > head and not (k < len(a) and k < len(b) and a[k].get("role") == b[k].get("role") == "assistant"):
        k -= 1
    return k


def row_hash(row: Row) -> str:
    """Content hash of a row without its meta or tool-call ids: equal training content, equal hash."""
    body = {}
    for k, v in sorted(row.items()):
        if k == "meta":
            continue
        is_chat = isinstance(v, list) and all(isinstance(m, dict) and "role" in m for m in v)
        body[k] = [[message_key(m), m.get("weight", 1)] for m in v] if is_chat else v
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _turn_errors(traj: Trajectory) -> dict[int, str]:
    """Assistant message index -> the error its action produced ('' if it had none).

    Steps are matched to assistant turns in order: one step per tool call, or one for a text action / format
    error (`shown.turn_steps`). A turn with no matching step (the attempt stopped) counts as error-free."""
    errors: dict[int, str] = {}
    for i, steps in turn_steps(traj):
        why = ""
        for step in steps:
            if step.get("format_error"):
                why = why or f"format error: {step['format_error']}"
            elif step.get("observation_error"):
                why = why or f"tool error: {str(step.get('observation', ''))}"
        errors[i] = why
    return errors


def _turn_end(messages: Sequence[Message], i: int) -> int:
    """Index just past assistant turn i and the observations that answer it."""
    j = i + 1
    while j < len(messages) and messages[j].get("role") != "assistant":
        j += 1
    return j


def _trim_tail(messages: list[Message]) -> list[Message]:
    """Drop what follows the last assistant turn (the final observation): no loss there, only tokens."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages) - 1)
    return messages[:last + 1]


def _meta(kind: str, task_id: str, *trajs: Trajectory) -> dict[str, Any]:
    return {"kind": kind, "task_id": task_id, "run_id": trajs[0].run_id,
            "attempt_ids": [t.attempt_id for t in trajs], "rewards": [t.reward for t in trajs]}


def policy_logprob(messages: Sequence[Message]) -> tuple[float, int] | None:
    """(mean log-prob per token, tokens) the policy gave its trained replies in `messages` (assistant turns of
    non-zero weight) as it sampled them; None unless every such turn was recorded with log-probs."""
    total, count = 0.0, 0
    for m in messages:
        if m.get("role") != "assistant" or m.get("weight", 1) == 0:
            continue
        lps = recorded_logprobs(m)
        if lps is None:
            return None
        total, count = total + sum(lps), count + len(lps)
    return (total / count, count) if count else None


def mean_policy_logprob(rows: Iterable[Row]) -> tuple[float | None, int]:
    """(token-weighted mean of the rows' `policy_logprob`, rows that have one): (None, 0) when none has."""
    scored = [r["meta"] for r in rows if "policy_logprob" in r.get("meta", {})]
    tokens = sum(m["policy_tokens"] for m in scored)
    if not tokens:
        return None, 0
    return sum(m["policy_logprob"] * m["policy_tokens"] for m in scored) / tokens, len(scored)


def _without_logprobs(row: Row) -> Row:
    """The row with its messages' per-token log-probs left out (a new row; trajectories are not touched). Rows keep
    the sampled token ids, which training uses; the meta's summary says what the log-probs did, and the rows files
    stay small enough to commit."""
    def lean(m: Any) -> Any:
        extra = m.get(EXTRA_KEY) if isinstance(m, dict) else None
        if not (isinstance(extra, dict) and "logprobs" in extra):
            return m
        return {**m, EXTRA_KEY: {k: v for k, v in extra.items() if k != "logprobs"}}

    return {k: [lean(m) for m in v] if isinstance(v, list) else v for k, v in row.items()}


def _with_tools(row: Row, traj: Trajectory) -> Row:
    if traj.tools and used_native_tools(traj.messages):
        row["tools"] = traj.tools
    return row


UNFINISHED = (Status.UNFINISHED, Status.RUNNING)
"""Attempts that did not end: a tree search stopped them at a step chunk (`attempt.UNFINISHED`) and went on in
their children, or they never finished."""


def _finished(t: Trajectory) -> bool:
    return t.status not in UNFINISHED


def _siblings(trajs: Iterable[Trajectory]) -> dict[tuple[str, str], list[Trajectory]]:
    """Finished, graded attempts grouped by (run_id, task_id); unfinished ones and infrastructure failures left
    out (an infrastructure failure says nothing about the policy), so neither ever becomes a 'rejected' side or
    a failed path."""
    groups: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if _finished(t) and t.evaluation is not None and t.messages \
                and (t.resolved or t.status not in INFRA_FAILURES):
            groups[(t.run_id, t.task_id)].append(t)
    return groups


def _visible(trajs: Iterable[Trajectory], held_out: set[str], report: DatasetReport | None) -> list[Trajectory]:
    out = []
    for t in trajs:
        if t.task_id in held_out:
            if report is not None:
                report.held_out_skipped += 1
            continue
        out.append(t)
    return out


def _pair(f: Trajectory, successes: list[Trajectory]) -> tuple[Trajectory, Trajectory, Trajectory]:
    """(a segment of `f`, the successful sibling closest to it, that sibling's final segment): longest shared
    prefix, then highest reward, then id, then `f`'s earlier segment. Without fresh revisions: (f, s, s)."""
    finals = [(s, final_view(s)) for s in successes]
    return max(((fv, s, sv) for fv in segment_views(f) for s, sv in finals),
               key=lambda c: (shared_prefix_len(c[0].messages, c[2].messages), c[1].reward, c[1].attempt_id))


# -- builders -----------------------------------------------------------------------------------------------------
def sft_rows(trajs: Iterable[Trajectory], held_out: Iterable[str] = (), min_reward: float | None = None,
             report: DatasetReport | None = None) -> list[Row]:
    """One row per resolved trajectory: the messages the model was shown for its final turn, with its replies in
    that context (all of them without fresh revisions). Turns that were format errors get weight 0: a success is
    not a reason to imitate a malformed reply."""
    rows = []
    for t in _visible(trajs, set(held_out), report):
        if not t.resolved or not _finished(t) or (min_reward is not None and t.reward < min_reward):
            continue
        v = final_view(t)
        errors = _turn_errors(v)
        messages = copy.deepcopy(v.messages)
        for i, why in errors.items():
            if why.startswith("format error"):
                messages[i]["weight"] = 0
        meta = _meta("sft", t.task_id, t)
        messages = _trim_tail(messages)
        if (scored := policy_logprob(messages)) is not None:
            meta["policy_logprob"], meta["policy_tokens"] = round(scored[0], 5), scored[1]
        rows.append(_with_tools({"messages": messages, "meta": meta}, v))
    return rows


def revised_answer(traj: Trajectory) -> tuple[list[Message], Message, Message] | None:
    """(the first turn's context, the first answer, the final answer) of a resolved attempt whose final turn was a
    fresh revision; None otherwise (no revision, or the attempt went on in the whole conversation after it)."""
    if not traj.resolved or not _finished(traj) or not has_fresh_revisions(traj):
        return None
    segments = shown_segments(traj)
    first, last = segments[0], segments[-1]
    if not last.fresh or first.fresh or not first.replies or not _changed_the_code(last.steps[-1:]):
        return None
    i = first.replies[0]
    return copy.deepcopy(first.messages[:i]), copy.deepcopy(first.messages[i]), copy.deepcopy(
        last.messages[last.replies[0]])


def _changed_the_code(final: list[dict[str, Any]]) -> bool:
    """Whether the final step was an edit that went in (a file written, not an error, not the code given back
    unchanged): a revision that only submitted or ran a command is not the answer that solved the task (the hidden
    tests may pass an earlier answer the visible checks failed)."""
    if not final or not final[0].get("action") or final[0].get("observation_error"):
        return False
    info = final[0].get("info") or {}
    return bool(info.get("path")) and not info.get("unchanged")


def rationalized_rows(trajs: Iterable[Trajectory], held_out: Iterable[str] = (),
                      report: DatasetReport | None = None) -> list[Row]:
    """For each attempt resolved by a fresh revision: the first turn's context, then the revision's answer (see
    the module's docstring)."""
    rows = []
    for t in _visible(trajs, set(held_out), report):
        if (found := revised_answer(t)) is not None:
            context, _, answer = found
            rows.append(_with_tools({"messages": [*context, answer], "meta": _meta("rationalized", t.task_id, t)},
                                    t))
    return rows


def dpo_pairs(trajs: Iterable[Trajectory], held_out: Iterable[str] = (), max_pairs_per_task: int | None = None,
              report: DatasetReport | None = None) -> list[Row]:
    """For each failed sibling, one pair against its closest successful sibling, split at their branch point (of
    segments the model saw, for fresh revisions: see the module's docstring); and for each attempt resolved by a
    fresh revision, its first answer against the revision's after the first turn's context."""
    rows = []
    visible = _visible(trajs, set(held_out), report)
    for (_, task_id), group in sorted(_siblings(visible).items()):
        wins = [t for t in group if t.resolved]
        losses = [t for t in group if not t.resolved]
        if not wins or not losses:
            continue
        task_rows = []
        for f in losses:
            fv, s, sv = _pair(f, wins)
            k = branch_point(sv.messages, fv.messages)
            if k is None:
                continue
            chosen, rejected = _trim_tail(sv.messages[k:]), _trim_tail(fv.messages[k:])
            if not any(m.get("role") == "assistant" for m in chosen) \
                    or message_key_list(chosen) == message_key_list(rejected):
                continue
            task_rows.append(_with_tools({"prompt": copy.deepcopy(sv.messages[:k]), "chosen": copy.deepcopy(chosen),
                                          "rejected": copy.deepcopy(rejected), "meta": _meta("dpo", task_id, s, f)},
                                         sv))
        rows.extend(task_rows[:max_pairs_per_task] if max_pairs_per_task else task_rows)
    for t in visible:  # after the siblings' pairs, so a duplicate keeps the pair whose sides were both seen
        found = revised_answer(t)
        if found is None or message_key(found[1]) == message_key(found[2]):
            continue
        context, first, answer = found
        rows.append(_with_tools({"prompt": context, "chosen": [answer], "rejected": [first],
                                 "meta": {**_meta("dpo", t.task_id, t, t), "source": "revision"}}, t))
    return rows


def recovery_rows(trajs: Iterable[Trajectory], held_out: Iterable[str] = (),
                  report: DatasetReport | None = None) -> list[Row]:
    """Failed path up to its first wrong step, a reflection, then the successful sibling's continuation (segments
    the model saw, for fresh revisions: see the module's docstring)."""
    rows = []
    for (_, task_id), group in sorted(_siblings(_visible(trajs, set(held_out), report)).items()):
        wins = [t for t in group if t.resolved]
        for f in (t for t in group if not t.resolved):
            if not wins:
                break
            fv, s, sv = _pair(f, wins)
            f_messages = fv.messages
            k = branch_point(sv.messages, f_messages)
            if k is None or k >= len(sv.messages) or k >= len(f_messages) or f_messages[k].get("role") != "assistant":
                continue
            errors = _turn_errors(fv)
            wrong = next((i for i in sorted(errors) if i >= k and errors[i]), k)
            bad = copy.deepcopy(f_messages[k:_turn_end(f_messages, wrong)])
            for m in bad:
                if m.get("role") == "assistant":
                    m["weight"] = 0
            good = copy.deepcopy(sv.messages[k:])
            why = errors.get(wrong, "").splitlines()[0][:200] if errors.get(wrong) else ""
            reflection = REFLECTION.format(why=f" ({why})" if why else "")
            good[0]["content"] = reflection + ("\n\n" + good[0]["content"] if good[0].get("content") else "")
            good[0].pop(EXTRA_KEY, None)  # its recorded token ids spell the text without the reflection
            messages = copy.deepcopy(sv.messages[:k]) + bad + _trim_tail(good)
            rows.append(_with_tools({"messages": messages, "meta": {**_meta("recovery", task_id, f, s),
                                                                     "wrong_step": wrong, "branch": k}}, sv))
    return rows


def build_dataset(source: TrajectoryStore | Iterable[Trajectory], *, run_id: str | None = None,
                  held_out: Iterable[str] = (), kinds: Sequence[str] = ("sft",), min_reward: float | None = None,
                  max_pairs_per_task: int | None = None, prompts: str = "canonical",
                  ) -> tuple[dict[str, list[Row]], DatasetReport]:
    """Rows of each requested kind (ROW_KINDS), deduplicated, with held-out tasks excluded.

    `prompts`: 'canonical' (default) rebuilds each first user message without search strategy/guidance, as
    evaluation prompts are; 'as_run' keeps it as served. Returns {kind: rows} and a report (which prompts, and why
    any requested kind is empty, also logged); held-out exclusion is checked again on the output, not assumed."""
    if prompts not in PROMPT_MODES:
        raise ValueError(f"unknown prompts '{prompts}': {' or '.join(PROMPT_MODES)}")
    trajs = source.attempts(run_id=run_id) if isinstance(source, TrajectoryStore) else list(source)
    if run_id is not None:
        trajs = [t for t in trajs if t.run_id == run_id]
    held = set(held_out)
    report = DatasetReport(prompts=prompts)
    visible = _visible(trajs, held, report)
    report.unfinished_skipped = sum(not _finished(t) for t in visible)
    report.segmented = sum(has_fresh_revisions(t) for t in visible)
    if prompts == "canonical":
        rebuilt = [canonical_trajectory(t) for t in visible]
        report.not_canonical = sum(t is None for t in rebuilt)
        visible = [t for t in rebuilt if t is not None]
    builders = {"sft": lambda: sft_rows(visible, held, min_reward),
                "dpo": lambda: dpo_pairs(visible, held, max_pairs_per_task),
                "recovery": lambda: recovery_rows(visible, held),
                "rationalized": lambda: rationalized_rows(visible, held)}
    out: dict[str, list[Row]] = {}
    for kind in kinds:
        if kind not in builders:
            raise ValueError(f"unknown row kind '{kind}': {', '.join(ROW_KINDS)}")
        rows, dropped = dedup_rows(_without_logprobs(row) for row in builders[kind]())
        assert_no_held_out(rows, held)
        report.duplicates += dropped
        setattr(report, kind, len(rows))
        if kind == "sft":
            report.sft_policy_logprob, report.sft_rows_scored = mean_policy_logprob(rows)
        if kind == "dpo":
            report.dpo_from_revisions = sum(r["meta"].get("source") == "revision" for r in rows)
        out[kind] = rows
        if not rows:
            report.empty[kind] = why_empty(kind, visible, report)
            log.warning("no %s rows: %s", kind, report.empty[kind])
            report.notes.append(f"no {kind} rows: {report.empty[kind]}")
    return out, report


def why_empty(kind: str, trajs: Sequence[Trajectory], report: DatasetReport) -> str:
    """A reason a requested kind produced no rows from `trajs` (the held-out-free, prompt-rebuilt trajectories)."""
    skipped = []
    if report.unfinished_skipped:
        skipped.append(f"{report.unfinished_skipped} unfinished attempt(s) skipped")
    if report.not_canonical:
        skipped.append(f"{report.not_canonical} whose prompt could not be made canonical")
    tail = f" ({'; '.join(skipped)})" if skipped else ""
    if not trajs:
        return "no trajectories outside the held-out set" + tail
    if kind == "sft":
        if not any(t.resolved and _finished(t) for t in trajs):
            return f"none of {len(trajs)} attempts resolved its task" + tail
        return "every resolved attempt was below min_reward" + tail
    if kind == "rationalized":
        return ("no resolved attempt ended with a fresh revision (these rows need a set-up that revises afresh "
                "after a failed check: selfcheck)" + tail)
    groups = _siblings(trajs)
    both = [g for g in groups.values() if any(t.resolved for t in g) and any(not t.resolved for t in g)]
    if not both:
        return ("no task has both a resolved and a failed finished attempt in one run (these rows need siblings: "
                "a search with several attempts per task)" + tail)
    pairs = [_pair(f, [t for t in g if t.resolved]) for g in both for f in g if not f.resolved]
    if all(branch_point(sv.messages, fv.messages) is None for fv, _, sv in pairs):
        hint = ("a guided search such as SE-Agent gives each attempt its own strategy/guidance; prompts='canonical' "
                "removes it" if report.prompts == "as_run" else "their prompts were built differently")
        return (f"{len(both)} task(s) have a resolved and a failed sibling, but no pair shares its first messages "
                f"({hint})" + tail)
    return f"{len(both)} task(s) have a resolved and a failed sibling, but no pair differs after its prompt" + tail


def dedup_rows(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """Drop rows whose training content (everything but meta) was already seen; returns (rows, dropped)."""
    seen: set[str] = set()
    out: list[Row] = []
    dropped = 0
    for row in rows:
        h = row_hash(row)
        if h in seen:
            dropped += 1
            continue
        seen.add(h)
        out.append(row)
    return out, dropped


def assert_no_held_out(rows: Iterable[Row], held_out: Iterable[str]) -> None:
    """Raise if any row came from a held-out task (by meta.task_id); rows without meta cannot be checked."""
    held = set(held_out)
    if not held:
        return
    for i, row in enumerate(rows):
        meta = row.get("meta")
        if meta is None:
            raise HeldOutLeakError(f"row {i} has no meta.task_id, so held-out exclusion cannot be checked")
        if meta.get("task_id") in held:
            raise HeldOutLeakError(f"row {i} comes from held-out task '{meta['task_id']}'")
