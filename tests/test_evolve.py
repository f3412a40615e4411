"""The episode loop with real LoRA training on a tiny model and a FAKE policy (named as such).

The fake policy stands in for "a model with this adapter": what it does depends on which registered adapter it
is given (and the adapter's files must exist), so evaluating the wrong adapter changes the outcome. The tests check
the loop's logic (data from successes only, gate and final tasks never trained on, lineage, the promotion gate, the
final test split, paired reports, plot, resume) — not that learning happens; `bench/evolve.py` measures that with
the real model.
"""

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import solving_script

from agent_selfevolve.evolve import EvolveConfig, EvolveContext, evolve, gate, mcnemar, promotion
from agent_selfevolve.models.fake import ScriptedFakeModel, keyed_script, tool_call
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task

pytest.importorskip("torch")
pytest.importorskip("peft")


def copies(task: Task, prefix: str, n: int) -> list[Task]:
    return [task.model_copy(update={"instance_id": f"{prefix}-{i}",
                                    "problem_statement": f"[{prefix}] add() is wrong (#{i})"}) for i in range(n)]


def adapter_policy(skills: dict[str | None, dict[str, str]]) -> Callable[[Any], ScriptedFakeModel]:
    """FAKE policy keyed to the adapter it is given: skills[ref][split] is 'solve', 'give_up' or 'once' (solve a
    task the first time this adapter meets it, give up afterwards: one lucky evaluation). A version must be a
    registered adapter whose files exist."""
    seen: Counter[tuple[str | None, str]] = Counter()
    lock = threading.Lock()

    def factory(version: Any) -> ScriptedFakeModel:
        ref = None if version is None else version.ref
        if version is not None:
            assert (Path(version.path) / "adapter_model.safetensors").exists()
        skill = skills[ref]

        def respond(messages: list[dict]) -> dict:
            said = [m for m in messages if m["role"] == "assistant"]
            if said:
                return solving_script()[len(said)]  # only a solving attempt gets a second turn
            issue = messages[1]["content"].split("</issue>")[0]
            mode = skill.get(re.search(r"\[(\w+)\]", issue).group(1), "give_up")
            if mode == "once":
                with lock:
                    seen[(ref, issue)] += 1
                    mode = "solve" if seen[(ref, issue)] == 1 else "give_up"
            return solving_script()[0] if mode == "solve" else tool_call("submit", {})

        return ScriptedFakeModel(respond, name=f"fake/{ref or 'base'}")

    return factory


def test_mcnemar_exact() -> None:
    before = {str(i): False for i in range(10)}
    after = {str(i): i < 6 for i in range(10)}
    result = mcnemar(before, after)
    assert result["gained"] == 6 and result["lost"] == 0 and abs(result["p_value"] - 2 / 64) < 1e-12
    assert abs(result["p_one_sided"] - 1 / 64) < 1e-12
    mixed = mcnemar(after, {str(i): i in (0, 6, 7, 8) for i in range(10)})  # 3 gained, 5 lost
    assert (mixed["gained"], mixed["lost"]) == (3, 5) and abs(mixed["p_one_sided"] - 219 / 256) < 1e-12


def _gate_once(tmp_path: Path, before: dict[str, bool], after: dict[str, bool], **config: Any) -> dict[str, Any]:
    """The graph's own gate node on planted gate-split outcomes."""
    ctx = SimpleNamespace(config=EvolveConfig(**config), out_dir=tmp_path, on_event=None)
    state = {"run_id": "g", "episode": 0, "current": None, "candidate": "policy@1", "current_eval": before,
             "candidate_eval": after, "data": {"sizes": {"sft": 1}}}
    return gate(state, SimpleNamespace(context=ctx))


def test_gate_refuses_a_gain_that_is_not_significant_and_accepts_one_that_is(tmp_path: Path) -> None:
    tasks = [f"g{i}" for i in range(10)]
    base = {t: i < 3 for i, t in enumerate(tasks)}
    plus_one = {**base, "g3": True}  # +1 of 10: one-sided p = 0.5
    update = _gate_once(tmp_path, base, plus_one)
    report = update["episodes"][0]
    assert not report["promoted"] and "current" not in update and report["gate"]["p_one_sided"] == 0.5
    assert "alpha" in report["gate"]["reason"] and report["gate"]["gain"] == 1
    plus_six = {t: i < 9 for i, t in enumerate(tasks)}  # 6 gained, 0 lost: p = 1/64
    update = _gate_once(tmp_path, base, plus_six)
    assert update["episodes"][0]["promoted"] and update["current"] == "policy@1"
    assert update["current_eval"] == {}  # the incumbent is measured again next episode, not credited with this
    assert not _gate_once(tmp_path, base, plus_six, min_gain=7)["episodes"][0]["promoted"]
    assert not _gate_once(tmp_path, base, plus_six, alpha=0.01)["episodes"][0]["promoted"]
    on_disk = json.loads((tmp_path / "episode-0" / "report.json").read_text())
    assert on_disk["gate"]["alpha"] == 0.01 and not on_disk["promoted"]
    with pytest.raises(ValueError, match="unpaired"):
        promotion(base, {t: True for t in tasks[:5]}, 1, 0.05)


