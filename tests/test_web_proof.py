"""bench/web_proof.py: the sweep runs a real BrowserGym MiniWoB task (real Chromium) with a FAKE scripted model and
logs BrowserGym's verdict; reruns skip logged rows and retry crashed ones; the comparison pairs per task, resamples
task types as clusters, and labels oracle selection; the evolve split keeps a type's seeds together."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import load_bench_module

from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    return load_bench_module(name)


wp = _load("web_proof")
stats = sys.modules["web_proof_stats"]


def _task(name: str, seed: int) -> Task:
    return Task.model_validate({"instance_id": f"browsergym.miniwob.{name}.{seed}",
                                "browsergym": {"task": f"miniwob.{name}", "seed": seed}})


def _last_observation(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] or "" for m in reversed(messages) if m["role"] in ("tool", "user"))


def _fake_clicker(wrong: bool = False) -> ScriptedFakeModel:
    """FAKE: clicks the button the goal names (or, `wrong`, another one), read from the observation."""

    def respond(messages: list[dict[str, Any]]) -> dict[str, Any]:
        goal = re.search(r'Goal: Click on the "([^"]+)" button', messages[1]["content"])
        assert goal, messages[1]["content"]
        ids = dict(re.findall(r"- button '([^']*)'[^\n]*? \[id=(\w+)\]", _last_observation(messages)))
        pick = next(i for n, i in ids.items() if n != goal.group(1)) if wrong else ids[goal.group(1)]
        return tool_call("click", {"id": pick})

    return ScriptedFakeModel(respond, name="fake/web-proof")


@pytest.mark.web
def test_sweep_logs_browsergym_verdict_from_real_chromium_and_a_rerun_runs_nothing(tmp_path: Path,
                                                                                  monkeypatch: Any) -> None:
    pytest.importorskip("browsergym.miniwob")
    made: list[ScriptedFakeModel] = []

    def make(spec: str, threads: int | None) -> ScriptedFakeModel:
        made.append(_fake_clicker(wrong=bool(made)))  # a second model would click the wrong button
        return made[-1]

    monkeypatch.setattr(wp, "_model", make)
    args = ["sweep", "--model", "fake-web", "--types", "click-button", "--seeds", "3", "--out", str(tmp_path),
            "--progress", str(tmp_path / "progress.json")]
    wp.main(args)
    out = tmp_path / "fake-web"
    [row] = stats.read_rows(out / "sweep.jsonl")
    assert row["task_id"] == "browsergym.miniwob.click-button.3" and row["type"] == "click-button"
    assert row["resolved"] is True and row["reward"] == 1.0 and row["steps"] == 1 and row["status"] == "submitted"
    assert row["tokens"] == row["prompt_tokens"] + row["completion_tokens"] > 0 and row["seconds"] >= 0
    stored = wp.TrajectoryStore(out / "runs.sqlite").get(row["attempt_id"])
    assert stored is not None and stored.evaluation and stored.evaluation["source"] == "browsergym"
    assert json.loads((tmp_path / "progress.json").read_text())["done"] == 1
    assert json.loads((out / "sweep.json").read_text())["classes"]["click-button"] == "always"

    wp.main(args)  # the row is logged: no second model is made, nothing runs
    assert len(made) == 1 and len(stats.read_rows(out / "sweep.jsonl")) == 1

    rows = wp.sweep([_task("click-button", 4)], _fake_clicker(wrong=True), out)
    assert [(r["seed"], r["resolved"], r["reward"]) for r in rows] == [(3, True, 1.0), (4, False, 0.0)]


def test_sweep_skips_logged_rows_retries_crashed_ones_under_new_ids_and_gives_up(tmp_path: Path,
                                                                               monkeypatch: Any) -> None:
    calls: list[str] = []

    def fake_run_attempt(task: Task, model: Any, spec: Any, **kwargs: Any) -> Trajectory:
        calls.append(spec.attempt_id)
        return Trajectory(attempt_id=spec.attempt_id, task_id=task.instance_id, status="submitted")

    monkeypatch.setattr(wp, "run_attempt", fake_run_attempt)
    done, crashed, hopeless = _task("click-test", 0), _task("click-test", 1), _task("click-test", 2)
    base = {"type": "click-test", "resolved": False, "reward": 0.0, "steps": 1, "tokens": 1, "seconds": 1.0}
    log = tmp_path / "sweep.jsonl"
    for task, status, times in ((done, "submitted", 1), (crashed, "env_error", 1), (hopeless, "error", 3)):
        for _ in range(times):
            stats.append_row(log, {**base, "task_id": task.instance_id, "seed": 0, "status": status})
    rows = wp.sweep([done, crashed, hopeless], ScriptedFakeModel([]), tmp_path)
    assert calls == [f"{wp.SWEEP_RUN}:{crashed.instance_id}:retry1"]
    assert stats.latest(rows, lambda r: r["task_id"])[crashed.instance_id]["status"] == "submitted"
    assert stats.type_classes(rows, [0, 1, 2]) == {"click-test": "incomplete"}  # seed 2 never got a verdict

    calls.clear()
    wp.sweep([_task("click-link", 0)], ScriptedFakeModel([]), tmp_path,
             deadline=stats.Deadline(0.0), progress=tmp_path / "p.json")
    assert calls == [] and json.loads((tmp_path / "p.json").read_text())["stopped"] == "until-minutes reached"


def test_append_row_keeps_earlier_rows_and_reading_skips_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "x.jsonl"
    log.write_text('{"task_id": "a"}\n{"task_id": "b", "torn')
    stats.append_row(log, {"task_id": "c"})
    assert [r["task_id"] for r in stats.read_rows(log)] == ["a", "c"]


def test_types_to_compare_are_the_mixed_ones_unless_other_classes_are_asked_for() -> None:
    rows = [{"task_id": f"t.{name}.{s}", "type": name, "seed": s, "resolved": ok, "status": "submitted"}
            for name, oks in (("always", (1, 1, 1)), ("never", (0, 0, 0)), ("mixed", (1, 0, 0)), ("short", (1, 0)))
            for s, ok in enumerate(oks)]
    types = ["always", "never", "mixed", "short", "unswept"]
    assert wp.compare_types(rows, types, [0, 1, 2]) == ["mixed"]
    assert wp.compare_types(rows, types, [0, 1, 2], wp.CLASSES) == ["always", "never", "mixed"]
    assert wp.compare_types(rows, types, [0, 1, 2], ["never"]) == ["never"]
    assert wp.compare_types(rows, types, [1], ["never"]) == ["never"]  # mixed fails seed 1: judged over all seeds
    with pytest.raises(SystemExit):
        wp.main(["compare", "--classes", "nevr", "--report-only", "--out", "/nonexistent"])


def test_a_compare_table_holds_only_the_chosen_classes_rows(tmp_path: Path) -> None:
    """A never-class search logged in the same file (same budget and selection) must not enter the mixed table, and
    a report with nothing logged for its tasks writes no empty table."""
    out = tmp_path / wp.model_key("local")
    sweep = [{"task_id": f"browsergym.miniwob.{name}.{s}", "type": name, "seed": s, "resolved": ok,
              "status": "submitted"} for name, oks in (("click-tab", (1, 0, 0)), ("enter-date", (0, 0, 0)))
             for s, ok in enumerate(oks)]
    for row in sweep:
        stats.append_row(out / "sweep.jsonl", row)
    log = wp.compare_log(out, 5000, "tests")
    for s in range(3):
        stats.append_row(log, {**_row("best_of_n", f"browsergym.miniwob.click-tab.{s}", s == 0, "click-tab"),
                               "budget": 5000})
    stats.append_row(log, {**_row("best_of_n", "browsergym.miniwob.enter-date.0", True, "enter-date"), "budget": 5000})
    argv = ["compare", "--model", "local", "--budget", "5000", "--strategies", "best_of_n", "--report-only",
            "--types", "click-tab,enter-date", "--out", str(tmp_path)]
    wp.main(argv)
    saved = json.loads((out / "compare-b5000-tests.json").read_text())
    assert saved["types"] == ["click-tab"] and saved["strategies"]["best_of_n"]["tasks"] == 3
    assert saved["strategies"]["best_of_n"]["resolved"] == 1
    assert saved["searches"] == {"done": 3, "planned": 3}
    wp.main([*argv, "--classes", "never"])  # its own table; the mixed one is left as it was
    assert json.loads((out / "compare-b5000-tests.json").read_text()) == saved
    never = json.loads((out / "compare-b5000-tests-never.json").read_text())
    assert never["types"] == ["enter-date"] and never["strategies"]["best_of_n"]["resolved"] == 1
    assert never["searches"] == {"done": 1, "planned": 3}  # seeds 1 and 2 not run yet: the table says so
    wp.main([*argv, "--classes", "always"])
    assert not (out / "compare-b5000-tests-always.json").exists()
    assert wp.table_name(5000, "proxy", ["never", "always"]) == "compare-b5000-proxy-always+never"


def test_the_web_evolve_hands_its_splits_to_evolve_writes_progress_and_the_paired_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/web_proof.py evolve around a FAKE `evolve` (no model, no training): the context's three splits are
    the printed split's tasks, each event rewrites --progress, and the final split's outcomes reach
    evolve-result.json with their intervals."""
    import agent_selfevolve.evolve as evolve_mod
    import agent_selfevolve.models.weights as weights
    import agent_selfevolve.serving as serving
    import agent_selfevolve.train as train

    seen: dict[str, Any] = {}

    def fake_evolve(ctx: Any, run_id: str) -> dict[str, Any]:
        seen.update(train=[t.instance_id for t in ctx.train_tasks], gate=[t.instance_id for t in ctx.held_out],
                    final=[t.instance_id for t in ctx.final_test])
        ctx.on_event({"event": "search", "episode": 0, "task_id": ctx.train_tasks[0].instance_id})
        ctx.on_event({"event": "eval", "split": "final", "policy": "base", "task_id": seen["final"][0]})
        base = dict.fromkeys(seen["final"], False)
        after = {i: k % 2 == 0 for k, i in enumerate(base)}
        planted = {evolve_mod.eval_run_id(run_id, "gate", "base", 0): dict.fromkeys(seen["gate"], False),
                   evolve_mod.eval_run_id(run_id, "gate", "sft-1", 0): dict.fromkeys(seen["gate"], True),
                   evolve_mod.eval_run_id(run_id, "final", "base"): base,
                   evolve_mod.eval_run_id(run_id, "final", "sft-1"): after,
                   f"{run_id}:other": dict.fromkeys(seen["final"], True)}  # not an evaluation: must not count
        for eval_run, verdicts in planted.items():
            for task_id, ok in verdicts.items():
                ctx.store.record(Trajectory(attempt_id=f"{eval_run}:{task_id}", task_id=task_id, run_id=eval_run,
                                            evaluation={"resolved": ok}))
        return {"episodes": [{"episode": 0, "policy_before": "base", "candidate": "sft-1"}],
                "final_test": {"base": 0.0, "final": 0.5, "policy": "sft-1", "paired": {"p_value": 0.5},
                               "outcomes": {"base": base, "final": after}}}

    monkeypatch.setattr(evolve_mod, "evolve", fake_evolve)
    monkeypatch.setattr(weights, "ensure_gguf", lambda key: tmp_path / "m.gguf")
    monkeypatch.setattr(train, "hf_base_from_gguf", lambda path: tmp_path / "hf")
    monkeypatch.setattr(serving, "llama_cpp_policy", lambda *a, **k: "FAKE policy")
    types = ["click-tab", "enter-date", "focus-text", "click-link"]
    progress = tmp_path / "progress.json"
    wp.main(["evolve", "--model", "local", "--types", ",".join(types), "--seeds", "0,1", "--gate-types", "1",
             "--final-types", "1", "--no-stratify", "--out", str(tmp_path), "--progress", str(progress)])
    assert sorted(seen["train"] + seen["gate"] + seen["final"]) == sorted(f"browsergym.miniwob.{t}.{s}"
                                                                          for t in types for s in (0, 1))
    assert len(seen["final"]) == 2 and {i.rsplit(".", 1)[0] for i in seen["final"]} == {seen["final"][0][:-2]}
    state = json.loads(progress.read_text())
    assert state["events_this_run"] == {"search": 1, "eval:final": 1} and state["tasks"]["train"] == 4
    result = json.loads((tmp_path / wp.model_key("local") / "evolve-result.json").read_text())
    assert result["final_ci95"]["final"] == list(stats.wilson(1, 2)) and result["split"]["final"] == [
        seen["final"][0].split(".")[2]]
    held = result["held_out"]  # base vs the evolved policy per split, from the store's evaluation runs only
    assert (held["gate"]["base"], held["gate"]["after"], held["gate"]["n"]) == (0, 2, 2)
    assert (held["final"]["base"], held["final"]["after"], held["final"]["a_only"], held["final"]["b_only"]) == \
        (0, 1, 1, 0)
    assert held["pooled"]["n"] == 4 and held["pooled"]["after"] == 3 and held["pooled"]["types_up"] == 2
    assert held["pooled"]["diff"] == 0.75 and held["gate"]["by_type"] == {seen["gate"][0].split(".")[2]: [0, 2, 2]}

    def no_rerun(ctx: Any, run_id: str) -> dict[str, Any]:
        raise AssertionError("--report-only ran the evolution again")

    monkeypatch.setattr(evolve_mod, "evolve", no_rerun)  # the report comes from the summary and the store alone
    wp.main(["evolve", "--model", "local", "--types", ",".join(types), "--seeds", "0,1", "--gate-types", "1",
             "--final-types", "1", "--no-stratify", "--out", str(tmp_path), "--report-only"])
    assert json.loads((tmp_path / wp.model_key("local") / "evolve-result.json").read_text()) == result


