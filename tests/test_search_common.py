"""Shared search machinery: best-of-N, budgets, judge/proxy selection, compute-matched baseline, CLI progress."""

import json
from pathlib import Path

import pytest
from conftest import solving_script
from typer.testing import CliRunner

from agent_selfevolve.agent import Limits
from agent_selfevolve.attempt import AttemptSpec, run_attempt, sampling_seeded
from agent_selfevolve.batch import BatchConfig, run_batch
from agent_selfevolve.cli import app
from agent_selfevolve.models.base import Usage
from agent_selfevolve.models.fake import ScriptedFakeModel, keyed_script, tool_call
from agent_selfevolve.search import Budget, SearchContext, best_of_n
from agent_selfevolve.search.rewards import llm_judge, parse_score
from agent_selfevolve.sources.humaneval import file_diff
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task


def responder(messages: list[dict]) -> dict:
    turn = sum(m["role"] == "assistant" for m in messages)
    return solving_script()[min(turn, 3)]


def test_best_of_n_runs_n_attempts_and_keeps_the_best(demo_task: Task, tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "s.sqlite")
    events: list[dict] = []
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=store, on_event=events.append)
    result = best_of_n(ctx, n=3, run_id="b1")
    assert result.attempts == 3 and result.resolved and result.pass_at_n
    assert result.stop_reason == "completed 3 attempts"
    assert store.count("b1") == 3 and result.usage["calls"] == 12
    assert [e["event"] for e in events].count("attempt_finished") == 3 and events[-1]["event"] == "search_finished"
    again = best_of_n(SearchContext(task=demo_task, model=ScriptedFakeModel([]), store=store), n=3, run_id="b1")
    assert again.to_dict() == result.to_dict()  # finished run: nothing re-run (the empty script would fail)


def test_sampled_siblings_draw_different_tokens_and_draw_them_again_on_a_rerun(demo_task: Task,
                                                                              tmp_path: Path) -> None:
    """FAKE model recording its sampling params. Backends seed every call (llama.cpp with 0), so best-of-N at
    T=0.8 once gave N copies of one attempt: each sampled attempt must carry its own seed, the same on a rerun,
    while a greedy attempt carries none (its revision and retry turns keep their fixed seeds)."""

    first = [p["seed"] for p in _params_of_run(demo_task, tmp_path / "a.sqlite", "seeded")]
    assert len(set(first)) == 3, first  # one seed per attempt, shared by its turns, none shared between attempts
    # the seed is a function of the attempt id alone, so a rerun (a new process, a resumed attempt) draws the same
    assert first == [sampling_seeded({"temperature": 0.8}, f"seeded:sample:{i}")["seed"] for i in range(3)]
    other = [p["seed"] for p in _params_of_run(demo_task, tmp_path / "b.sqlite", "other")]
    assert not set(other) & set(first)
    greedy = ScriptedFakeModel(responder)
    run_attempt(demo_task, greedy, AttemptSpec(demo_task.instance_id, model_params={"temperature": 0.0}))
    assert greedy.params and all("seed" not in p for p in greedy.params)


def _params_of_run(task: Task, store_path: Path, run_id: str) -> list[dict]:
    """The sampling params of the first call of each attempt of a T=0.8 best-of-3 (one attempt at a time, four
    calls each), in attempt order; every call of an attempt has its attempt's seed."""
    model = ScriptedFakeModel(responder)
    best_of_n(SearchContext(task=task, model=model, store=TrajectoryStore(store_path)), n=3, temperature=0.8,
              max_concurrency=1, run_id=run_id)
    assert len(model.params) == 12 and all(p["temperature"] == 0.8 for p in model.params)
    attempts = [model.params[i:i + 4] for i in range(0, 12, 4)]
    assert all(len({p["seed"] for p in calls}) == 1 for calls in attempts)
    return [calls[0] for calls in attempts]


