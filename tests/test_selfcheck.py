"""Self-correction: the `check` tool and the `selfcheck` set-up (checks after every edit, revise on failure, end
when they pass), with a FAKE scripted model (not an LLM). The checks are the visible ones; hidden tests never show."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import solution_task

from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.coding import CodingEnvironment
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.setups import get_setup
from agent_selfevolve.tasks import Task

MARK = "HIDDEN_SELFCHECK_MARK_71c2"
STUB = '''def words(s):
    """Split s at commas and spaces.

    words("Hi, my name") == ["Hi", "my", "name"]
    words("a,b") == ["a", "b"]
    """
    raise NotImplementedError
'''
RIGHT = STUB.replace("    raise NotImplementedError", "    return s.replace(',', ' ').split()")
WRONG = STUB.replace("    raise NotImplementedError", "    return s.split(',')")


@pytest.fixture
def task(tmp_path: Path) -> Task:
    hidden = f"from solution import words\n\n\ndef test_{MARK}():\n    assert words('x y') == ['x', 'y'], '{MARK}'\n"
    return solution_task(tmp_path, STUB, hidden, f"test_{MARK}", "sc__words-1")


def test_check_tool_reports_visible_failures_with_what_the_code_gave(task: Task) -> None:
    env = CodingEnvironment(task, "sc-tool", tools=["write_file", "check", "submit"])
    env.reset()
    assert "No checks found" in env.step(ToolCall("check", {})).text  # nothing edited yet
    env.step(ToolCall("write_file", {"path": "solution.py", "content": WRONG}))
    report = env.step(ToolCall("check", {}))
    assert "examples 1/2 passed" in report.text and "gave ['Hi', ' my name']" in report.text, report.text
    assert not report.info["all_passed"] and MARK not in report.text
    env.step(ToolCall("write_file", {"path": "solution.py", "content": RIGHT}))
    assert env.step(ToolCall("check", {})).info["all_passed"]
    env.close()


def test_selfcheck_attempt_revises_on_failure_and_ends_when_checks_pass(task: Task) -> None:
    profile = get_setup("selfcheck")
    seen: list[str] = []

    def respond(messages: list[dict]) -> str:
        seen.extend(str(m.get("content")) for m in messages)
        revising = any(m["role"] == "assistant" for m in messages) or "failed the checks" in messages[-1]["content"]
        return f"Here is the function.\n```python\n{RIGHT if revising else WRONG}```"  # as asked directly

    model = ScriptedFakeModel(respond, supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent=profile)
    assert traj.status == "submitted" and len(traj.steps) == 2, (traj.status, traj.exit_message)
    assert "examples 1/2 passed" in traj.steps[0]["observation"]
    assert "Every check passes: submitted." in traj.steps[1]["observation"]
    assert traj.resolved  # graded afterwards by the hidden test, which the model never saw
    assert not any(MARK in text for text in seen)
    assert "count_vowels" not in traj.messages[0]["content"]  # no worked example to copy


def test_no_visible_check_means_no_automatic_submit(task: Task, tmp_path: Path) -> None:
    env = CodingEnvironment(task, "sc-none", tools=["write_file", "submit"], check_on_write=True,
                            submit_when_checks_pass=True)
    env.reset()
    obs = env.step(ToolCall("write_file", {"path": "notes.py", "content": "X = 1\n"}))
    assert not obs.done and "No checks found" in obs.text
    env.close()


def test_a_repeated_edit_after_a_failed_check_is_resampled_not_counted_as_a_format_error(task: Task) -> None:
    """A greedy model repeats its failing function; the set-up asks again at a temperature and goes on (revisions
    greedy here, so that the resampling of a repeat is what is tested)."""
    profile = get_setup("selfcheck").with_overrides(revise_temperature=None)

    def respond(messages: list[dict]) -> str:
        sampled = model.params[-1].get("temperature", 0) > 0
        return f"```python\n{RIGHT if sampled else WRONG}```"  # FAKE: greedy = WRONG forever, sampled = RIGHT

    model = ScriptedFakeModel(respond, supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent=profile)
    assert traj.status == "submitted" and traj.resolved, (traj.status, traj.exit_message)
    assert [s.get("format_error") for s in traj.steps] == [None, None]
    assert len(model.requests) == 3 and traj.total_usage.calls == 3  # the repeat's call is counted, not hidden
    assert model.params[2]["temperature"] == profile.retry_temperature
    no_retry = {"agent": profile.with_overrides(repeat_retries=0)}
    model = ScriptedFakeModel(respond, supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id="no-retry"), **no_retry)
    assert traj.status == "stuck" and not traj.resolved


def test_an_edit_that_changes_only_the_docstring_is_refused(task: Task) -> None:
    """Shown `f(5) gave X, expected Y`, a small model rewrites the docstring's example instead of the code."""
    env = CodingEnvironment(task, "sc-docstring", tools=["python", "check", "submit"], check_on_write=True)
    env.reset()
    env.step(ToolCall("python", {"code": WRONG}))
    doctored = WRONG.replace('["Hi", "my", "name"]', "['Hi', ' my name']")
    obs = env.step(ToolCall("python", {"code": doctored}))
    assert obs.error and "only docstrings or comments differ" in obs.text
    assert (env.path / "solution.py").read_text().strip() == WRONG.strip()  # type: ignore[operator]
    assert "examples 1/2 passed" in env.step(ToolCall("check", {})).text  # the base version's examples still rule
    restored = env.step(ToolCall("python", {"code": STUB}))  # giving up: the stub the task started with
    assert restored.error and "started with" in restored.text
    assert (env.path / "solution.py").read_text().strip() == WRONG.strip()  # type: ignore[operator]
    env.close()