def test_wilson_interval_matches_known_values() -> None:
    assert stats.wilson(5, 10) == (0.2366, 0.7634)
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert stats.wilson(0, 0) is None


def _row(strategy: str, task: str, resolved: bool, type_: str | None = None) -> dict[str, Any]:
    return {"strategy": strategy, "task_id": task, "type": type_ or task.split(".")[0], "resolved": resolved,
            "pass_at_n": resolved, "tokens": 100, "attempts": 2, "seconds": 1.0}


def test_compare_pairs_per_task_and_ignores_unpaired_rows() -> None:
    rows = [_row("a", "x.0", True), _row("b", "x.0", False), _row("a", "y.0", True), _row("b", "y.0", True),
            _row("a", "z.0", False), _row("b", "z.0", True), _row("a", "w.0", True), _row("a", "v.0", True)]
    table = stats.compare_table(rows, ["a", "b"], reps=2000)
    pair = table["pairs"]["a - b"]
    assert pair["paired_tasks"] == 3 and pair["types"] == 3  # w and v ran only under a: not paired
    assert pair["diff"] == 0.0 and pair["a_only"] == 1 and pair["b_only"] == 1 and pair["mcnemar_p"] == 1.0
    assert table["strategies"]["a"]["resolved"] == 4 and table["strategies"]["a"]["tasks"] == 5
    rerun = [*rows, _row("b", "x.0", True)]  # a later row for the same (strategy, task) supersedes
    assert stats.compare_table(rerun, ["a", "b"], reps=10)["pairs"]["a - b"]["a_only"] == 0


