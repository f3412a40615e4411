"""Training rows hold what the model was shown: a `selfcheck` fresh revision is asked the first turn with the failed
check after it, not the conversation, so its rows must not be built from `traj.messages`. Attempts run through the
real agent and sandbox on a tiny repository with a doctest, answered by a FAKE scripted model (not an LLM) that
records every request it received."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import WORDS_STUB, solution_task, words_with

from agent_selfevolve.action_format import FencedText
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.setups import get_setup
from agent_selfevolve.tasks import Task
from agent_selfevolve.train.dataset import build_dataset
from agent_selfevolve.train.shown import segment_views, shown_segments
from agent_selfevolve.trajectory import Trajectory

HIDDEN = "HIDDEN_TEST_MARK_0d4"
WRONG_MARK = "WRONG_CODE_MARK_93a"
REVISION_MARK = "REVISION_REPLY_MARK_7b2"
STUB = WORDS_STUB
RIGHT = words_with("    return s.replace(',', ' ').split()")
WRONG = words_with(f"    {WRONG_MARK} = 1\n    return s.split(',')")
OTHER = words_with("    return s.split(' ')")


def code(text: str) -> str:
    return f"Here is the function.\n```python\n{text}```"


SUBMIT = f"{REVISION_MARK}: I give up.\n```submit\n```"


@pytest.fixture
def task(tmp_path: Path) -> Task:
    hidden = f"from solution import words\n\n\ndef test_{HIDDEN}():\n    assert words('x,y z') == ['x', 'y', 'z']\n"
    return solution_task(tmp_path, STUB, hidden, f"test_{HIDDEN}", "fr__words-1")


def attempt(task: Task, replies: list[str], aid: str, run: str = "r1",
            context: str = "fresh") -> tuple[Trajectory, ScriptedFakeModel]:
    model = ScriptedFakeModel(replies, supports_tools=False)  # FAKE: keeps every request in model.requests
    setup = get_setup("selfcheck").with_overrides(revision_context=context)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id=aid, run_id=run), agent=setup)
    assert len(model.requests) == len(replies), (traj.status, traj.exit_message)
    return traj, model


def seen(model: ScriptedFakeModel, context: list[dict[str, Any]]) -> bool:
    """Whether the FAKE model received exactly these messages (as the text format renders them) in some call."""
    return FencedText().render_history(copy.deepcopy(context)) in model.requests


def test_the_sft_row_of_a_revised_attempt_is_its_final_call_as_the_model_received_it(task: Task) -> None:
    traj, model = attempt(task, [code(WRONG), code(RIGHT)], "revised")
    assert traj.status == "submitted" and traj.resolved
    assert [s["shown"] for s in traj.steps] == ["conversation", "fresh_revision"]
    assert any(WRONG_MARK in str(m.get("content")) for m in traj.messages)  # the conversation holds the wrong code
    out, report = build_dataset([traj], kinds=("sft",))
    [row] = out["sft"]
    assert WRONG_MARK not in json.dumps(row) and HIDDEN not in json.dumps(row)
    assert row["messages"][:-1] == model.requests[-1]
    assert row["messages"][-1] == {"role": "assistant", "content": code(RIGHT)}
    assert "An earlier answer failed the checks:" in row["messages"][-2]["content"]
    assert report.segmented == 1
    segments = shown_segments(traj)
    assert [seg.fresh for seg in segments] == [False, True]
    assert [ctx for seg in segments for ctx, _ in seg.turns()] == model.requests  # every call, in order


def test_a_rejected_fresh_reply_has_its_own_context_also_in_trajectories_that_did_not_record_it(task: Task) -> None:
    """A reply rejected as a format error during a revision was asked fresh too (and so is the next one: the format
    error's feedback is never shown). Stored trajectories from before rejected steps said so are told by the
    agent's own rule: after a failed check, in an attempt that asked fresh revisions."""
    traj, model = attempt(task, [code(WRONG), "I am not sure what to write.", code(RIGHT)], "rejected")
    assert traj.resolved and traj.steps[1]["action"] is None and traj.steps[1]["shown"] == "fresh_revision"
    segments = shown_segments(traj)
    assert [ctx for seg in segments for ctx, _ in seg.turns()] == model.requests
    assert model.requests[1] == model.requests[2]
    old = copy.deepcopy(traj)
    del old.steps[1]["shown"]
    assert [(s.messages, s.replies) for s in shown_segments(old)] == [(s.messages, s.replies) for s in segments]
    assert build_dataset([old], kinds=("sft",))[0] == build_dataset([traj], kinds=("sft",))[0]


def test_dpo_and_recovery_rows_only_join_contexts_the_models_were_shown(task: Task) -> None:
    """Siblings of one run: a first answer that passes against one that failed and then submitted (its revision,
    marked, answered a fresh context, not the conversation); and a revision that passes against one that did not,
    both asked after the same failed check."""
    right, right_model = attempt(task, [code(RIGHT)], "right")
    failed, failed_model = attempt(task, [code(WRONG), SUBMIT], "failed")
    revised, revised_model = attempt(task, [code(WRONG), code(RIGHT)], "revised", run="r2")
    other, other_model = attempt(task, [code(WRONG), code(OTHER), SUBMIT], "other", run="r2")
    assert right.resolved and revised.resolved and not failed.resolved and not other.resolved
    models = {"right": right_model, "failed": failed_model, "revised": revised_model, "other": other_model}
    out, report = build_dataset([right, failed, revised, other], kinds=("dpo", "recovery"))
    assert report.segmented == 3 and len(out["dpo"]) == 2 and len(out["recovery"]) == 2, report
    # `revised` against its own first answer (the next test) is r1's pair again: deduplicated, r1's kept
    assert report.dpo_from_revisions == 0 and report.duplicates == 1
    for row in out["dpo"]:
        win, lose = (models[a] for a in row["meta"]["attempt_ids"])
        for side, model in (("chosen", win), ("rejected", lose)):
            for j, m in enumerate(row[side]):
                assert m["role"] != "assistant" or seen(model, row["prompt"] + row[side][:j]), (side, j)
        assert REVISION_MARK not in json.dumps(row)  # the failed revision never follows the conversation
    first = next(r for r in out["dpo"] if r["meta"]["run_id"] == "r1")
    assert first["prompt"] == right_model.requests[0] and first["rejected"][0]["content"] == code(WRONG)
    again = next(r for r in out["dpo"] if r["meta"]["run_id"] == "r2")
    assert again["prompt"] == revised_model.requests[1] == other_model.requests[1]
    assert [m["content"] for m in again["chosen"] + again["rejected"]] == [code(RIGHT), code(OTHER)]
    for row in out["recovery"]:
        lose, win = (models[a] for a in row["meta"]["attempt_ids"])
        k = row["meta"]["branch"]
        messages = row["messages"]
        assert seen(lose, messages[:k]) and seen(win, messages[:k])
        assert messages[k]["weight"] == 0 and messages[-1]["content"].endswith(code(RIGHT))
        assert REVISION_MARK not in json.dumps(row)


def test_a_revision_that_fixed_the_first_answer_is_rationalized_and_paired_against_it(task: Task) -> None:
    """STaR's rationalization: the revision's answer (made with the failed check in view) is trained after the
    first turn's context alone, and chosen over the attempt's own first answer there. Not from an attempt right at
    once, nor one whose revision failed, nor one that saw the whole conversation."""
    revised, model = attempt(task, [code(WRONG), code(RIGHT)], "revised")
    right, _ = attempt(task, [code(RIGHT)], "right", run="r2")
    failed, _ = attempt(task, [code(WRONG), code(OTHER), SUBMIT], "failed", run="r3")
    history, _ = attempt(task, [code(WRONG), code(RIGHT)], "history", run="r4", context="history")
    out, report = build_dataset([revised, right, failed, history], kinds=("rationalized", "dpo"))
    [row] = out["rationalized"]
    first_context = model.requests[0]
    assert row["meta"]["attempt_ids"] == ["revised"]
    assert row["messages"] == [*first_context, {"role": "assistant", "content": code(RIGHT)}]
    assert "failed the checks" not in json.dumps(row) and HIDDEN not in json.dumps(row)
    [pair] = [r for r in out["dpo"] if r["meta"].get("source") == "revision"]
    assert pair["prompt"] == first_context and pair["meta"]["attempt_ids"] == ["revised", "revised"]
    assert pair["chosen"] == [{"role": "assistant", "content": code(RIGHT)}]
    assert [m["content"] for m in pair["rejected"]] == [code(WRONG)]
    assert report.rationalized == 1 and report.dpo_from_revisions == 1
    empty, why = build_dataset([right, history], kinds=("rationalized",))
    assert empty["rationalized"] == [] and "fresh revision" in why.empty["rationalized"]


def test_a_revision_that_only_submitted_is_not_the_answer_that_solved_the_task(task: Task) -> None:
    """The first answer fails the visible doctest but passes the hidden test; the fresh revision submits. The
    attempt is resolved, but by its first answer: no rationalized row teaches `submit`, no pair rejects the code
    that solved it."""
    body = "    return s.replace(',', ' ').split() if 'x' in s else []"
    hidden_only = STUB.replace("    raise NotImplementedError", body)
    traj, _ = attempt(task, [code(hidden_only), SUBMIT], "submitted")
    assert traj.resolved and traj.steps[-1]["shown"] == "fresh_revision" and traj.steps[-1]["action"]["name"] == \
        "submit"
    out, report = build_dataset([traj], kinds=("rationalized", "dpo"))
    assert out["rationalized"] == [] and out["dpo"] == [] and report.dpo_from_revisions == 0


def test_rows_of_attempts_that_saw_the_conversation_are_unchanged(task: Task) -> None:
    """`revision_context: history`: every turn saw the conversation, so rows are built from it as they always were
    (the wrong code is context the model really had); the same without the steps' "shown" (older trajectories)."""
    right, _ = attempt(task, [code(RIGHT)], "right", context="history")
    revised, model = attempt(task, [code(WRONG), code(RIGHT)], "revised", context="history")
    failed, _ = attempt(task, [code(WRONG), SUBMIT], "failed", context="history")
    trajs = [right, revised, failed]
    assert all(s["shown"] == "conversation" for t in trajs for s in t.steps)
    assert all(segment_views(t) == [t] and segment_views(t)[0] is t for t in trajs)
    out, report = build_dataset(trajs, kinds=("sft", "dpo", "recovery"))
    assert report.segmented == 0
    sft = {r["meta"]["attempt_ids"][0]: r for r in out["sft"]}
    assert sft["revised"]["messages"] == revised.messages[:-1]  # up to the last reply, as before
    assert sft["revised"]["messages"][:-1] == model.requests[-1] and WRONG_MARK in json.dumps(sft["revised"])
    [dpo] = out["dpo"]
    assert dpo["meta"]["attempt_ids"] == ["revised", "failed"]  # the sibling that shares the wrong first answer
    assert (dpo["prompt"], dpo["chosen"], dpo["rejected"]) == (revised.messages[:4], revised.messages[4:5],
                                                               failed.messages[4:5])
    assert REVISION_MARK in dpo["rejected"][0]["content"]  # answered after the conversation, which it was shown
    old = copy.deepcopy(trajs)
    for t in old:
        for s in t.steps:
            s.pop("shown")
    assert build_dataset(old, kinds=("sft", "dpo", "recovery"))[0] == out
