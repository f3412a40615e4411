"""bench/search_compare.py: every strategy runs once per task and budget (a rerun runs nothing), a factory project
is one bootstrap cluster, proxy selection is reported as held-out with the oracle pass@N apart, `--until-minutes`
stops before the next search, and `--pool` pairs runs by budget rank. FAKE strategies and model (no LLM)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from conftest import load_bench_module

from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.tasks import Task

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load() -> ModuleType:
    return load_bench_module("search_compare")


IDS = ["factory__toolz-a1", "factory__toolz-a2", "factory__funcy-b1"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, list[tuple[str, str, int, str]]]:
    """search_compare with three FAKE tasks, a FAKE model, and strategies that record each call: hgm resolves
    every task, best_of_n toolz-a1 (and at 2,000 tokens or more toolz-a2 too), the others none; every search has
    some attempt that resolved (pass@N)."""
    import agent_selfevolve.search as search

    sc = _load()
    ran: list[tuple[str, str, int, str]] = []

    def strategy(name: str) -> Any:
        def run(ctx: Any, run_id: str, **opts: Any) -> Any:
            ran.append((name, ctx.task.instance_id, ctx.budget.max_tokens, ctx.select_with))
            won = name == "hgm" or (name == "best_of_n" and (ctx.task.instance_id == IDS[0] or (
                ctx.task.instance_id == IDS[1] and ctx.budget.max_tokens >= 2000)))
            return SimpleNamespace(resolved=won, pass_at_n=True, best_reward=1.0, attempts=2, stop_reason="budget",
                                   usage={"prompt_tokens": 100, "completion_tokens": 50},
                                   oracle=ctx.select_with == "tests")
        return run

    monkeypatch.setattr(search, "strategies", lambda: {n: strategy(n) for n in sc.STRATEGIES})
    monkeypatch.setattr(sc, "suite_tasks", lambda suite, slice_, seeds, keep=None: [
        Task(instance_id=i, repo_path="/nonexistent", problem_statement="x") for i in IDS
        if keep is None or i in keep])
    monkeypatch.setattr(sc, "make_model", lambda spec, **options: ScriptedFakeModel([]))
    return sc, ran


def test_each_strategy_runs_once_per_task_and_budget_and_a_rerun_runs_nothing(
        fake: tuple[ModuleType, list], tmp_path: Path, capsys: Any) -> None:
    sc, ran = fake
    argv = ["--model", "fake", "--suite", "factory:all:easy", "--budgets", "1000,2000", "--out", str(tmp_path)]
    tables = sc.main(argv)
    from strategy_runs import STRATEGY_OF  # bench/ is on the path once search_compare is loaded

    registered = [STRATEGY_OF.get(s, s) for s in sc.STRATEGIES]  # best_of_n_greedy runs best_of_n
    assert sorted(ran) == sorted((s, t, b, "proxy") for b in (1000, 2000) for t in IDS for s in registered)
    assert [t["strategies"]["hgm"]["resolved"] for t in tables] == [3, 3]
    pair = tables[0]["pairs"]["best_of_n - hgm"]
    assert (pair["paired_tasks"], pair["types"], pair["b_only"], pair["a_only"]) == (3, 2, 2, 0)  # 2 projects
    rows = [json.loads(line) for line in (tmp_path / "compare-b1000-proxy.jsonl").read_text().splitlines()]
    assert {r["type"] for r in rows} == {"toolz", "funcy"} and not any(r["oracle"] for r in rows)
    saved = json.loads((tmp_path / "compare-b2000-proxy.json").read_text())
    assert saved["oracle"] is False and saved["strategies"]["mcts"]["pass_at_any"] == 3
    assert saved["searches"] == {"done": 3 * len(sc.STRATEGIES), "planned": 3 * len(sc.STRATEGIES)}
    out = capsys.readouterr().out
    assert "held-out" in out and "oracle pass@N" in out and "ORACLE:" not in out and "PARTIAL" not in out
    by_budget = json.loads((tmp_path / "compare-budgets-proxy.json").read_text())
    assert by_budget["best_of_n 1000->2000"] == {"tasks": 3, "gained": 1, "lost": 0, "p_value": 1.0,
                                                 "p_one_sided": 0.5}
    assert (by_budget["hgm 1000->2000"]["gained"], by_budget["hgm 1000->2000"]["lost"]) == (0, 0)
    assert "best_of_n 1000->2000" in out and "+1 -0" in out
    ran.clear()
    sc.main(argv)
    assert ran == []


def test_until_minutes_starts_no_search_after_the_deadline_and_the_table_says_it_is_partial(
        fake: tuple[ModuleType, list], tmp_path: Path, capsys: Any) -> None:
    sc, ran = fake
    sc.main(["--model", "fake", "--suite", "humaneval", "--budgets", "1000", "--until-minutes", "0",
             "--out", str(tmp_path), "--progress", str(tmp_path / "progress.json")])
    assert ran == [] and "until-minutes" in (tmp_path / "progress.json").read_text()
    cover = json.loads((tmp_path / "compare-b1000-proxy.json").read_text())["searches"]
    assert cover["done"] == 0 and cover["planned"] > 0
    assert f"PARTIAL: 0 of {cover['planned']} planned searches" in capsys.readouterr().out


def test_pool_pairs_runs_by_budget_rank(fake: tuple[ModuleType, list], tmp_path: Path) -> None:
    sc, _ = fake
    sc.main(["--model", "fake", "--suite", "factory:all:easy", "--budgets", "1000,2000", "--out", str(tmp_path / "a")])
    sc.main(["--model", "fake", "--suite", "factory:all:easy", "--budgets", "8000,16000", "--strategies",
             "best_of_n,hgm", "--out", str(tmp_path / "b")])
    (tmp_path / "b" / "compare-b8000-proxy.jsonl").write_text(  # rename b's tasks so the pool holds six
        (tmp_path / "b" / "compare-b8000-proxy.jsonl").read_text().replace("factory__", "factory__x"))
    tables = sc.main(["--pool", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--strategies", "best_of_n,hgm",
                      "--out", str(tmp_path / "pooled.json")])
    assert [t["budgets"] for t in tables] == [{str(tmp_path / "a"): 1000, str(tmp_path / "b"): 8000},
                                               {str(tmp_path / "a"): 2000, str(tmp_path / "b"): 16000}]
    assert tables[0]["strategies"]["hgm"]["tasks"] == 6 and tables[1]["strategies"]["hgm"]["tasks"] == 3
    assert json.loads((tmp_path / "pooled.json").read_text())["ranks"][0]["pairs"]["best_of_n - hgm"]["b_only"] == 3
    # only hgm: a's toolz-a2 and funcy-b1 at 1,000 tokens, b's funcy-b1 at 8,000 (where best_of_n has toolz-a2)


def test_lora_runs_the_evolved_policy_in_its_own_folder(fake: tuple[ModuleType, list], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sc, _ = fake
    loaded: list[dict[str, Any]] = []
    monkeypatch.setattr(sc, "make_model", lambda spec, **options: loaded.append(options) or ScriptedFakeModel([]))
    monkeypatch.setattr(sc, "RESULTS", tmp_path)
    split = tmp_path / "split.json"  # the proof's split: the adapter trained on toolz-a1, never on the others
    split.write_text(json.dumps({"seed": 3, "factory": {"train": [IDS[0]], "held_out": IDS[1:]}}))
    argv = ["--model", "local", "--suite", "humaneval", "--tasks", "0:3", "--budgets", "1000", "--strategies", "hgm",
            "--lora", str(tmp_path / "sft-3.gguf")]
    with pytest.raises(SystemExit):  # an adapter graded on tasks it may have trained on: refused
        sc.main(argv)
    assert loaded == []
    sc.main([*argv, "--held-out-of", str(split)])
    assert loaded[0]["lora_path"] == str(tmp_path / "sft-3.gguf")
    folder = tmp_path / "qwen2.5-coder-0.5b+sft-3-humaneval-0-3-heldout-s3"
    saved = json.loads((folder / "compare-b1000-proxy.json").read_text())
    assert saved["lora"].endswith("sft-3.gguf") and saved["strategies"]["hgm"]["tasks"] == 2
    assert saved["held_out_of"] == str(split)


def test_held_out_of_keeps_only_the_proofs_held_out_tasks_before_the_slice(tmp_path: Path) -> None:
    """The real suite loader: the slice counts held-out tasks only, in the suite's order."""
    sc = _load()
    split = tmp_path / "split.json"
    held = ["humaneval__40", "humaneval__11", "humaneval__7"]
    split.write_text(json.dumps({"seed": 0, "humaneval": {"train": ["humaneval__0"], "held_out": held}}))
    seed, keep = sc.held_out_ids(split)
    tasks = sc.suite_tasks("humaneval", "0:2", [0], keep)
    assert seed == 0 and [t.instance_id for t in tasks] == ["humaneval__7", "humaneval__11"]
    assert all(Path(t.repo_path).is_dir() for t in tasks)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not an evolve-proof split"):
        sc.held_out_ids(tmp_path / "bad.json")