def test_bootstrap_resamples_task_types_as_clusters() -> None:
    """One type with ten tasks all gained, nine types with one task each tied: the mean gain is 10/19, but in about
    a third of cluster resamples the big type is absent (gain 0). Resampling single tasks would never reach 0."""
    diffs = {"big": [1.0] * 10, **{f"t{i}": [0.0] for i in range(9)}}
    lo, hi = stats.cluster_bootstrap_diff(diffs, reps=4000)
    assert lo == 0.0 and 0.5 < hi <= 1.0
    assert stats.cluster_bootstrap_diff({"a": [1.0], "b": [1.0, 1.0]}, reps=100) == (1.0, 1.0)
    assert stats.cluster_bootstrap_diff({}, reps=10) is None


def test_compare_runs_each_missing_pair_once_and_labels_oracle_selection(tmp_path: Path, monkeypatch: Any) -> None:
    import agent_selfevolve.search as search

    ran: list[tuple[str, str, str]] = []

    def fake_strategy(name: str) -> Any:
        def run(ctx: Any, run_id: str, **opts: Any) -> Any:
            ran.append((name, ctx.task.instance_id, ctx.select_with))
            assert ctx.budget.max_tokens == 5000
            return SimpleNamespace(resolved=name == "hgm", pass_at_n=True, best_reward=1.0, attempts=2,
                                   usage={"prompt_tokens": 4000, "completion_tokens": 900}, stop_reason="budget",
                                   oracle=ctx.select_with == "tests")
        return run

    monkeypatch.setattr(search, "strategies", lambda: {n: fake_strategy(n) for n in wp.STRATEGIES})
    tasks = [_task("click-tab", 0), _task("click-tab", 1)]
    stats.append_row(wp.compare_log(tmp_path, 5000, "tests"),
                     {**_row("best_of_n", tasks[0].instance_id, False, "click-tab"), "budget": 5000})
    rows = wp.compare(tasks, ScriptedFakeModel([]), tmp_path, strategies=list(wp.STRATEGIES), budget=5000,
                      select_with="tests")
    assert ran == [("se_agent", tasks[0].instance_id, "tests"), ("hgm", tasks[0].instance_id, "tests"),
                   *((s, tasks[1].instance_id, "tests") for s in wp.STRATEGIES)]
    assert all(r["oracle"] for r in rows[1:]) and len(rows) == 6
    table = stats.compare_table(rows, list(wp.STRATEGIES), reps=100)
    assert table["pairs"]["best_of_n - hgm"] == {**table["pairs"]["best_of_n - hgm"], "diff": -1.0, "b_only": 2}
    ran.clear()
    wp.compare(tasks, ScriptedFakeModel([]), tmp_path, strategies=list(wp.STRATEGIES), budget=5000,
               select_with="tests")
    assert ran == []  # every pair logged: a rerun runs nothing