@pytest.mark.parametrize("clash", ["train-gate", "train-final", "gate-final"])
def test_overlapping_splits_are_refused_before_anything_runs(demo_task: Task, tmp_path: Path, clash: str) -> None:
    splits = {name: copies(demo_task, name, 2) for name in ("train", "gate", "final")}
    a, b = clash.split("-")
    splits[b] = splits[b] + splits[a][:1]
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    ctx = EvolveContext(train_tasks=splits["train"], held_out=splits["gate"], final_test=splits["final"],
                        store=store, registry=None, base_hf_dir=tmp_path, policy=adapter_policy({}),
                        out_dir=tmp_path / "evolve")
    with pytest.raises(ValueError, match=f"{a}-0"):
        evolve(ctx)
    assert store.count() == 0 and not (tmp_path / "evolve").exists()


def _spy_training(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import agent_selfevolve.train.stages as stages
    from agent_selfevolve.train import read_jsonl

    calls: list[dict] = []
    real = stages.train_lora

    def spy(base: object, data: object, out: object, cfg: Any, init_adapter: object = None, **more: Any) -> object:
        rows = data if isinstance(data, list) else read_jsonl(data)
        resume = more.get("resume_dir")
        calls.append({"rows": rows, "objective": cfg.objective, "out": out, "init": init_adapter, "resume": resume,
                      "saved_state": resume is not None and (Path(resume) / "state.pt").exists(),
                      "stop_at": more.get("stop_at")})
        return real(base, data, out, cfg, init_adapter=init_adapter, **more)

    monkeypatch.setattr(stages, "train_lora", spy)
    return calls


def test_episode_loop_trains_gates_reports_and_resumes(demo_task: Task, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """policy@1 is lucky once on the gate split: promoted in episode 0, it must be re-measured (and fail) as the
    incumbent of episode 1, where policy@2, trained on top of it, is promoted; the final split then sees policy@2."""
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import AdapterRegistry

    calls = _spy_training(monkeypatch)
    policy = adapter_policy({None: {"train": "solve"}, "policy@1": {"train": "solve", "gate": "once"},
                             "policy@2": {"train": "solve", "gate": "solve", "final": "solve"}})
    registry = AdapterRegistry(tmp_path / "registry")
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    config = EvolveConfig(episodes=2, strategy="best_of_n", strategy_options={"n": 2}, kinds=["sft", "dpo"],
                          train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
    ctx = EvolveContext(train_tasks=copies(demo_task, "train", 2), held_out=copies(demo_task, "gate", 5),
                        final_test=copies(demo_task, "final", 2), store=store, registry=registry,
                        base_hf_dir=_tiny_model(tmp_path / "tiny", seed=0), policy=policy,
                        out_dir=tmp_path / "evolve", config=config)
    summary = evolve(ctx, run_id="ev1")
    first, second = summary["episodes"]
    assert first["heldout_before"] == 0.0 and first["heldout_after"] == 1.0 and first["promoted"]
    assert first["candidate"] == "policy@1" and first["data"]["sft"] >= 2 and first["paired"]["gained"] == 5
    assert second["policy_before"] == "policy@1" and second["heldout_before"] == 0.0  # re-measured, not carried
    assert second["candidate"] == "policy@2" and second["heldout_after"] == 1.0 and second["promoted"]
    assert store.count("ev1:gate:ep1:policy@1") == 5 and store.count("ev1:gate:ep0:policy@1") == 5
    assert summary["final_policy"] == "policy@2"
    final = summary["final_test"]
    assert (final["policy"], final["n"], final["base"], final["final"]) == ("policy@2", 2, 0.0, 1.0)
    assert [v.ref for v in registry.lineage("policy@2")] == ["policy@2", "policy@1"]
    assert registry.get("policy@2").metrics["trained_from"] == "policy@1"
    assert registry.get("policy@2").metrics["train_prompts"] == first["data_prompts"] == "canonical"
    assert "no task has both" in first["data_warnings"]["dpo"]  # every attempt solved: no pairs, and it says so
    sft_inits = [c["init"] for c in calls if c["objective"] == "sft"]
    assert sft_inits == [None, registry.get("policy@1").path]  # parent = what the weights grew from
    searched = [t for t in store.attempts() if t.run_id.startswith("ev1:ep")]
    assert searched and {t.selection["source"] for t in searched} == {"proxy"}
    for ep in (0, 1):
        text = (tmp_path / "evolve" / f"episode-{ep}" / "sft.jsonl").read_text()
        assert text and "[gate]" not in text and "[final]" not in text  # gate and final never trained on
    assert (tmp_path / "evolve" / "evolve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "evolve" / "episode-1" / "report.json").read_text())["episode"] == 1
    attempts = store.count()
    again = evolve(ctx, run_id="ev1")  # finished: nothing re-run, nothing re-trained
    assert again == summary and store.count() == attempts
    assert len(registry.versions("policy")) == 2


def test_a_training_paused_at_its_deadline_goes_on_from_its_state_in_the_next_run(
        demo_task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train_stop_at` already past: the training pauses (TrainingPaused out of `evolve`) with its state saved under
    the registry's `.resume/` and nothing registered. The same call without a deadline trains from that state (the
    same resume dir, the state there when it starts), registers the adapter, removes the state, and runs no search
    attempt again."""
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import AdapterRegistry, TrainingPaused

    calls = _spy_training(monkeypatch)
    policy = adapter_policy({None: {"train": "solve"}, "policy@1": {"train": "solve", "gate": "solve"}})
    registry = AdapterRegistry(tmp_path / "registry")
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": 1},
                          train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
    ctx = EvolveContext(train_tasks=copies(demo_task, "train", 2), held_out=copies(demo_task, "gate", 2),
                        store=store, registry=registry, base_hf_dir=_tiny_model(tmp_path / "tiny", seed=0),
                        policy=policy, out_dir=tmp_path / "evolve", config=config, train_stop_at=time.time() - 1)
    with pytest.raises(TrainingPaused):
        evolve(ctx, run_id="web:s0")
    assert registry.versions("policy") == []
    paused = calls[-1]
    assert paused["stop_at"] == ctx.train_stop_at and (Path(paused["resume"]) / "state.pt").exists()
    resume_dir = registry.resume_path("web:s0-ep0")  # the run's, per episode; the SFT stage's state in sft/
    assert Path(paused["resume"]) == resume_dir / "sft" and resume_dir.parent == registry.root / ".resume"
    searched = {t.attempt_id for t in store.attempts() if t.run_id.startswith("web:s0:ep")}
    assert len(searched) == 2  # one attempt per training task, made before training began
    ctx.train_stop_at = None
    summary = evolve(ctx, run_id="web:s0")
    resumed = calls[-1]
    assert resumed["resume"] == paused["resume"] and resumed["saved_state"] and resumed["stop_at"] is None
    assert summary["episodes"][0]["candidate"] == "policy@1"
    assert not resume_dir.exists()  # registered: the state is gone
    assert {t.attempt_id for t in store.attempts() if t.run_id.startswith("web:s0:ep")} == searched


def test_the_final_split_never_reaches_the_gate(demo_task: Task, tmp_path: Path) -> None:
    """Two runs that differ only in how the candidate does on the final split (planted: in run B it loses both
    final tasks the base solves, which would sink the p-value if the gate pooled the splits). The gate decides the
    same; only the final report differs, and the final split is evaluated only after the last gate."""
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import AdapterRegistry

    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    runs = {}
    for name, final_skill in (("a", "solve"), ("b", "give_up")):
        policy = adapter_policy({None: {"train": "solve", "final": "solve"},
                                 "policy@1": {"train": "solve", "gate": "solve", "final": final_skill}})
        events: list[dict] = []
        config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": 1}, alpha=0.2,
                              train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
        ctx = EvolveContext(train_tasks=copies(demo_task, "train", 1), held_out=copies(demo_task, "gate", 3),
                            final_test=copies(demo_task, "final", 2),
                            store=TrajectoryStore(tmp_path / name / "runs.sqlite"),
                            registry=AdapterRegistry(tmp_path / name / "registry"), base_hf_dir=tiny,
                            policy=policy, out_dir=tmp_path / name / "evolve", config=config, on_event=events.append)
        runs[name] = (evolve(ctx, run_id="leak"), events)
    (a, events_a), (b, events_b) = runs["a"], runs["b"]
    assert a["episodes"][0]["gate"] == b["episodes"][0]["gate"] and a["episodes"][0]["promoted"]
    assert a["final_policy"] == b["final_policy"] == "policy@1"
    assert (a["final_test"]["final"], b["final_test"]["final"]) == (1.0, 0.0)  # the plant took effect
    assert b["final_test"]["paired"]["lost"] == 2
    for events in (events_a, events_b):
        last_gate = max(i for i, e in enumerate(events) if e["event"] == "episode_finished")
        finals = [i for i, e in enumerate(events) if e["event"] == "eval" and e["split"] == "final"]
        assert len(finals) == 4 and min(finals) > last_gate
        assert all(not e["task_id"].startswith("final") for e in events[:last_gate] if e["event"] == "eval")


def test_a_candidate_the_gate_kept_out_is_reported_on_the_final_split_beside_the_base(
        demo_task: Task, tmp_path: Path) -> None:
    """The gate cannot promote (alpha 0: no p is below it), so the final policy is the base. With `final_candidate`
    the candidate still runs on the final split (planted: it solves both final tasks the base fails), labelled as
    not promoted, and the headline final figure stays the base's own."""
    from test_train import FAST, _tiny_model

    from agent_selfevolve.train import AdapterRegistry

    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    finals = {}
    for report_candidate in (False, True):
        name = f"c{int(report_candidate)}"
        policy = adapter_policy({None: {"train": "solve"},
                                 "policy@1": {"train": "solve", "gate": "solve", "final": "solve"}})
        config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": 1}, alpha=0.0,
                              final_candidate=report_candidate,
                              train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 2048})
        ctx = EvolveContext(train_tasks=copies(demo_task, "train", 1), held_out=copies(demo_task, "gate", 2),
                            final_test=copies(demo_task, "final", 2),
                            store=TrajectoryStore(tmp_path / name / "runs.sqlite"),
                            registry=AdapterRegistry(tmp_path / name / "registry"), base_hf_dir=tiny,
                            policy=policy, out_dir=tmp_path / name / "evolve", config=config)
        summary = evolve(ctx, run_id="cand")
        assert not summary["episodes"][0]["promoted"] and summary["final_policy"] == "base"
        finals[report_candidate] = summary["final_test"]
    assert "candidate" not in finals[False]
    final = finals[True]
    assert (final["policy"], final["base"], final["final"]) == ("base", 0.0, 0.0)
    assert final["candidate"]["policy"] == "policy@1" and not final["candidate"]["promoted"]
    assert final["candidate"]["final"] == 1.0 and final["candidate"]["paired"]["gained"] == 2


def test_the_profile_reaches_every_held_out_attempt(demo_task: Task, tmp_path: Path) -> None:
    """EvolveConfig.profile sets each attempt's prompt and tools (here `small`: write_file, the worked example)."""
    from agent_selfevolve.evolve import evaluate_policy
    from agent_selfevolve.setups import get_setup

    model = ScriptedFakeModel(keyed_script({"": [tool_call("submit", {})]}))
    tasks = copies(demo_task, "held", 2)
    ctx = EvolveContext(train_tasks=[], held_out=tasks, store=TrajectoryStore(
        tmp_path / "runs.sqlite"), registry=None, base_hf_dir=tmp_path, policy=lambda version: model,
        out_dir=tmp_path, config=EvolveConfig(profile="small"))
    assert evaluate_policy(ctx, None, tasks, "p:gate") == {"held-0": False, "held-1": False}
    assert len(model.requests) == 2 and all(r[0]["content"] == get_setup("small").system_prompt for r in model.requests)
    for traj in ctx.store.attempts(run_id="p:gate"):
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

    from agent_selfevolve.train import AdapterRegistry

    calls = _spy_training(monkeypatch)
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


def test_the_bench_cuts_three_disjoint_splits_from_its_seed() -> None:
    """bench/evolve.py and its ablation share one seeded split into train / gate / final test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_evolve", Path(__file__).parents[1] / "bench" / "evolve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train, gate_split, final = bench.split_tasks(0, 100, 32, 32)
    ids = [{t.instance_id for t in split} for split in (train, gate_split, final)]
    assert [len(s) for s in ids] == [100, 32, 32] and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [t.instance_id for t in bench.split_tasks(0, 100, 32, 32)[2]] == [t.instance_id for t in final]
    assert [t.instance_id for t in bench.split_tasks(1, 100, 32, 32)[2]] != [t.instance_id for t in final]
    with pytest.raises(SystemExit):
        bench.split_tasks(0, 100, 50, 50)
