"""BrowserGym's own env behind our Environment protocol: a MiniWoB task from `browsergym-miniwob` (pages from the
`miniwob` wheel over file://, the system Chromium) through run_attempt and best-of-N, with a FAKE scripted model
that reads the observation. The reward is BrowserGym's validation; bad actions are error observations; no browser
process outlives its attempt."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.agent import Limits
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.tasks import Task, TaskFileError, load_tasks

pytest.importorskip("playwright")
pytest.importorskip("browsergym.miniwob")
from agent_selfevolve.browsergym_tasks import browsergym_miniwob_tasks  # noqa: E402
from agent_selfevolve.envs.browsergym_map import ActionError, to_action  # noqa: E402

web = pytest.mark.web
SEED = 3  # click-button seed 3: the goal is one of several buttons


def last_observation(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] or "" for m in reversed(messages) if m["role"] in ("tool", "user"))


def button_ids(obs: str) -> dict[str, str]:
    return dict(re.findall(r"- button '([^']*)'[^\n]*? \[id=(\w+)\]", obs))


def goal_button(messages: list[dict[str, Any]]) -> str:
    m = re.search(r'Goal: Click on the "([^"]+)" button', messages[1]["content"])
    assert m, messages[1]["content"]
    return m.group(1)


def chromium_descendants() -> set[int]:
    """Chromium processes below this test process (other sessions' browsers on the machine are not counted)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - mine
        mine |= frontier
    out = set()
    for pid in mine:
        with_cmd = Path(f"/proc/{pid}/cmdline")
        try:
            if b"chrom" in with_cmd.read_bytes():
                out.add(pid)
        except OSError:
            continue
    return out


def cmdline(pid: int) -> str:
    """A process's command line for a failure message ('' once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:160].decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def task() -> Task:
    return browsergym_miniwob_tasks(["click-button"], seeds=[SEED])[0]


@web
def test_run_attempt_gets_browsergym_reward_errors_are_observations_and_no_browser_is_left(task: Task) -> None:
    before = chromium_descendants()
    during: set[int] = set()
    script = iter([tool_call("click", {"id": "9999"}), tool_call("teleport", {}),
                   tool_call("fill", {"id": "not an id!", "text": "x"})])

    def responder(messages: list[dict[str, Any]]) -> dict[str, Any]:
        during.update(chromium_descendants() - before)
        planned = next(script, None)
        if planned is not None:
            return planned
        return tool_call("click", {"id": button_ids(last_observation(messages))[goal_button(messages)]})

    traj = run_attempt(task, ScriptedFakeModel(responder), AttemptSpec(task.instance_id, attempt_id="bg-ok"))
    assert traj.status == "submitted", traj.exit_message
    assert traj.resolved and traj.reward == 1.0 and traj.evaluation
    assert traj.evaluation["source"] == "browsergym"
    assert traj.evaluation["details"]["task_info"]["RAW_REWARD_GLOBAL"] == 1  # BrowserGym's MiniWoB validation
    steps = traj.steps
    assert steps[0]["observation_error"] and 'Could not find element with bid "9999"' in steps[0]["observation"]
    assert "Unknown tool 'teleport'" in steps[1]["format_error"]  # the agent loop refuses tools the env lacks
    assert steps[2]["observation_error"] and "is not an element id" in steps[2]["observation"]
    assert all("Goal: Click on the" in steps[i]["observation"] and "- button '" in steps[i]["observation"]
               for i in (0, 2))  # the page stays shown with the error
    assert [(s["action"] or {}).get("name") for s in steps] == ["click", None, "fill", "click"]
    json.dumps(traj.to_dict())
    assert during, "the attempt's browsers were seen while it ran"  # so the check below can fail
    for _ in range(300):  # closing is asynchronous at the OS level (slower on a loaded machine): wait for reaping
        if not during & chromium_descendants():
            break
        time.sleep(0.1)
    left = during & chromium_descendants()
    assert not left, "a browser of the finished attempt still runs 30 s after it: " + "; ".join(map(cmdline, left))

    def wrong(messages: list[dict[str, Any]]) -> dict[str, Any]:
        ids = button_ids(last_observation(messages))
        return tool_call("click", {"id": next(i for name, i in ids.items() if name != goal_button(messages))})

    miss = run_attempt(task, ScriptedFakeModel(wrong), AttemptSpec(task.instance_id, attempt_id="bg-miss"))
    assert miss.status == "submitted" and not miss.resolved and miss.reward == 0.0
    assert miss.evaluation and miss.evaluation["details"]["terminated"] is True  # the page ended the episode
    assert miss.evaluation["details"]["task_info"]["RAW_REWARD_GLOBAL"] == -1


@web
def test_the_web_judge_reads_the_clicked_elements_label_and_never_the_pages_verdict(task: Task) -> None:
    """Judge selection on a real MiniWoB attempt: the judge's prompt (a FAKE judge model records it) names the
    goal and the button each attempt clicked by its label, so a right and a wrong click read differently; the
    page's verdict (BrowserGym's reward and task_info) never reaches it."""
    from agent_selfevolve.search.rewards import llm_judge

    def right(messages: list[dict[str, Any]]) -> dict[str, Any]:
        return tool_call("click", {"id": button_ids(last_observation(messages))[goal_button(messages)]})

    def wrong(messages: list[dict[str, Any]]) -> dict[str, Any]:
        ids = button_ids(last_observation(messages))
        return tool_call("click", {"id": next(i for name, i in ids.items() if name != goal_button(messages))})

    for name, agent in (("right", right), ("wrong", wrong)):
        judge_model = ScriptedFakeModel(['{"score": 6, "reason": "r"}'])
        traj = run_attempt(task, ScriptedFakeModel(agent), AttemptSpec(task.instance_id, attempt_id=f"bg-j-{name}"),
                           select_with="judge", judge=llm_judge(judge_model))
        assert traj.selection["source"] == "judge" and traj.selection["reward"] == 0.6
        assert traj.resolved == (name == "right")  # graded by the page all the same
        prompt = judge_model.requests[0][0]["content"]
        goal = goal_button(traj.messages)
        clicked = traj.steps[0]["action"]["arguments"]["id"]
        label = next(n for n, i in button_ids(traj.messages[1]["content"]).items() if i == clicked)
        assert f'Goal: Click on the "{goal}" button' in prompt
        assert f"0. click [{clicked}] button '{label}'" in prompt
        assert "REWARD" not in prompt and "reward" not in prompt.lower()


@web
def test_best_of_n_keeps_the_attempt_browsergym_validated(tmp_path: Path) -> None:
    """On click-link, whose links are clickable <span>s: the observation must give them ids to be solvable."""
    from agent_selfevolve.search import best_of_n
    from agent_selfevolve.search.common import SearchContext
    from agent_selfevolve.store import TrajectoryStore

    turns = itertools.count()

    def agent(messages: list[dict[str, Any]]) -> dict[str, Any]:
        """FAKE: each attempt makes one call. The first claims success without acting (BrowserGym: 0); the other
        clicks the goal's link, which ends the episode (BrowserGym: 1)."""
        if next(turns) == 0:
            return tool_call("stop", {"answer": "Done, I clicked it!"})
        link = re.search(r'Goal: Click on the link "([^"]+)"', messages[1]["content"])
        assert link, messages[1]["content"]
        m = re.search(rf"- generic '{re.escape(link.group(1))}', clickable \[id=(\w+)\]", last_observation(messages))
        assert m, last_observation(messages)
        return tool_call("click", {"id": m.group(1)})

    task = browsergym_miniwob_tasks(["click-link"], seeds=[SEED])[0]
    ctx = SearchContext(task=task, model=ScriptedFakeModel(agent), store=TrajectoryStore(tmp_path / "s.sqlite"),
                        limits=Limits(max_steps=4), select_with="tests")
    res = best_of_n(ctx, n=2, run_id="bon-bg", max_concurrency=2)
    trajs = ctx.store.attempts(run_id="bon-bg")
    assert sorted(t.resolved for t in trajs) == [False, True]  # the claim alone earns nothing from BrowserGym
    claim = next(t for t in trajs if not t.resolved)
    assert claim.outcome["answer"] == "Done, I clicked it!" and claim.reward == 0.0
    assert res.resolved and res.best_reward == 1.0
    best = ctx.store.get(res.best_attempt_id)
    assert best is not None and [s["action"]["name"] for s in best.steps] == ["click"]