def test_rows_say_what_the_attempts_spent_so_the_table_shows_the_operators_share(tmp_path: Path,
                                                                                  monkeypatch: Any) -> None:
    """Each FAKE strategy stores two 1,000-token attempts under its run id; best_of_n reports exactly those, the
    others 1,000 (se_agent) or 500 (hgm) tokens more, spent on operators. A row logged before rows carried the
    field is filled from the store; a row whose run is not in the store is left alone."""
    import agent_selfevolve.search as search
    from agent_selfevolve.store import TrajectoryStore

    extra = {"best_of_n": 0, "se_agent": 1000, "hgm": 500}

    def fake_strategy(name: str) -> Any:
        def run(ctx: Any, run_id: str, **opts: Any) -> Any:
            for k in range(2):
                ctx.store.record(Trajectory(attempt_id=f"{run_id}:a{k}", task_id=ctx.task.instance_id, run_id=run_id,
                                            usage={"prompt_tokens": 900, "completion_tokens": 100}))
            return SimpleNamespace(resolved=False, pass_at_n=False, best_reward=0.0, attempts=2, stop_reason="budget",
                                   usage={"prompt_tokens": 1800 + extra[name], "completion_tokens": 200},
                                   oracle=False)
        return run

    monkeypatch.setattr(search, "strategies", lambda: {n: fake_strategy(n) for n in wp.STRATEGIES})
    tasks = [_task("click-tab", 0), _task("click-tab", 1)]
    rows = wp.compare(tasks, ScriptedFakeModel([]), tmp_path, strategies=list(wp.STRATEGIES), budget=5000,
                      select_with="proxy")
    assert {(r["strategy"], r["attempt_tokens"], r["tokens"]) for r in rows} == {
        ("best_of_n", 2000, 2000), ("se_agent", 2000, 3000), ("hgm", 2000, 2500)}
    shares = {s: v["operator_token_share"] for s, v in stats.compare_table(rows, list(wp.STRATEGIES),
                                                                           reps=10)["strategies"].items()}
    assert shares == {"best_of_n": 0.0, "se_agent": 0.333, "hgm": 0.2}

    log = wp.compare_log(tmp_path, 5000, "proxy")
    old = [{k: v for k, v in r.items() if k != "attempt_tokens"} for r in rows]
    old.append({**_row("hgm", "browsergym.miniwob.click-tab.9", False, "click-tab"), "budget": 5000})  # not stored
    stats.write_rows(log, old)
    assert wp.fill_attempt_tokens(tmp_path, 5000, "proxy", wp.RUN_PREFIX) == 6
    again = stats.read_rows(log)
    assert again[:6] == rows and "attempt_tokens" not in again[6]
    table = stats.compare_table(again, list(wp.STRATEGIES), reps=10)
    assert table["strategies"]["hgm"]["operator_token_share"] is None  # one hgm row cannot say: no share
    assert TrajectoryStore(tmp_path / "runs.sqlite").count() == 12