def test_greedy_first_adds_the_greedy_attempt_and_it_wins_a_tie(demo_task: Task, tmp_path: Path) -> None:
    """FAKE model whose greedy attempt (temperature 0) takes a detour (one `ls` more) before the same fix the
    samples make: every attempt gets the same proxy reward, the samples are cheaper, and still the greedy attempt
    is chosen, since on a tie it is the model's most likely answer."""
    from agent_selfevolve.models.fake import bash

    def greedy_responder(messages: list[dict]) -> dict:
        turn = sum(m["role"] == "assistant" for m in messages)
        return [bash("ls"), *solving_script()][min(turn, 4)]

    class ByTemperature(ScriptedFakeModel):
        def chat(self, messages, tools=None, **params):  # type: ignore[no-untyped-def]
            self.script = greedy_responder if params.get("temperature") == 0.0 else responder
            return super().chat(messages, tools, **params)

    model, store = ByTemperature(responder), TrajectoryStore(tmp_path / "s.sqlite")
    result = best_of_n(SearchContext(task=demo_task, model=model, store=store), n=3, temperature=0.8,
                       greedy_first=True, max_concurrency=1, run_id="g")
    assert [p["temperature"] for p in model.params] == [0.0] * 5 + [0.8] * 8
    assert all("seed" not in p for p in model.params[:5]) and all("seed" in p for p in model.params[5:])
    attempts = {t.attempt_id: t for t in store.attempts(run_id="g")}
    assert sorted(attempts) == ["g:greedy:0", "g:sample:1", "g:sample:2"]
    assert len({t.reward for t in attempts.values()}) == 1 and all(t.resolved for t in attempts.values())
    tokens = {k: Usage.from_dict(t.usage).total_tokens for k, t in attempts.items()}
    assert tokens["g:greedy:0"] > tokens["g:sample:1"]
    assert result.best_attempt_id == "g:greedy:0"
    plain = best_of_n(SearchContext(task=demo_task, model=ByTemperature(responder), store=store), n=2,
                      temperature=0.8, max_concurrency=1, run_id="p")
    assert plain.best_attempt_id and ":sample:" in plain.best_attempt_id  # off by default: samples only


def test_budget_clips_attempts_and_stops_between_waves(demo_task: Task, tmp_path: Path) -> None:
    budget = Budget(max_tokens=1000)
    clipped = budget.clip(Limits(max_tokens=10_000), Usage(600, 100), share=3)
    assert clipped.max_tokens == 100  # (1000 - 700) // 3
    timed = Budget(max_wall_s=80).clip(Limits(max_wall_s=1800), Usage(), share=2, elapsed_s=50)
    assert timed.max_wall_s == 30  # wall time is spent together by concurrent attempts: not divided
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=TrajectoryStore(tmp_path / "s.db"),
                        budget=Budget(max_calls=6))
    result = best_of_n(ctx, n=10, wave_size=1, run_id="b2")
    assert result.stop_reason.startswith("budget: LLM calls") and result.usage["calls"] <= 8 and result.resolved


def test_stop_on_perfect_ends_best_of_n_after_the_wave_with_a_perfect_proxy_reward(demo_task: Task,
                                                                                   tmp_path: Path) -> None:
    """FAKE model that fixes the bug: its first attempt passes every visible check, so with `stop_on_perfect` the
    next wave is never planned; without it all N run (the fixed-N baseline)."""
    store = TrajectoryStore(tmp_path / "s.sqlite")
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=store)
    early = best_of_n(ctx, n=4, wave_size=1, stop_on_perfect=True, run_id="p1")
    assert early.attempts == 1 and early.stop_reason.startswith("a perfect selection reward"), early.stop_reason
    full = best_of_n(ctx, n=4, wave_size=1, run_id="p2")
    assert full.attempts == 4 and full.stop_reason == "completed 4 attempts"