def test_actions_map_to_browsergym_strings_its_parser_reads_back() -> None:
    from browsergym.core.action.parsers import highlevel_action_parser

    tricky = "it's \"quoted\"\nand two lines"
    cases = [(ToolCall("click", {"id": "[id=13]"}), ["click", ["13"]]),
             (ToolCall("fill", {"id": "14", "text": tricky}), ["fill", ["14", tricky]]),
             (ToolCall("select_option", {"id": "a7", "value": "Blue"}), ["select_option", ["a7", "Blue"]]),
             (ToolCall("press", {"key": "Enter"}), ["keyboard_press", ["Enter"]]),
             (ToolCall("scroll", {"direction": "up"}), ["scroll", [0, -300]]),
             (ToolCall("send_msg_to_user", {"text": "hi"}), ["send_msg_to_user", ["hi"]])]
    for call, expected in cases:
        parsed = highlevel_action_parser.parse_string(to_action(call), parse_all=True).as_list()
        assert parsed == [expected], (call, parsed)
    for bad in (ToolCall("click", {"id": "13'); import os; ('"}), ToolCall("goto", {"url": "http://x"}),
                ToolCall("scroll", {"direction": "sideways"})):
        with pytest.raises(ActionError):
            to_action(bad)


def test_task_files_name_browsergym_tasks_and_bad_specs_fail_at_load(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"instance_id": "bg1", "browsergym": {"task": "miniwob.click-test", "seed": 2}}))
    [t] = load_tasks(good)
    assert t.kind == "web" and t.start_url == "browsergym://miniwob.click-test" and "Goal:" in t.problem_statement
    bad = {"seed": {"task": "miniwob.click-test", "seed": "x"}, "task": {"task": "click test"},
           "reward": {"task": "miniwob.click-test"}, "colour": {"task": "miniwob.click-test", "colour": 1}}
    for name, spec in bad.items():
        record = {"instance_id": f"bad-{name}", "browsergym": spec}
        if name == "reward":
            record["reward"] = {"answer": "yes"}  # BrowserGym grades; a declared reward would be ignored
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        with pytest.raises(TaskFileError) as err:
            load_tasks(path)
        assert f"bad-{name}" in str(err.value) and (name if name != "colour" else "browsergym.colour") in str(err.value)


def test_task_source_lists_browsergym_miniwob_with_seeds() -> None:
    from agent_selfevolve.sources import resolve_tasks

    tasks = resolve_tasks("browsergym-miniwob", pattern=r"\.click-button\.")
    assert [t.instance_id for t in tasks] == [f"browsergym.miniwob.click-button.{s}" for s in (0, 1, 2)]
    assert len(resolve_tasks("browsergym-miniwob", locate=False)) >= 40 * 3