def test_compare_table_printout_says_oracle_only_for_page_reward_selection(capsys: Any) -> None:
    table = stats.compare_table([_row("a", "x.0", True), _row("b", "x.0", False)], ["a", "b"], reps=10)
    stats.print_compare(table, 1000, "tests")
    assert "ORACLE" in capsys.readouterr().out
    stats.print_compare(table, 1000, "proxy")
    out = capsys.readouterr().out
    assert "ORACLE" not in out and "held-out" in out


def test_evolve_split_is_by_type_fixed_by_seed_and_disjoint() -> None:
    types = list(wp.TASK_TYPES)
    split = wp.split_types(types, 0, 10, 10)
    assert split == wp.split_types(list(reversed(types)), 0, 10, 10)  # the seed fixes it, not the input order
    assert split != wp.split_types(types, 1, 10, 10)
    assert (len(split["final"]), len(split["gate"]), len(split["train"])) == (10, 10, len(types) - 20)
    assert sorted(split["final"] + split["gate"] + split["train"]) == sorted(types)
    with pytest.raises(ValueError):
        wp.split_types(types[:5], 0, 3, 2)


def test_stratified_evolve_split_cuts_each_sweep_class_in_proportion() -> None:
    types = list(wp.TASK_TYPES)
    classes = {t: ("always" if i % 9 == 0 else "mixed" if i % 9 in (1, 2) else "never") for i, t in enumerate(types)}
    counts = {c: sum(v == c for v in classes.values()) for c in ("always", "mixed", "never")}  # 5, 10, 30 of 45
    for seed in range(5):  # unstratified, seed 2 gives a final split with no mixed type at all
        split = wp.split_types(types, seed, 10, 10, classes)
        assert split == wp.split_types(list(reversed(types)), seed, 10, 10, classes)
        assert sorted(split["final"] + split["gate"] + split["train"]) == sorted(types)
        for part, size in (("final", 10), ("gate", 10)):
            got = {c: sum(classes[t] == c for t in split[part]) for c in counts}
            assert len(split[part]) == size
            for c, n in counts.items():  # within one of the proportional share
                assert abs(got[c] - n * size / len(types)) < 1, (seed, part, got)
    with pytest.raises(ValueError, match="no sweep class"):
        wp.split_types(types, 0, 10, 10, {t: c for t, c in classes.items() if t != types[3]})