def test_each_greedy_first_variant_runs_its_strategy_with_the_option_under_its_own_name(
        fake: tuple[ModuleType, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent_selfevolve.search as search

    sc, _ = fake
    calls: list[tuple[str, str, bool, int | None]] = []

    def strategy(name: str) -> Any:
        def run(ctx: Any, run_id: str, **opts: Any) -> Any:
            calls.append((name, run_id, opts.get("greedy_first", False), opts.get("pool_size")))
            return SimpleNamespace(resolved=True, pass_at_n=True, best_reward=1.0, attempts=1, stop_reason="budget",
                                   usage={"prompt_tokens": 1, "completion_tokens": 1}, oracle=False)
        return run

    names = ("best_of_n", "se_agent", "hgm")
    monkeypatch.setattr(search, "strategies", lambda: {n: strategy(n) for n in names})
    variants = [f"{n}{suffix}" for n in names for suffix in ("", "_greedy")]
    sc.main(["--model", "fake", "--suite", "humaneval", "--budgets", "1000", "--strategies", ",".join(variants),
             "--pool-size", "3", "--out", str(tmp_path)])
    assert len(calls) == 3 * len(variants)
    for name, run_id, flag, pool in calls:  # each variant ran its strategy, with the option, under its own name
        assert f":{name}_greedy:" in run_id if flag else f":{name}:" in run_id
        assert pool == (3 if name == "se_agent" else None)
    assert sum(flag for *_, flag, _ in calls) == 9
    rows = [json.loads(line) for line in (tmp_path / "compare-b1000-proxy.jsonl").read_text().splitlines()]
    assert sorted({r["strategy"] for r in rows}) == sorted(variants)
    calls.clear()
    with pytest.raises(SystemExit):  # a misspelt name fails before any model loads or search runs
        sc.main(["--model", "fake", "--suite", "humaneval", "--budgets", "1000", "--strategies", "best_of_n,bogus",
                 "--out", str(tmp_path / "bad")])
    assert calls == [] and not (tmp_path / "bad").exists()
