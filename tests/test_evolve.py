"""The episode loop with real LoRA training on a tiny model and a FAKE policy (named as such).

The fake policy stands in for "a model with this adapter": the base solves training tasks but not held-out
ones, any trained adapter solves both. So the test checks the loop's logic (data from successes only, held-out
never trained on, lineage, promotion gate, paired report, plot, resume) — not that learning happens; the
benchmark `bench/evolve.py` measures that with the real model.
"""

import json
from pathlib import Path

import pytest
from conftest import solving_script

from agent_selfevolve.evolve import EvolveConfig, EvolveContext, evolve, mcnemar
from agent_selfevolve.models.fake import ScriptedFakeModel, keyed_script, tool_call
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

pytest.importorskip("torch")
pytest.importorskip("peft")


def copies(task: Task, prefix: str, n: int) -> list[Task]:
    return [task.model_copy(update={"instance_id": f"{prefix}-{i}", "problem_statement": f"[{prefix}] add() is wrong"})
            for i in range(n)]


def fake_policy(version: object) -> ScriptedFakeModel:
    give_up = [tool_call("submit", {})]
    if version is None:  # base: solves training tasks only
        return ScriptedFakeModel(keyed_script({"[train]": solving_script(), "[held]": give_up}), name="fake/base")
    return ScriptedFakeModel(keyed_script({"": solving_script()}), name=f"fake/{version.ref}")


def test_mcnemar_exact() -> None:
    before = {str(i): False for i in range(10)}
    after = {str(i): i < 6 for i in range(10)}
    result = mcnemar(before, after)
    assert result["gained"] == 6 and result["lost"] == 0 and abs(result["p_value"] - 2 / 64) < 1e-12


def test_overlapping_train_and_held_out_is_refused_before_anything_runs(demo_task: Task, tmp_path: Path) -> None:
    shared = copies(demo_task, "train", 1)
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    ctx = EvolveContext(train_tasks=shared, held_out=shared, store=store, registry=None, base_hf_dir=tmp_path,
                        policy=fake_policy, out_dir=tmp_path / "evolve")
    with pytest.raises(ValueError, match="train-0"):
        evolve(ctx)
    assert store.count() == 0 and not (tmp_path / "evolve").exists()