def test_model_key_names_the_results_folder() -> None:
    assert wp.model_key("local") == "qwen2.5-coder-0.5b"
    assert wp.model_key("local:qwen2.5-coder-1.5b") == "qwen2.5-coder-1.5b"
    assert wp.model_key("openai:gpt/4") == "openai-gpt-4"


def test_task_types_are_at_least_40_distinct_browsergym_miniwob_tasks() -> None:
    pytest.importorskip("browsergym.miniwob")
    from agent_selfevolve.browsergym_tasks import miniwob_task_names

    assert len(set(wp.TASK_TYPES)) == len(wp.TASK_TYPES) >= 40
    assert set(wp.TASK_TYPES) <= set(miniwob_task_names())


def test_the_deadline_gives_the_trainer_the_same_end_on_the_wall_clock() -> None:
    """`evolve --until-minutes` hands the trainer a `time.time()` stop: the monotonic deadline's remaining time."""
    import time

    now = [1000.0]
    deadline = stats.Deadline(2.0, clock=lambda: now[0])
    now[0] += 30.0  # half a minute used: 90 s left
    before = time.time()
    end = deadline.wall_clock_end()
    assert end is not None and before + 90.0 <= end <= time.time() + 90.0
    assert stats.Deadline(None).wall_clock_end() is None