def test_proxy_selection_never_reads_hidden_tests(demo_task: Task, demo_repo: Path) -> None:
    """The hidden tests add a failing, marked test to tests/test_calc.py, the very file the proxy runs for an
    edit of calc.py: had the proxy applied them, the fix would score below 1.0 and the marker would show."""
    marker = "test_hidden_marker_e41"
    visible = (demo_repo / "tests" / "test_calc.py").read_text()
    hidden = file_diff("tests/test_calc.py", visible, visible + f"\n\ndef {marker}():\n    assert False\n")
    task = demo_task.model_copy(update={"test_patch": hidden, "FAIL_TO_PASS": [f"tests/test_calc.py::{marker}"],
                                        "test_files": ["tests/test_calc.py"]})
    traj = run_attempt(task, ScriptedFakeModel(solving_script()))  # the default selection: the proxy
    assert traj.selection["source"] == "proxy" and traj.selection["reward"] == 1.0
    assert traj.selection["details"]["checks"]["repo_tests"]["files"] == ["tests/test_calc.py"]
    assert marker not in json.dumps(traj.selection)
    # ground truth is still recorded, for reports: the hidden test fails, and the grader's report names it
    assert traj.evaluation["source"] == "tests" and not traj.resolved and marker in json.dumps(traj.evaluation)


def test_judge_selection_needs_a_judge_and_auto_picks_one(demo_task: Task, tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="needs a judge"):
        SearchContext(task=demo_task, model=ScriptedFakeModel([]), store=store, select_with="judge")
    with pytest.raises(ValueError, match="needs a judge"):
        run_attempt(demo_task, ScriptedFakeModel([]), select_with="judge")
    with pytest.raises(ValueError, match="select_with must be one of"):
        SearchContext(task=demo_task, model=ScriptedFakeModel([]), store=store, select_with="hidden")
    judge = llm_judge(ScriptedFakeModel([]))
    assert SearchContext(task=demo_task, model=ScriptedFakeModel([]), store=store).select_with == "proxy"
    assert SearchContext(task=demo_task, model=ScriptedFakeModel([]), store=store, judge=judge).select_with == "judge"


def test_llm_judge_scores_and_never_sees_hidden_tests(demo_task: Task) -> None:
    assert parse_score('{"score": 7, "reason": "ok"}') == 7.0 and parse_score("Score: 4/10") == 4.0
    assert parse_score("no idea") is None
    judge_model = ScriptedFakeModel(['{"score": 8, "reason": "fixes add"}'])
    traj = run_attempt(demo_task, ScriptedFakeModel(solving_script()), AttemptSpec(demo_task.instance_id),
                       select_with="judge", judge=llm_judge(judge_model))
    assert traj.selection["source"] == "judge" and traj.selection["reward"] == 0.8
    prompt = judge_model.requests[0][0]["content"]
    assert "return a + b" in prompt and "test_add_hidden" not in prompt and demo_task.test_patch not in prompt