def test_the_selfcheck_first_turn_is_short_and_shows_code_not_docs(task: Task) -> None:
    """Kept close to the direct question (bench/first_turn_ablation.py): no tool list, no README, the ask last."""
    (Path(task.repo_path) / "README.md").write_text("README_MARK_9f3\n")
    subprocess.run("git add -A && git -c user.name=t -c user.email=t@t commit -qm readme", shell=True,
                   cwd=task.repo_path, check=True)
    model = ScriptedFakeModel(["```python\n" + RIGHT + "```"], supports_tools=False)
    run_attempt(task, model, AttemptSpec(task.instance_id), agent="selfcheck")
    system, user = model.requests[0][0]["content"], model.requests[0][1]["content"]
    assert "You can use these tools" not in system + user and "```submit" in user
    assert user.rstrip().endswith("in one ```python block.")  # the question the model answers best comes last
    assert "README_MARK_9f3" not in user and "def words(s):" in user
    model = ScriptedFakeModel(["```submit\n```"], supports_tools=False)
    run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id="small"),
                agent="small")
    assert "You can use these tools" in model.requests[0][0]["content"]
    assert "README_MARK_9f3" in model.requests[0][1]["content"]


def test_alternating_between_two_edits_is_a_repeat_of_the_same_state(task: Task) -> None:
    """A, B, A: the third action was already taken from this very repository state, so it can show nothing new;
    with no retries left it is a format error, never a third write."""
    other = WRONG.replace("s.split(',')", "s.split(' ')")
    replies = [f"```python\n{code}```" for code in (WRONG, other, WRONG, other)]
    model = ScriptedFakeModel(replies, supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id),
                       agent=get_setup("selfcheck").with_overrides(system_prompt="FAKE", repeat_retries=0))
    states = [s.get("info", {}).get("state") for s in traj.steps]
    assert states[0] != states[1] and states[0] != "base"
    assert traj.steps[2]["action"] is not None  # WRONG again, but from B's state: a real change back
    assert traj.steps[3]["action"] is None and "already ran this exact" in traj.steps[3]["format_error"]


def test_an_attempt_whose_resamples_repeat_too_ends_at_once(task: Task) -> None:
    """FAKE model stuck on one wrong function, greedy or sampled: one round of resampling shows it is stuck, so the
    attempt ends there instead of spending the format-error limit's rounds of calls."""
    model = ScriptedFakeModel(lambda messages: f"```python\n{WRONG}```", supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent="selfcheck")
    retries = get_setup("selfcheck").repeat_retries
    assert traj.status == "stuck" and "also when sampled" in traj.exit_message
    assert len(model.requests) == 1 + (1 + retries)  # the first write, then one round of greedy + resamples


def test_a_reply_repeating_its_refused_reply_is_resampled(task: Task) -> None:
    """Greedy, a small model answers its format error with the same reply (the 0.5B's ```json blocks on MiniWoB):
    the word-for-word repeat is not shown again but resampled at the set-up's retry temperature."""
    malformed = "I will write the function now."  # no block: a format error
    model = ScriptedFakeModel([malformed, malformed, f"```python\n{RIGHT}```", "```submit\n```"],
                              supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent="selfcheck")
    assert traj.steps[0]["format_error"] and traj.steps[1]["action"] is not None  # one refusal, then the resample
    assert model.params[2]["temperature"] == get_setup("selfcheck").retry_temperature
    assert "temperature" not in model.params[1] or model.params[1]["temperature"] != model.params[2]["temperature"]