def test_a_sweep_pairs_with_another_models_sweep_on_the_tasks_both_graded(tmp_path: Path) -> None:
    """`sweep --report-only --against M`: McNemar on the shared tasks, the latest row per task, errors left out."""
    def log(model: str, outcomes: dict[str, object]) -> None:
        for task_id, outcome in outcomes.items():
            status = "env_error" if outcome == "err" else "submitted"
            stats.append_row(tmp_path / model / "sweep.jsonl", {
                "task_id": f"browsergym.miniwob.click-test.{task_id}", "type": "click-test", "seed": int(task_id),
                "resolved": outcome is True, "status": status, "reward": 0.0, "steps": 1, "tokens": 1, "seconds": 1.0})

    log("big", {"0": True, "1": True, "2": False, "3": "err"})
    log("small", {"0": False, "1": True, "2": True, "3": True})
    log("small", {"2": False})  # a retried row: the latest one counts
    wp.main(["sweep", "--model", "big", "--against", "small", "--report-only", "--types", "click-test",
             "--seeds", "0,1,2,3", "--out", str(tmp_path)])
    vs = json.loads((tmp_path / "big" / "sweep.json").read_text())["against"]
    assert (vs["model"], vs["tasks"], vs["resolved"], vs["other_resolved"]) == ("small", 3, 2, 1)
    assert (vs["mcnemar"]["gained"], vs["mcnemar"]["lost"]) == (1, 0)


def _web_attempt(attempt_id: str, task_id: str, target: str, resolved: bool) -> Trajectory:
    page = "Goal: Click on the \"yes\" button.\nPage:\n- button 'yes' [id=1]\n- button 'no' [id=2]\n"
    return Trajectory(attempt_id=attempt_id, task_id=task_id, model="m", status="submitted",
                      messages=[{"role": "system", "content": "s"}, {"role": "user", "content": page}],
                      steps=[{"index": 0, "action": {"name": "click", "arguments": {"id": target}},
                              "observation": "The task page says the episode is over; the attempt ends."}],
                      outcome={"answer": None, "stopped": False, "reward_info": {"reward": float(resolved)}},
                      evaluation={"resolved": resolved, "reward": float(resolved), "source": "browsergym"},
                      selection={"source": "proxy", "reward": 0.5})