def test_the_web_judge_prompt_labels_each_target_from_the_page_it_was_on_and_hides_the_verdict() -> None:
    """A hand-made web attempt: the first click's id means 'Cheree' on the first page and something else on the
    second (ids change with the page), so the label must come from the page the action was taken on. A marker
    planted in the page's verdict, the evaluation and the selection never reaches the prompt."""
    from agent_selfevolve.trajectory import Trajectory

    marker = "VERDICT_MARKER_91"
    first = ("Goal: click on the file named \"Cheree\".\nPage:\n- list '' [id=16]\n  - listitem '', clickable [id=17]\n"
             "    - StaticText 'Cheree'\n  - listitem '', clickable [id=19]\n    - StaticText 'Sergio'\n")
    second = "Goal: ...\nLast action error: none\nPage:\n- button 'Submit' [id=17]\n- textbox 'Name' [id=20]\n"
    traj = Trajectory(attempt_id="w", task_id="web.t", model="m", status="submitted",
                      messages=[{"role": "system", "content": "s"}, {"role": "user", "content": first}],
                      steps=[{"index": 0, "action": {"name": "click", "arguments": {"id": "[id=17]"}},
                              "observation": second},
                             {"index": 1, "action": {"name": "fill", "arguments": {"id": "20", "text": "Ada"}},
                              "observation": "Last action error: none\nThe task page says the episode is over."},
                             {"index": 2, "format_error": "no action"}],
                      outcome={"answer": "", "reward_info": {"reward": 1.0, "note": marker}},
                      evaluation={"resolved": True, "details": marker}, selection={"source": "tests", "x": marker})
    task = Task(instance_id="web.t", kind="web", start_url="http://127.0.0.1:1/", problem_statement="p")
    judge_model = ScriptedFakeModel(['{"score": 9}'])
    verdict = llm_judge(judge_model)(task, traj)
    prompt = judge_model.requests[0][0]["content"]
    assert verdict["reward"] == 0.9 and verdict["source"] == "judge"
    assert "0. click [17] listitem '', clickable (text: Cheree)" in prompt
    assert "1. fill [20] textbox 'Name' text=\"Ada\"" in prompt and "2. (no valid action)" in prompt
    assert "Final answer: none" in prompt and 'click on the file named "Cheree"' in prompt
    assert marker not in prompt and "reward" not in prompt.lower()


def test_judge_calls_count_against_the_search_budget(demo_task: Task, tmp_path: Path) -> None:
    """Best-of-2 with judge selection: the search's usage is the agents' tokens plus one judge call per attempt,
    so 'equal tokens' means the same for judge and proxy selection."""
    judge_model = ScriptedFakeModel(['{"score": 8, "reason": "long enough to cost tokens"}'] * 2)
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(keyed_script({"": solving_script()})),
                        store=TrajectoryStore(tmp_path / "s.sqlite"), judge=llm_judge(judge_model))
    res = best_of_n(ctx, n=2, run_id="judged", max_concurrency=1)
    trajs = ctx.store.attempts(run_id="judged")
    agents = sum(t.total_usage.total_tokens for t in trajs)
    judged = sum(Usage.from_dict(t.selection["usage"]).total_tokens for t in trajs)
    assert len(trajs) == 2 and judged > 0 and {t.selection["source"] for t in trajs} == {"judge"}
    assert res.usage["prompt_tokens"] + res.usage["completion_tokens"] == agents + judged
    assert res.usage["calls"] == sum(t.total_usage.calls for t in trajs) + 2


def test_compute_matched_baseline_in_batch(demo_task: Task, tmp_path: Path) -> None:
    operator = json.dumps({"diagnosis": "d", "strategy": "s", "guidance": "g"})

    def respond(messages: list[dict]) -> dict | str:
        if "autonomous software engineer" not in messages[0]["content"]:
            return operator
        return keyed_script({"": solving_script()})(messages)

    model = ScriptedFakeModel(respond)
    from agent_selfevolve import models

    original = models.make_model
    models.make_model = lambda spec, **kw: model  # the batch worker builds its model by spec
    try:
        summary = run_batch([demo_task], tmp_path / "out", BatchConfig(model="fake:x", strategy="hgm",
                                                                     strategy_options={"max_evals": 2},
                                                                     baseline=True), executor="inline")
    finally:
        models.make_model = original
    assert summary["resolved_instances"] == 1
    assert summary["baseline"]["instances"] == 1 and summary["baseline"]["resolved_instances"] == 1
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert line["baseline"]["token_budget"] > 0 and line["baseline"]["attempts"] >= 1