def test_the_preview_leaves_out_a_file_the_issue_already_quotes(task: Task) -> None:
    """Shown twice (in the issue and again as the file), the 0.5B's first answer drifted from its direct one; a file
    the issue does not quote is still shown. With the selfcheck set-up's options, the issue-named code (for repos
    too big to show) does not show it either: it did, on every HumanEval task, until the review."""
    quoting = task.model_copy(update={"problem_statement": f"Implement `words`.\n\n```python\n{STUB}```"})
    for t, shown in ((quoting, False), (task, True)):
        env = CodingEnvironment(t, f"sc-preview-{shown}", **get_setup("selfcheck").environment.options())
        text = env.reset().text
        env.close()
        assert ("solution.py:\n```" in text) is shown, text
        assert "def words" not in text.replace(STUB, "", 1 if shown else 0), text  # never a second time


def test_a_revision_after_a_failed_check_is_sampled_and_a_first_answer_is_not(task: Task) -> None:
    """FAKE model: with `revise_temperature`, the replies after an edit whose checks failed are sampled (greedy
    gives the same logic back), until an edit passes them; the first answer stays greedy, as the direct question
    is asked. A search's per-attempt seed stays in the revision's seed, so siblings do not revise alike."""
    other = WRONG.replace("s.split(',')", "s.split(' ')")
    replies = [f"```python\n{code}```" for code in (WRONG, other, RIGHT)]
    model = ScriptedFakeModel(replies, supports_tools=False)
    setup = get_setup("selfcheck").with_overrides(revise_temperature=0.7, repeat_retries=0)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id, model_params={"seed": 5}), agent=setup)
    assert traj.status == "submitted" and len(model.params) == 3, (traj.status, model.params)
    assert model.params[0].get("temperature") in (None, 0, 0.0)
    assert [p.get("temperature") for p in model.params[1:]] == [0.7, 0.7]
    assert model.params[1]["seed"] != model.params[2]["seed"] and all(p["seed"] % 1000 == 5 for p in model.params[1:])
    greedy = ScriptedFakeModel(replies, supports_tools=False)
    run_attempt(task, greedy, AttemptSpec(task.instance_id, attempt_id="greedy"),
                agent=setup.with_overrides(revise_temperature=None))
    assert all(p.get("temperature") in (None, 0, 0.0) for p in greedy.params), greedy.params


def test_a_fresh_revision_shows_the_first_turn_and_the_failed_check_not_the_wrong_code(task: Task) -> None:
    """FAKE model. `revision_context: fresh` (the selfcheck set-up's): after a failed check the model is asked the
    first turn again with the failure after it; its wrong function is not in view (the 0.5B copied it back). The
    step says what was shown, and the hidden test never is."""
    marker = "WRONG_CODE_MARK_5e1"
    wrong = WRONG.replace("return s.split(',')", f"{marker} = 1\n    return s.split(',')")
    model = ScriptedFakeModel([f"```python\n{wrong}```", f"```python\n{RIGHT}```"], supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent="selfcheck")
    assert traj.status == "submitted" and traj.resolved and len(model.requests) == 2
    first, revision = model.requests
    assert len(revision) == len(first) and revision[0] == first[0]
    assert revision[-1]["content"].startswith(first[-1]["content"])
    assert "An earlier answer failed the checks:" in revision[-1]["content"]
    assert "gave ['Hi', ' my name']" in revision[-1]["content"], revision[-1]["content"]
    assert all(marker not in m["content"] and MARK not in m["content"] for m in revision)
    assert [s["shown"] for s in traj.steps] == ["conversation", "fresh_revision"]
    history = ScriptedFakeModel([f"```python\n{wrong}```", f"```python\n{RIGHT}```"], supports_tools=False)
    run_attempt(task, history, AttemptSpec(task.instance_id, attempt_id="history"),
                agent=get_setup("selfcheck").with_overrides(revision_context="history"))
    assert any(marker in m["content"] for m in history.requests[1])


def test_an_answer_giving_the_code_back_unchanged_is_revised_sampled_with_the_issue_in_view(task: Task) -> None:
    """FAKE model. The 0.5B answered factory tasks with the buggy function as it was (it saw no bug); asked again
    greedily it gave the same code, until the format-error limit. Such an answer is now revised like a failed
    check: sampled, the first turn again with a note that the unchanged code is wrong."""
    model = ScriptedFakeModel([f"```python\n{STUB}```", f"```python\n{RIGHT}```"], supports_tools=False)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id), agent="selfcheck")
    assert traj.status == "submitted" and traj.resolved and len(model.requests) == 2, traj.status
    assert traj.steps[0]["info"].get("unchanged") == "solution.py"
    assert model.params[1].get("temperature") == get_setup("selfcheck").revise_temperature
    first, revision = model.requests
    assert revision[-1]["content"].startswith(first[-1]["content"]) and "back unchanged" in revision[-1]["content"]
    assert traj.steps[1]["shown"] == "fresh_revision"