def test_episode_loop_trains_gates_reports_and_resumes(demo_task: Task, tmp_path: Path) -> None:
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import AdapterRegistry

    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    registry = AdapterRegistry(tmp_path / "registry")
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    config = EvolveConfig(episodes=2, strategy="best_of_n", strategy_options={"n": 2},
                          train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
    ctx = EvolveContext(train_tasks=copies(demo_task, "train", 2), held_out=copies(demo_task, "held", 2), store=store,
                        registry=registry, base_hf_dir=tiny, policy=fake_policy, out_dir=tmp_path / "evolve",
                        config=config)
    summary = evolve(ctx, run_id="ev1")
    first, second = summary["episodes"]
    assert first["heldout_before"] == 0.0 and first["heldout_after"] == 1.0 and first["promoted"]
    assert first["candidate"] == "policy@1" and first["data"]["sft"] >= 2 and first["paired"]["gained"] == 2
    assert second["policy_before"] == "policy@1" and second["heldout_before"] == 1.0 and not second["promoted"]
    assert summary["final_policy"] == "policy@1"
    assert [v.ref for v in registry.lineage("policy@2")] == ["policy@2", "policy@1"]
    rows = [json.loads(x) for x in (tmp_path / "evolve" / "episode-0" / "sft.jsonl").read_text().splitlines()]
    assert rows and not any("[held]" in json.dumps(r) for r in rows)  # held-out never trained on
    assert (tmp_path / "evolve" / "evolve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "evolve" / "episode-1" / "report.json").read_text())["episode"] == 1
    attempts = store.count()
    again = evolve(ctx, run_id="ev1")  # finished: nothing re-run, nothing re-trained
    assert again["episodes"] == summary["episodes"] and store.count() == attempts
    assert len(registry.versions("policy")) == 2


def test_the_profile_reaches_every_held_out_attempt(demo_task: Task, tmp_path: Path) -> None:
    """EvolveConfig.profile sets each attempt's prompt and tools (here `small`: write_file, the worked example)."""
    from agent_selfevolve.evolve import evaluate_policy
    from agent_selfevolve.profiles import SMALL_MODEL_PROMPT

    model = ScriptedFakeModel(keyed_script({"": [tool_call("submit", {})]}))
    ctx = EvolveContext(train_tasks=[], held_out=copies(demo_task, "held", 2), store=TrajectoryStore(
        tmp_path / "runs.sqlite"), registry=None, base_hf_dir=tmp_path, policy=lambda version: model,
        out_dir=tmp_path, config=EvolveConfig(profile="small"))
    assert evaluate_policy(ctx, None, "base", "p") == {"held-0": False, "held-1": False}
    assert len(model.requests) == 2 and all(r[0]["content"] == SMALL_MODEL_PROMPT for r in model.requests)
    for traj in ctx.store.attempts(run_id="p:eval:base"):
        assert [t["function"]["name"] for t in traj.tools] == ["write_file", "bash", "submit"]


def sibling_policy(version: object) -> ScriptedFakeModel:
    """FAKE policy whose two attempts at a task differ: the first to start solves it, the second looks and gives
    up, so every training task has a successful and a failed sibling (what DPO and recovery rows need)."""
    import itertools
    import threading

    from agent_selfevolve.models.fake import bash

    counters: dict[str, itertools.count] = {}
    lock = threading.Lock()

    def respond(messages: list[dict]) -> dict:
        said = [m for m in messages if m["role"] == "assistant"]
        if not said:
            with lock:
                issue = messages[1]["content"].split("</issue>")[0]  # the rest names a per-attempt sandbox
                k = next(counters.setdefault(issue, itertools.count()))
            return bash("cat calc.py", "Plan A" if k % 2 == 0 else "Plan B")
        if "Plan B" in (said[0].get("content") or ""):
            return tool_call("submit", {})
        return solving_script()[len(said)]

    return ScriptedFakeModel(respond, name="fake/siblings")


def test_recovery_rows_join_the_sft_stage_and_dpo_continues_from_it(demo_task: Task, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--kinds sft,recovery,dpo: recovery rows are trained with the SFT rows (they were once built and dropped),
    then DPO starts from that adapter."""
    from test_train import FAST, _tiny_model

    import agent_selfevolve.train.stages as stages
    from agent_selfevolve.train import AdapterRegistry, read_jsonl

    calls: list[dict] = []
    real = stages.train_lora

    def spy(base: object, data: object, out: object, cfg: object, init_adapter: object = None) -> object:
        rows = data if isinstance(data, list) else read_jsonl(data)
        calls.append({"rows": rows, "objective": cfg.objective, "out": out, "init": init_adapter})
        return real(base, data, out, cfg, init_adapter=init_adapter)

    monkeypatch.setattr(stages, "train_lora", spy)
    config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": 2, "max_concurrency": 1},
                          kinds=["sft", "recovery", "dpo"], min_gain=-100,
                          train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
    ctx = EvolveContext(train_tasks=copies(demo_task, "train", 2), held_out=copies(demo_task, "held", 1),
                        store=TrajectoryStore(tmp_path / "runs.sqlite"),
                        registry=AdapterRegistry(tmp_path / "registry"), base_hf_dir=_tiny_model(tmp_path / "t", 0),
                        policy=sibling_policy, out_dir=tmp_path / "evolve", config=config)
    episode = evolve(ctx, run_id="ab")["episodes"][0]
    assert episode["data"] == {"sft": 2, "recovery": 2, "dpo": 2}
    sft_call, dpo_call = calls
    assert sft_call["objective"] == "sft" and dpo_call["objective"] == "dpo"
    assert sorted(r["meta"]["kind"] for r in sft_call["rows"]) == ["recovery", "recovery", "sft", "sft"]
    assert len(dpo_call["rows"]) == 2 and dpo_call["init"] == sft_call["out"]
    assert episode["train"]["rows"] == 4 and episode["train"]["dpo_steps"] >= 1