def test_search_cli_shows_progress_and_writes_summary(demo_task: Task, tmp_path: Path) -> None:
    (tmp_path / "tasks.json").write_text(json.dumps([demo_task.model_dump()]))
    script = {"by_prompt": {"add()": [tool_call("bash", {"command": "ls"}), *solving_script()[1:]]}}
    (tmp_path / "fake.json").write_text(json.dumps(script))
    result = CliRunner().invoke(app, ["search", "--tasks", str(tmp_path / "tasks.json"), "--model",
                                      f"fake:{tmp_path / 'fake.json'}", "--n", "2", "--out", str(tmp_path / "o"),
                                      "--budget-tokens", "100000"])
    assert result.exit_code == 0, result.output
    assert "resolved 1/1" in result.output and "best 1.00" in result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["resolved_ids"] == [demo_task.instance_id]
    # the closing summary a newcomer reads: counts, cost, and a viewer page that exists
    text = " ".join(result.output.split())
    assert "Summary: 1 of 1 tasks resolved" in text and "with 2 attempts" in text, result.output
    line = json.loads((tmp_path / "o" / "results.jsonl").read_text().splitlines()[0])
    both = line["search_usage"]["prompt_tokens"] + line["search_usage"]["completion_tokens"]
    assert both > line["usage"]["prompt_tokens"] + line["usage"]["completion_tokens"]  # two attempts, one chosen
    assert f"and {both:,} tokens" in text, result.output
    page = tmp_path / "o" / "viewer" / f"{demo_task.instance_id}.html"
    assert page.is_file() and "<html" in page.read_text().lower()[:500]
    assert "look inside" in text and str(page) in "".join(result.output.split()), result.output  # rich wraps paths
    greedy = CliRunner().invoke(app, ["search", "--tasks", str(tmp_path / "tasks.json"), "--model",
                                      f"fake:{tmp_path / 'fake.json'}", "--n", "2", "--out", str(tmp_path / "g"),
                                      "--greedy-first"])
    assert greedy.exit_code == 0, greedy.output
    operators = sorted(t.operator for t in TrajectoryStore(tmp_path / "g" / "runs.sqlite").attempts())
    assert operators == ["greedy", "sample"]
    hgm = CliRunner().invoke(app, ["search", "--tasks", str(tmp_path / "tasks.json"), "--model",
                                   f"fake:{tmp_path / 'fake.json'}", "--strategy", "hgm", "--out", str(tmp_path / "h"),
                                   "--budget-calls", "6", "--greedy-first"])
    assert hgm.exit_code == 0, hgm.output
    hgm_store = TrajectoryStore(tmp_path / "h" / "runs.sqlite")
    ops = {t.attempt_id.rsplit(":", 1)[1]: t.operator for t in hgm_store.attempts()}
    assert ops["e0"] == "greedy" and "greedy" not in {op for e, op in ops.items() if e != "e0"}
    mcts = CliRunner().invoke(app, ["search", "--tasks", str(tmp_path / "tasks.json"), "--model",
                                    f"fake:{tmp_path / 'fake.json'}", "--strategy", "mcts",
                                    "--out", str(tmp_path / "m"), "--greedy-first"])
    assert mcts.exit_code == 2 and "not of mcts" in " ".join(mcts.output.split())
    assert not (tmp_path / "m" / "runs.sqlite").exists()  # refused before any search ran