def test_web_judge_agreement_scores_decisive_tasks_once_per_prompt(tmp_path: Path) -> None:
    """A FAKE judge that likes the click on 'yes': it ranks the resolved attempt first (pick 1.0, AUC 1.0), where
    the proxy ties all three (each ended without an answer: 0.5) and so picks as a coin would (1/3). The duplicate
    wrong click is judged once; a task every attempt solved is not decisive; a rerun judges nothing again."""
    from agent_selfevolve.store import TrajectoryStore

    agreement = _load("web_judge_agreement")
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    for traj in (_web_attempt("a1", "t.a", "1", True), _web_attempt("a2", "t.a", "2", False),
                 _web_attempt("a3", "t.a", "2", False), _web_attempt("b1", "t.b", "1", True)):
        store.record(traj)
    script = tmp_path / "judge.json"
    script.write_text(json.dumps({"by_prompt": {"click [1] button 'yes'": ['{"score": 9}']},
                                  "default": ['{"score": 2}']}))
    args = ["--store", str(tmp_path / "runs.sqlite"), "--model", f"fake:{script}"]
    agreement.main(args)
    result = json.loads(next(tmp_path.glob("judge-*.json")).read_text())
    assert (result["decisive_tasks"], result["tasks_judged"], result["attempts"]) == (1, 1, 3)
    assert result["unique_prompts"] == 2 and result["judge_pick"] == 1.0 and result["judge_auc"] == 1.0
    assert result["proxy_pick"] == round(1 / 3, 3) and result["proxy_auc"] == 0.5
    cache = next(tmp_path.glob("judge-*.jsonl"))
    assert len(cache.read_text().splitlines()) == 2
    agreement.main(args)
    assert len(cache.read_text().splitlines()) == 2


def test_the_compare_table_sets_the_sweeps_greedy_attempt_beside_the_strategies(tmp_path: Path) -> None:
    """The greedy reference is the sweep's verdict on the same tasks, paired like a strategy; a crashed sweep row
    (infrastructure, not the model) is no verdict and leaves its task out of the greedy column."""
    out = tmp_path / wp.model_key("local")
    oks = {0: True, 1: False, 2: True}
    for s, ok in oks.items():
        stats.append_row(out / "sweep.jsonl", {"task_id": f"browsergym.miniwob.click-tab.{s}", "type": "click-tab",
                                               "seed": s, "resolved": ok, "status": "submitted", "tokens": 700,
                                               "seconds": 4.0})
    crash = {"task_id": "browsergym.miniwob.click-tab.2", "type": "click-tab", "seed": 2, "resolved": False,
             "status": stats.INFRA[0], "tokens": 0, "seconds": 1.0}
    log = wp.compare_log(out, 5000, "proxy")
    for s in range(3):
        stats.append_row(log, {**_row("best_of_n", f"browsergym.miniwob.click-tab.{s}", s == 1, "click-tab"),
                               "budget": 5000})
    argv = ["compare", "--model", "local", "--budget", "5000", "--strategies", "best_of_n", "--report-only",
            "--select-with", "proxy", "--types", "click-tab", "--out", str(tmp_path)]
    wp.main(argv)
    saved = json.loads((out / "compare-b5000-proxy.json").read_text())
    greedy = saved["strategies"][stats.GREEDY]
    assert (greedy["tasks"], greedy["resolved"], greedy["tokens_per_task"]) == (3, 2, 700)
    pair = saved["pairs"][f"best_of_n - {stats.GREEDY}"]
    assert (pair["paired_tasks"], pair["a_only"], pair["b_only"]) == (3, 1, 2)
    stats.append_row(out / "sweep.jsonl", crash)  # the latest row of seed 2 is now a crash: no verdict
    assert [r["task_id"] for r in stats.greedy_rows(stats.read_rows(out / "sweep.jsonl"), {crash["task_id"]})] == []