def test_an_oracle_run_is_labelled_everywhere(demo_task: Task, tmp_path: Path) -> None:
    """Selection by the hidden tests makes `resolved` an oracle figure: the result, the CLI, summary.json,
    results.jsonl and the HTML report say so; a default (proxy) run says nothing of the kind."""
    from agent_selfevolve.viz.report import render_run_html, run_view

    (tmp_path / "tasks.json").write_text(json.dumps([demo_task.model_dump()]))
    (tmp_path / "fake.json").write_text(json.dumps({"by_prompt": {"add()": solving_script()}}))
    runs = {}
    for label, extra in (("proxy", []), ("oracle", ["--select-with", "tests"])):
        out = tmp_path / label
        res = CliRunner().invoke(app, ["search", "--tasks", str(tmp_path / "tasks.json"), "--model",
                                       f"fake:{tmp_path / 'fake.json'}", "--n", "1", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        line = json.loads((out / "results.jsonl").read_text().splitlines()[0])
        view = run_view(TrajectoryStore(out / "runs.sqlite"), f"best_of_n:{demo_task.instance_id}")
        runs[label] = (res.output, summary, line, view)
    output, summary, line, view = runs["oracle"]
    assert "ORACLE" in output and summary["oracle"] is True and summary["selection"] == "tests"
    assert line["oracle"] is True and view["header"]["oracle"] is True
    html = render_run_html(TrajectoryStore(tmp_path / "oracle" / "runs.sqlite"), f"best_of_n:{demo_task.instance_id}")
    assert "tests (ORACLE)" in html
    output, summary, line, view = runs["proxy"]
    assert "ORACLE" not in output and summary["oracle"] is False and summary["selection"] == "proxy"
    assert line["oracle"] is False and view["header"]["oracle"] is False
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=TrajectoryStore(tmp_path / "r.db"),
                        select_with="tests")
    result = best_of_n(ctx, n=1, run_id="o1")
    assert result.oracle and result.label == "oracle" and result.to_dict()["oracle"] is True


def test_graphs_stream_typed_progress_events(demo_task: Task, tmp_path: Path) -> None:
    from agent_selfevolve.attempt import sqlite_checkpointer
    from agent_selfevolve.search import build_best_of_n_graph

    store = TrajectoryStore(tmp_path / "s.sqlite")
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=store,
                        budget=Budget(max_tokens=10**6))
    graph = build_best_of_n_graph().compile(checkpointer=sqlite_checkpointer(tmp_path / "ck.sqlite"))
    config = {"configurable": {"thread_id": "ev"}}
    events = [chunk for chunk in graph.stream({"run_id": "ev", "task_id": demo_task.instance_id,
                                               "config": {"n": 2, "wave_size": 2}}, config, context=ctx,
                                              stream_mode="custom")]
    kinds = [e["event"] for e in events]
    assert kinds.count("attempt_finished") == 2 and kinds[-1] == "search_finished"
    finished = [e for e in events if e["event"] == "attempt_finished"]
    assert all(e["budget"] == {"max_tokens": 10**6} and e["budget_used"]["tokens"] >= e["tokens"] for e in finished)


def test_a_bad_model_spec_names_what_is_wrong(tmp_path: Path) -> None:
    """`fake` alone, a missing script and a script that is not JSON each fail with the spec and the reason,
    not a traceback from deep inside file reading."""
    from agent_selfevolve.models import make_model

    (tmp_path / "bad.json").write_text("{not json")
    for spec, reason in (("fake", "no file given"), (f"fake:{tmp_path / 'none.json'}", "is not a file"),
                         (f"fake:{tmp_path / 'bad.json'}", "is not JSON"), ("gpt4", "unknown model spec")):
        with pytest.raises(ValueError, match=reason) as info:
            make_model(spec)
        assert spec in str(info.value)


def test_parallel_attempts_never_build_ast_objects_at_once(demo_task: Task, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11 keeps the AST constructor's recursion depth interpreter-wide, so two threads in `ast.parse` at
    once can raise SystemError (it did, in best-of-N's fan-out: each attempt builds its agent graph, and LangGraph
    parses `operator.add`'s signature). A slow `ast.parse` that counts who is inside it must never see two."""
    import ast
    import threading
    import time

    real_parse, inside, most = ast.parse, [0], [0]
    lock = threading.Lock()

    def slow_parse(*args: object, **kwargs: object) -> object:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)  # widens any overlap a missing lock would allow
        try:
            return real_parse(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(ast, "parse", slow_parse)
    store = TrajectoryStore(tmp_path / "s.sqlite")
    ctx = SearchContext(task=demo_task, model=ScriptedFakeModel(responder), store=store)
    result = best_of_n(ctx, n=4, run_id="ast")
    assert result.attempts == 4 and most[0] == 1
