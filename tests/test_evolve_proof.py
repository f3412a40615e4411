"""bench/evolve_proof.py with a FAKE policy and a FAKE trainer (bench/evolve_proof_fake.py), on copies of the demo
task: real sandboxes, hidden-test grading, best-of-N search, `build_dataset` rows and the adapter registry.

What is checked is the harness, not learning: units run in order and stop before the deadline; a resumed or
fresh-machine run recomputes nothing committed; a lost adapter is retrained from the committed rows, and tampered
rows fail loudly; held-out tasks and held-out factory projects never reach a training row; the report pools seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FIX, HIDDEN_TEST, make_demo_repo

from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.sources.factory_repo import project_of
from agent_selfevolve.tasks import Task
from agent_selfevolve.train import AdapterRegistry
from agent_selfevolve.train.registry import adapter_hash

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import evolve_proof as ep  # noqa: E402
from evolve_proof_core import (  # noqa: E402
    OutOfTime,
    Pools,
    ProofConfig,
    ProofError,
    Unit,
    append_record,
    arm_kinds,
    check_code,
    code_fingerprint,
    held_out_ids,
    load_split,
    plain_dpo_arm,
    plan,
    read_records,
    resolve_config,
    same_weights,
    train_ids,
    unit_dir,
)
from evolve_proof_fake import FakeTrainer, fake_policy  # noqa: E402
from evolve_proof_report import adapter_provenance, build_report, format_report  # noqa: E402
from evolve_proof_units import Backend, Proof  # noqa: E402

SMALL = {"episodes": 2, "humaneval_held_out": 3, "humaneval_train": 2, "factory_held_out": 0, "factory_train": 0,
         "samples_per_task": 2, "temperature": 1.0, "max_steps": 4, "profile": "small"}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(repo: Path) -> Path:
    return make_demo_repo(repo)


def task_copies(repo_dir: Path, ids: list[str], **extra: Any) -> list[Task]:
    """Copies of the demo task; each issue carries a marker naming its task, to be looked for in training rows."""
    head = _git(repo_dir, "rev-parse", "HEAD")
    repo_name = extra.pop("repo", "local/demo")
    return [Task(instance_id=i, repo=repo_name, repo_path=str(repo_dir), base_commit=head,
                 problem_statement=f"add() is wrong (MARKER-{i})",
                 patch=FIX, test_patch=HIDDEN_TEST, FAIL_TO_PASS=["tests/test_hidden.py::test_add_hidden"],
                 PASS_TO_PASS=["tests/test_calc.py::test_mul"], test_files=["tests/test_calc.py",
                                                                            "tests/test_hidden.py"],
                 **extra) for i in ids]


def fake_backend(tasks: list[Task], work: Path, trainer: FakeTrainer, always: tuple[str, ...] = ()) -> Backend:
    return Backend(policy=fake_policy(tasks, always=always), train=trainer, base_hf_dir=work,
                   registry=AdapterRegistry(work / "registry"), label="FAKE")


def make_proof(root: Path, work: Path, trainer: FakeTrainer, config: ProofConfig | None = None,
               **kw: Any) -> Proof:
    """A Proof over the committed results in `root` (config and split from there), as a later run would make."""
    seed_dir = root / "seed0"
    config = config or ProofConfig.from_dict(json.loads((seed_dir / "config.json").read_text()))
    split = json.loads((seed_dir / "split.json").read_text())
    pool = task_copies(Path(json.loads((root / "repo.json").read_text())), [*held_out_ids(split), *train_ids(split)])
    tasks = {t.instance_id: t for t in pool}
    backend = fake_backend(pool, work, trainer, always=tuple(held_out_ids(split)))
    return Proof(config, split, tasks, seed_dir, work, backend, log=lambda _: None, **kw)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete FAKE proof (seed 0, 2 episodes), shared by the tests that read or copy its results. Held-out
    tasks are planted as always solved: searched, they would give training rows with their marker."""
    base = tmp_path_factory.mktemp("proof")
    old = os.environ.get("AGENT_SELFEVOLVE_CACHE")
    os.environ["AGENT_SELFEVOLVE_CACHE"] = str(base / "cache")
    try:
        repo = make_repo(base / "demo")
        root = base / "results"
        seed_dir = root / "seed0"
        config = resolve_config(seed_dir, 0, SMALL)
        split, _ = load_split(seed_dir, config, Pools(task_copies(repo, [f"he-{i}" for i in range(6)]), [], []))
        (root / "repo.json").write_text(json.dumps(str(repo)))
        proof = make_proof(root, base / "work", FakeTrainer())
        for unit in plan(config, "sft"):
            proof.run_unit(unit)
        return root
    finally:
        if old is None:
            os.environ.pop("AGENT_SELFEVOLVE_CACHE", None)
        else:
            os.environ["AGENT_SELFEVOLVE_CACHE"] = old


def copy_results(full_run: Path, tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(full_run, root)
    return root


def test_units_run_in_order_and_an_ablation_arm_trains_the_search_arm_first() -> None:
    config = ProofConfig(seed=0, episodes=2)
    assert [u.name for u in plan(config, "sft")] == ["base-eval", "search-ep0", "train-ep0[sft]", "eval-ep0[sft]",
                                                     "search-ep1", "train-ep1[sft]", "eval-ep1[sft]"]
    assert [u.name for u in plan(config, "sft+dpo")] == [
        "base-eval", "search-ep0", "train-ep0[sft+dpo]", "eval-ep0[sft+dpo]", "train-ep0[sft]", "search-ep1",
        "train-ep1[sft+dpo]", "eval-ep1[sft+dpo]"]
    assert [u.name for u in plan(config, "sft+dpo", at_episode=1)] == [
        "base-eval", "search-ep0", "train-ep0[sft]", "search-ep1", "train-ep1[sft+dpo]", "eval-ep1[sft+dpo]"]
    for arm, at, init in (("sft", 1, "base"), ("sft+dpo", 2, "base"), ("sft+dpo", 1, "previous")):
        with pytest.raises(ProofError):  # the search arm, an episode the seed lacks, a chained adapter
            plan(ProofConfig(seed=0, episodes=2, init=init), arm, at_episode=at)
    assert ep.arm_of("dpo,sft") == "sft+dpo" and ep.arm_of("sft, recovery") == "sft+recovery"
    with pytest.raises(SystemExit):
        ep.arm_of("dpo")


def test_the_full_run_finished_every_unit_with_paired_summaries(full_run: Path) -> None:
    seed_dir = full_run / "seed0"
    last = json.loads((seed_dir / "ep1" / "sft" / "summary.json").read_text())
    assert last["n"] == 3 and last["vs_base"] is not None and last["vs_previous"] is not None
    assert last["policy"]["episode"] == 1 and last["command"] == "" and last["sessions"]
    search = json.loads((seed_dir / "ep0" / "search" / "summary.json").read_text())
    assert search["attempts"] == 4 and search["samples_per_task"] == 2 and set(search["row_hashes"]) == {
        "sft", "recovery", "dpo", "rationalized"}
    assert all("rows" not in r for r in read_records(seed_dir / "ep0" / "search" / "tasks.jsonl"))


def test_held_out_tasks_never_reach_a_training_row(full_run: Path) -> None:
    seed_dir = full_run / "seed0"
    split = json.loads((seed_dir / "split.json").read_text())
    held, train = held_out_ids(split), train_ids(split)
    assert len(held) == 3 and not set(held) & set(train)
    for k in (0, 1):  # the plant was live: every held-out task solved, by the base and by each adapter
        assert all(r["resolved"] for r in read_records(seed_dir / f"ep{k}" / "sft" / "outcomes.jsonl"))
    sft_rows = 0
    for path in seed_dir.glob("ep*/search/rows-*.jsonl"):
        text = path.read_text()
        sft_rows += text.count("\n") if path.name == "rows-sft.jsonl" else 0
        assert not any(f"MARKER-{i})" in text for i in held), path
        assert {json.loads(line)["meta"]["task_id"] for line in text.splitlines()} <= set(train)
    assert sft_rows > 0  # there were training rows to leak into


def test_a_resumed_or_fresh_machine_run_recomputes_nothing_committed(full_run: Path, tmp_path: Path) -> None:
    root = copy_results(full_run, tmp_path)
    before = snapshot(root)
    trainer = FakeTrainer()
    proof = make_proof(root, tmp_path / "fresh-work", trainer)  # a fresh machine: no store, no adapters
    for unit in plan(proof.config, "sft"):
        proof.run_unit(unit)
    assert proof.store.count() == 0 and trainer.calls == []
    assert snapshot(root) == before


def test_a_kill_mid_unit_reruns_only_the_unfinished_task_and_rederives_the_adapter(full_run: Path,
                                                                                   tmp_path: Path) -> None:
    root = copy_results(full_run, tmp_path)
    folder = root / "seed0" / "ep1" / "sft"
    (folder / "summary.json").unlink()
    lines = (folder / "outcomes.jsonl").read_text().splitlines(keepends=True)
    (folder / "outcomes.jsonl").write_text("".join(lines[:-1]) + lines[-1][:25])  # killed mid-append
    others = {k: v for k, v in snapshot(root).items() if not k.startswith("seed0/ep1/sft/")}
    trainer = FakeTrainer()
    proof = make_proof(root, tmp_path / "fresh-work", trainer)
    for unit in plan(proof.config, "sft"):
        proof.run_unit(unit)
    assert proof.store.count() == 1  # only the task whose line was torn
    assert len(trainer.calls) == 1  # episode 1's adapter, re-derived from the committed rows (init: base)
    recorded = json.loads((folder / "train.json").read_text())
    rederived = read_records(folder / "rederived.jsonl")
    assert rederived[0]["same_weights"] and rederived[0]["adapter_hash"] == recorded["adapter_hash"]
    assert len(read_records(folder / "outcomes.jsonl")) == 3 and (folder / "summary.json").exists()
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("seed0/ep1/sft/")} == others


def test_tasks_run_on_a_rederived_adapter_with_other_weights_are_named_in_the_report(full_run: Path,
                                                                                      tmp_path: Path) -> None:
    """A fresh machine whose trainer gives other weights from the same rows (FAKE `machine`): the task it reruns
    names that adapter, and the report says how many tasks ran on which; a record without the field (written by
    an older bench) is placed by its session."""
    root = copy_results(full_run, tmp_path)
    folder = root / "seed0" / "ep1" / "sft"
    assert adapter_provenance(root / "seed0") == []
    first = json.loads((folder / "train.json").read_text())["adapter_hash"]
    assert {r["adapter"] for r in read_records(folder / "outcomes.jsonl")} == {first}
    (folder / "summary.json").unlink()
    lines = (folder / "outcomes.jsonl").read_text().splitlines(keepends=True)
    (folder / "outcomes.jsonl").write_text("".join(lines[:-1]))
    proof = make_proof(root, tmp_path / "fresh-work", FakeTrainer(machine="other"))
    proof.run_unit(Unit("eval", 1, "sft"))
    rederived = read_records(folder / "rederived.jsonl")[0]
    assert not rederived["same_weights"]
    rerun = read_records(folder / "outcomes.jsonl")[-1]
    assert rerun["adapter"] == rederived["adapter_hash"] != first
    expected = [{"unit": "sft ep1 eval", "adapter_of": "sft ep1", "first": first, "tasks": 3, "on_first": 2,
                 "on_other": {rederived["adapter_hash"]: 1}}]
    assert adapter_provenance(root / "seed0") == expected
    legacy = [{k: v for k, v in r.items() if k != "adapter"} for r in read_records(folder / "outcomes.jsonl")]
    (folder / "outcomes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    assert adapter_provenance(root / "seed0") == expected
    report = format_report(build_report(root))
    assert f"seed 0 sft ep1 eval: 2 of 3 tasks on sft ep1's adapter as first trained ({first[:12]}), 1 on " \
           f"{rederived['adapter_hash'][:12]}" in report


def test_a_rederived_adapter_with_the_same_weights_is_the_same_whatever_its_module_order(full_run: Path,
                                                                                         tmp_path: Path) -> None:
    """A train.json written before weights were hashed alone records only the registry's hash, which covered the
    config as peft wrote it: target_modules from a set, in an order that changed with each process (seed 1's
    episode-0 adapter, re-derived on a fresh machine, was recorded as different for this). Same weights in another
    order count as the same; other weights are still told apart."""
    first = full_run / "seed0" / "ep1" / "sft" / "train.json"
    info = json.loads(first.read_text())
    adapter = make_proof(copy_results(full_run, tmp_path / "a"), tmp_path / "a" / "work", FakeTrainer()) \
        .adapter("sft", 1)
    old_process = tmp_path / "old-process"  # the adapter as a registry before sorting saw it
    shutil.copytree(adapter.path, old_process)
    config = json.loads((old_process / "adapter_config.json").read_text())
    (old_process / "adapter_config.json").write_text(json.dumps(
        {**config, "target_modules": sorted(config["target_modules"], reverse=True)}, indent=2, sort_keys=True))
    legacy = {**{k: v for k, v in info.items() if k != "weights_hash"}, "adapter_hash": adapter_hash(old_process)}
    assert legacy["adapter_hash"] != adapter.adapter_hash
    for name, trainer, same in (("same", FakeTrainer(), True), ("other", FakeTrainer(machine="other"), False)):
        root = copy_results(full_run, tmp_path / name)
        train = root / "seed0" / "ep1" / "sft" / "train.json"
        train.write_text(json.dumps(legacy))
        found = make_proof(root, tmp_path / name / "fresh-work", trainer).adapter("sft", 1)
        record = read_records(train.with_name("rederived.jsonl"))[0]
        assert record["same_weights"] is same and (record["weights_hash"] == info["weights_hash"]) is same
        assert same_weights(found.path, legacy["adapter_hash"]) is same


def test_a_training_that_outlasts_the_session_pauses_and_the_next_run_goes_on_from_its_state(
        full_run: Path, tmp_path: Path) -> None:
    """FAKE trainer that pauses at the deadline once: the unit stays unfinished (no train.json, nothing else
    changed), the run stops as out of time, and the next run trains from the same resume dir and finishes."""
    root = copy_results(full_run, tmp_path)
    folder = root / "seed0" / "ep0" / "sft"
    (folder / "train.json").unlink()
    before = snapshot(root)
    trainer = FakeTrainer(pauses=1)
    with pytest.raises(OutOfTime, match="paused at step 1/2"):
        make_proof(root, tmp_path / "work", trainer, deadline=10**12).run_unit(Unit("train", 0, "sft"))
    assert snapshot(root) == before and trainer.calls[0]["paused"]
    make_proof(root, tmp_path / "work", trainer, deadline=10**12).run_unit(Unit("train", 0, "sft"))
    assert trainer.calls[1]["resumed"] and trainer.calls[1]["resume_dir"] == trainer.calls[0]["resume_dir"]
    assert json.loads((folder / "train.json").read_text())["train_hash"] == \
        json.loads((full_run / "seed0" / "ep0" / "sft" / "train.json").read_text())["train_hash"]


def test_tampered_rows_or_a_changed_config_fail_loudly_on_rederivation(full_run: Path, tmp_path: Path) -> None:
    root = copy_results(full_run, tmp_path)
    rows = root / "seed0" / "ep0" / "search" / "rows-sft.jsonl"
    original = rows.read_text()
    rows.write_text(original.replace("return a + b", "return a + b  # edited", 1))
    assert rows.read_text() != original
    trainer = FakeTrainer()
    with pytest.raises(ProofError, match="rows were changed"):
        make_proof(root, tmp_path / "w1", trainer).adapter("sft", 1)
    rows.write_text(original)
    config = ProofConfig.from_dict({**json.loads((root / "seed0" / "config.json").read_text()),
                                    "train": {"rank": 8, "alpha": 16, "lr": 1e-4, "epochs": 1, "max_length": 4096}})
    with pytest.raises(ProofError, match="rows or config changed"):
        make_proof(root, tmp_path / "w2", trainer, config=config).adapter("sft", 1)
    assert trainer.calls == []
    assert make_proof(root, tmp_path / "w3", trainer).adapter("sft", 1) is not None and len(trainer.calls) == 1


def test_the_run_stops_before_the_deadline_and_continues_where_it_stopped(tmp_path: Path, demo_repo: Path) -> None:
    """A virtual clock that only the FAKE model moves (30 s a call; every attempt gives up in one call), so each
    held-out task takes exactly 30 s: with 100 s left, three tasks fit and the fourth is never started."""
    clock = {"t": 1000.0}

    def respond(messages: list[dict]) -> dict:
        clock["t"] += 30
        return tool_call("submit", {})

    tasks = task_copies(demo_repo, [f"he-{i}" for i in range(7)])
    seed_dir = tmp_path / "results" / "seed0"
    config = resolve_config(seed_dir, 0, {**SMALL, "humaneval_held_out": 5})
    split, by_id = load_split(seed_dir, config, Pools(tasks, [], []))
    backend = Backend(policy=lambda version: ScriptedFakeModel(respond), train=FakeTrainer(),
                      base_hf_dir=tmp_path, registry=None, label="FAKE")

    def run(deadline: float) -> Proof:
        proof = Proof(config, split, by_id, seed_dir, tmp_path / "work", backend, deadline=deadline,
                      log=lambda _: None, clock=lambda: clock["t"], progress=tmp_path / "progress.jsonl")
        proof.run_unit(Unit("eval"))
        return proof

    with pytest.raises(OutOfTime, match="base-eval task"):
        run(clock["t"] + 100)
    assert clock["t"] == 1090 and len(read_records(seed_dir / "base" / "outcomes.jsonl")) == 3
    assert not (seed_dir / "base" / "summary.json").exists()
    proof = run(clock["t"] + 1000)
    assert proof.store.count() == 5 and len(read_records(seed_dir / "base" / "outcomes.jsonl")) == 5
    assert json.loads((seed_dir / "base" / "summary.json").read_text())["n"] == 5
    assert [e["done"] for e in read_records(tmp_path / "progress.jsonl") if e["event"] == "task"] == [1, 2, 3, 4, 5]


def test_until_minutes_zero_stops_before_any_work(tmp_path: Path, demo_repo: Path) -> None:
    tasks = task_copies(demo_repo, [f"he-{i}" for i in range(6)])
    args = ep.build_parser().parse_args(["--seed", "0", "--until-minutes", "0", "--out", str(tmp_path / "r"),
                                         "--work", str(tmp_path / "w"), "--episodes", "1",
                                         "--humaneval-held-out", "3", "--humaneval-train", "2",
                                         "--factory-held-out", "0", "--factory-train", "0"])
    code = ep.run_seed(args, "cmd", pools_of=lambda c: Pools(tasks, [], []),
                       backend_of=lambda a, c, s, t, w: fake_backend(tasks, w, FakeTrainer()))
    assert code == ep.EXIT_MORE_TO_DO
    assert not (tmp_path / "r" / "seed0" / "base" / "outcomes.jsonl").exists()
    sessions = read_records(tmp_path / "r" / "seed0" / "sessions.jsonl")
    assert [s["event"] for s in sessions] == ["start", "end"] and "min left" in sessions[1]["stopped"]


def test_a_seed_refuses_to_continue_on_other_agent_code(tmp_path: Path, demo_repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The base evaluation and every episode run the same agent: a changed package stops the run before any work,
    unless the change is declared (and recorded beside the old fingerprint)."""
    tasks = task_copies(demo_repo, [f"he-{i}" for i in range(6)])
    argv = ["--seed", "0", "--until-minutes", "0", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w"),
            "--episodes", "1", "--humaneval-held-out", "3", "--humaneval-train", "2", "--factory-held-out", "0",
            "--factory-train", "0", "--code-note", "commit aaa"]

    def run(*extra: str) -> int:
        return ep.run_seed(ep.build_parser().parse_args([*argv, *extra]), "cmd",
                           pools_of=lambda c: Pools(tasks, [], []),
                           backend_of=lambda a, c, s, t, w: fake_backend(tasks, w, FakeTrainer()))

    assert run() == ep.EXIT_MORE_TO_DO
    code_json = tmp_path / "r" / "seed0" / "code.json"
    first = json.loads(code_json.read_text())
    assert first["note"] == "commit aaa" and first["history"] == []
    assert run() == ep.EXIT_MORE_TO_DO  # the same code goes on
    changed = tmp_path / "pkg" / "agent_selfevolve"
    changed.mkdir(parents=True)
    (changed / "__init__.py").write_text("# the agent, edited\n")
    monkeypatch.setattr("agent_selfevolve.__file__", str(changed / "__init__.py"))  # where the code is read
    with pytest.raises(ProofError, match="commit aaa.*--allow-code-change"):
        run()
    assert json.loads(code_json.read_text()) == first
    assert run("--allow-code-change", "--code-note", "commit bbb") == ep.EXIT_MORE_TO_DO
    now = json.loads(code_json.read_text())
    assert now["note"] == "commit bbb" and now["history"] == [{"fingerprint": first["fingerprint"],
                                                                "note": "commit aaa"}]


def test_the_agent_tree_builder_lays_files_over_a_base_and_refuses_a_tree_that_is_not_the_seeds(
        tmp_path: Path) -> None:
    """bench/agent_tree.py on this repository's HEAD (a CI clone may have no older commit): the tree gets HEAD's
    bench/ and the base's agent with the named files over it, its recipe in AGENT_TREE.json; built for a seed, a
    fingerprint other than code.json's leaves nothing behind, and the recorded one builds."""
    import agent_tree

    root = Path(__file__).resolve().parents[1]
    head_attempt = subprocess.run(["git", "show", "HEAD:agent_selfevolve/attempt.py"], cwd=root,
                                  capture_output=True, check=True).stdout
    fingerprint = agent_tree.build(tmp_path / "a", "HEAD", {"agent_selfevolve/attempt.py": "HEAD"})
    assert (tmp_path / "a" / "agent_selfevolve" / "attempt.py").read_bytes() == head_attempt
    assert (tmp_path / "a" / "bench" / "evolve_proof.py").exists() and (tmp_path / "a" / "tools").is_dir()
    assert json.loads((tmp_path / "a" / "AGENT_TREE.json").read_text()) == {
        "base": "HEAD", "files": {"agent_selfevolve/attempt.py": "HEAD"}}
    assert fingerprint == code_fingerprint(tmp_path / "a")
    with pytest.raises(SystemExit, match="only files of agent_selfevolve"):
        agent_tree.build(tmp_path / "b", "HEAD", {"bench/evolve_proof.py": "HEAD"})
    results = tmp_path / "results"
    (results / "seed0").mkdir(parents=True)
    tree = {"base": "HEAD", "files": {}}
    (results / "seed0" / "code.json").write_text(json.dumps({"fingerprint": "0" * 64, "note": "x", "tree": tree}))
    with pytest.raises(SystemExit, match="is not seed 0's"):
        agent_tree.main(["--seed", "0", "--results", str(results), str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()
    (results / "seed0" / "code.json").write_text(json.dumps({"fingerprint": agent_tree.build(
        tmp_path / "d", "HEAD", {}), "note": "x", "tree": tree}))
    agent_tree.main(["--seed", "0", "--results", str(results), str(tmp_path / "e")])
    assert (tmp_path / "e" / "AGENT_TREE.json").exists()


def test_code_json_records_the_recipe_of_the_tree_the_seed_runs_on(tmp_path: Path) -> None:
    """A run from a built tree records its recipe: on a new record, on a declared change (the old recipe goes to
    the history), and once on a record that lacked it."""
    checkout, seed_dir = tmp_path / "checkout", tmp_path / "seed0"
    checkout.mkdir()
    seed_dir.mkdir()
    check_code(seed_dir, "first", checkout=checkout)
    assert "tree" not in json.loads((seed_dir / "code.json").read_text())
    (checkout / "AGENT_TREE.json").write_text(json.dumps({"base": "abc", "files": {}}))
    check_code(seed_dir, "same code", checkout=checkout)
    record = json.loads((seed_dir / "code.json").read_text())
    assert record["tree"] == {"base": "abc", "files": {}} and record["note"] == "first"
    record["fingerprint"] = "f" * 64  # as if the seed had run on other code
    (seed_dir / "code.json").write_text(json.dumps(record))
    (checkout / "AGENT_TREE.json").write_text(json.dumps({"base": "abc", "files": {"agent_selfevolve/x.py": "d"}}))
    check_code(seed_dir, "with x.py", allow_change=True, checkout=checkout)
    now = json.loads((seed_dir / "code.json").read_text())
    assert now["tree"]["files"] == {"agent_selfevolve/x.py": "d"} and now["note"] == "with x.py"
    assert now["history"] == [{"fingerprint": "f" * 64, "note": "first", "tree": {"base": "abc", "files": {}}}]


def test_factory_held_out_projects_never_reach_a_training_row(tmp_path: Path, demo_repo: Path,
                                                              isolated_cache: Path) -> None:
    """Factory tasks of four projects through the real `factory-train-s0` / `factory-held-out-s0` sources; the
    held-out project's tasks are planted as always solved, so a leak would give rows."""
    from agent_selfevolve.sources.factory_repo import split_projects

    projects = ["alpha", "beta", "gamma", "delta"]
    folder = isolated_cache / "tasks" / "factory"
    folder.mkdir(parents=True)
    for p in projects:
        tasks = task_copies(demo_repo, [f"factory__{p}-{i}" for i in range(2)], repo=f"factory/{p}",
                            difficulty="easy")
        (folder / f"{p}.jsonl").write_text("".join(json.dumps(t.model_dump(exclude_defaults=True)) + "\n"
                                                   for t in tasks))
    _, held_projects = split_projects(projects, 0)
    trainer = FakeTrainer()

    def backend_of(args: Any, config: Any, split: dict, tasks: dict, work: Path) -> Backend:
        return fake_backend(list(tasks.values()), work, trainer, always=tuple(held_out_ids(split)))

    args = ep.build_parser().parse_args(["--seed", "0", "--out", str(tmp_path / "r"), "--work", str(tmp_path / "w"),
                                         "--episodes", "1", "--humaneval-held-out", "0", "--humaneval-train", "0",
                                         "--factory-held-out", "2", "--factory-train", "3",
                                         "--samples-per-task", "1", "--profile", "small", "--max-steps", "4"])
    assert ep.run_seed(args, "cmd", pools_of=ep.real_pools, backend_of=backend_of) == 0
    seed_dir = tmp_path / "r" / "seed0"
    split = json.loads((seed_dir / "split.json").read_text())
    assert split["factory"]["held_out_projects"] == held_projects and len(held_projects) == 1
    assert {project_of(i) for i in split["factory"]["held_out"]} == set(held_projects)
    outcomes = read_records(unit_dir(seed_dir, Unit("eval", 0, "sft")) / "outcomes.jsonl")
    assert len(outcomes) == 2 and all(r["resolved"] and r["suite"] == "factory" for r in outcomes)
    trained = [row["meta"]["task_id"] for call in trainer.calls for rows in call["rows"].values() for row in rows]
    assert trained and not {project_of(t) for t in trained} & set(held_projects)
    for path in seed_dir.glob("ep*/search/rows-*.jsonl"):
        assert not any(f"factory__{p}-" in path.read_text() for p in held_projects)
    (folder / f"{held_projects[0]}.jsonl").unlink()  # a fresh machine without that project's tasks
    with pytest.raises(ProofError, match=f"tasks install bench/results/factory-tasks/{held_projects[0]}.json.xz"):
        ep.run_seed(args, "cmd", pools_of=ep.real_pools, backend_of=backend_of)


def _write_eval(seed_dir: Path, unit: Unit, outcomes: dict[str, bool]) -> None:
    folder = unit_dir(seed_dir, unit)
    for task_id, ok in outcomes.items():
        append_record(folder / "outcomes.jsonl", {"task_id": task_id, "resolved": ok, "seconds": 1.0, "tokens": 1,
                                                  "status": "submitted" if ok else "format_errors"})
    n = len(outcomes)
    (folder / "summary.json").write_text(json.dumps({"kind": "eval", "n": n, "resolved": sum(outcomes.values()),
                                                     "success": sum(outcomes.values()) / n, "seconds": n}))


def test_the_report_pools_the_pairs_of_both_seeds(tmp_path: Path) -> None:
    """Hand-made results: seed 0 gains 3 and loses 0, seed 1 gains 2 and loses 1 (same task ids in both seeds,
    which must stay distinct pairs): pooled 5 gained, 1 lost, one-sided p = P(X >= 5), X ~ Bin(6, 1/2) = 7/64."""
    ids = [f"humaneval__{i}" for i in range(4)] + ["factory__alpha-1", "factory__alpha-2"]
    base = {0: dict.fromkeys(ids, False), 1: {i: n == 0 for n, i in enumerate(ids)}}
    after = {0: {i: n < 3 for n, i in enumerate(ids)}, 1: {i: n in (1, 4) for n, i in enumerate(ids)}}
    for seed in (0, 1):
        _write_eval(tmp_path / f"seed{seed}", Unit("eval"), base[seed])
        _write_eval(tmp_path / f"seed{seed}", Unit("eval", 0, "sft"), after[seed])
    for k, finished in ((0, True), (1, False)):  # an unfinished search's rows are not counted yet
        search = unit_dir(tmp_path / "seed0", Unit("search", k))
        for task_id in ("humaneval__7", "humaneval__8", "factory__alpha-3"):
            append_record(search / "rows-sft.jsonl", {"messages": [], "meta": {"task_id": task_id}})
        append_record(search / "rows-dpo.jsonl", {"meta": {"task_id": "factory__alpha-3"}})
        if finished:
            (search / "summary.json").write_text(json.dumps({"episode": k, "rows": {"sft": 3, "dpo": 1}}))
    assert ep.main(["--report", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "evolve.png").stat().st_size > 1000
    assert report["seeds"]["0"]["data_by_suite"] == {"sft": {"factory": 1, "humaneval": 2}, "dpo": {"factory": 1}}
    s0, s1 = report["seeds"]["0"]["arms"]["sft"][0], report["seeds"]["1"]["arms"]["sft"][0]
    assert (s0["vs_base"]["gained"], s0["vs_base"]["lost"], s1["vs_base"]["gained"], s1["vs_base"]["lost"]) == \
        (3, 0, 2, 1)
    pooled = report["pooled"]["sft"][0]
    assert pooled["seeds"] == [0, 1] and pooled["after"]["n"] == 12 and pooled["after"]["resolved"] == 5
    assert pooled["before"]["resolved"] == 1
    assert (pooled["mcnemar"]["gained"], pooled["mcnemar"]["lost"]) == (5, 1)
    assert abs(pooled["mcnemar"]["p_one_sided"] - 7 / 64) < 1e-12
    factory = pooled["by_suite"]["factory"]
    assert factory["after"]["n"] == 4 and factory["after"]["resolved"] == 1 and factory["mcnemar"]["gained"] == 1
    assert report["seeds"]["1"]["base_endings"] == {"format_errors": 5, "submitted": 1}  # how attempts ended
    assert report["seeds"]["1"]["base_endings_by_suite"] == {"humaneval": {"format_errors": 3, "submitted": 1},
                                                             "factory": {"format_errors": 2}}
    assert s0["endings"] == {"format_errors": 3, "submitted": 3}


def test_a_pooled_curve_stops_where_a_seed_has_not_arrived_and_each_seed_keeps_its_own(tmp_path: Path) -> None:
    """Seed 0 has episodes 0 and 1, seed 1 only episode 0, and seed 1's base is lower. evolve.png's pooled line
    must not draw seed 0's episode 1 against the two seeds' base (it would read as a gain over the pooled base
    while seed 0 lost against its own); the table marks that row as seed 0's."""
    from evolve_proof_report import curves

    ids = [f"humaneval__{i}" for i in range(4)] + ["factory__alpha-1", "factory__alpha-2"]
    seed0, seed1 = tmp_path / "seed0", tmp_path / "seed1"
    _write_eval(seed0, Unit("eval"), {i: n < 4 for n, i in enumerate(ids)})      # 4/6
    _write_eval(seed0, Unit("eval", 0, "sft"), {i: n < 3 for n, i in enumerate(ids)})
    _write_eval(seed0, Unit("eval", 1, "sft"), {i: n < 3 for n, i in enumerate(ids)})  # 3/6, below its base
    _write_eval(seed1, Unit("eval"), dict.fromkeys(ids, False))                   # 0/6
    _write_eval(seed1, Unit("eval", 0, "sft"), {i: n == 4 for n, i in enumerate(ids)})
    report = build_report(tmp_path)
    lines = {label: (xs, ys) for label, _, xs, ys in curves(report, None)}
    assert lines["sft pooled (seeds 0,1)"] == ([0, 1], [4 / 12, 4 / 12])
    assert lines["sft seed 0"] == ([0, 1, 2], [4 / 6, 3 / 6, 3 / 6])
    assert lines["sft seed 1"] == ([0, 1], [0.0, 1 / 6])
    factory = {label: (xs, ys) for label, _, xs, ys in curves(report, "factory")}
    assert factory["sft seed 1"] == ([0, 1], [0.0, 0.5]) and factory["sft seed 0"][1] == [0.0, 0.0, 0.0]
    table = format_report(report).splitlines()
    ep0, ep1 = (next(line for line in table if line.startswith("sft") and f" ep{k} " in line) for k in (0, 1))
    assert "7/12" not in ep0 and "4/12" in ep0 and " s0" not in ep0 and "3/6 50.0% s0" in ep1


def test_an_ablation_arm_run_at_the_last_episode_only_is_reported_against_sft_there(tmp_path: Path) -> None:
    """`--at-episode 1`: the arm has no episode-0 evaluation. Its one row must still be reported (not dropped at
    the missing episode 0), compared with SFT at the same episode and the base, with no 'previous' to compare."""
    ids = [f"humaneval__{i}" for i in range(6)]
    seed_dir = tmp_path / "seed0"
    _write_eval(seed_dir, Unit("eval"), dict.fromkeys(ids, False))
    _write_eval(seed_dir, Unit("eval", 0, "sft"), {i: n < 1 for n, i in enumerate(ids)})
    _write_eval(seed_dir, Unit("eval", 1, "sft"), {i: n < 2 for n, i in enumerate(ids)})
    _write_eval(seed_dir, Unit("eval", 1, "sft+dpo"), {i: n < 4 for n, i in enumerate(ids)})
    assert ep.main(["--report", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    (row,) = report["seeds"]["0"]["arms"]["sft+dpo"]
    assert row["episode"] == 1 and row["resolved"] == 4 and row["vs_previous"] is None
    assert row["vs_base"]["gained"] == 4
    (pooled,) = report["pooled"]["sft+dpo"]
    assert pooled["vs_previous"] is None and (pooled["vs_sft"]["gained"], pooled["vs_sft"]["lost"]) == (2, 0)
    assert [r["episode"] for r in report["pooled"]["sft"]] == [0, 1]
    assert report["pooled"]["sft"][1]["vs_previous"]["gained"] == 1


def test_a_dpo_recipe_arm_is_set_against_plain_dpo_on_the_same_tasks(tmp_path: Path) -> None:
    """'sft+rpo' differs from 'sft+dpo' by its DPO recipe alone: the report pairs the two (the recipe's own
    effect), beside each against SFT; an arm without a recipe of its own gets no such pair."""
    ids = [f"humaneval__{i}" for i in range(6)]
    seed_dir = tmp_path / "seed0"
    _write_eval(seed_dir, Unit("eval"), dict.fromkeys(ids, False))
    _write_eval(seed_dir, Unit("eval", 0, "sft"), {i: n < 3 for n, i in enumerate(ids)})
    _write_eval(seed_dir, Unit("eval", 0, "sft+dpo"), {i: n == 5 for n, i in enumerate(ids)})
    _write_eval(seed_dir, Unit("eval", 0, "sft+rpo"), {i: n < 4 for n, i in enumerate(ids)})
    assert ep.main(["--report", "--out", str(tmp_path)]) == 0
    pooled = json.loads((tmp_path / "summary.json").read_text())["pooled"]
    (rpo,) = pooled["sft+rpo"]
    assert rpo["vs_plain_dpo"]["arm"] == "sft+dpo"
    assert (rpo["vs_plain_dpo"]["gained"], rpo["vs_plain_dpo"]["lost"]) == (4, 1)
    assert (rpo["vs_sft"]["gained"], rpo["vs_sft"]["lost"]) == (1, 0)
    assert pooled["sft+dpo"][0]["vs_plain_dpo"] is None and pooled["sft"][0]["vs_plain_dpo"] is None
    line = next(x for x in format_report(build_report(tmp_path)).splitlines() if x.startswith("sft+rpo"))
    assert "vs sft+dpo +4 -1" in line
    assert plain_dpo_arm("sft+rpo-mixed") == "sft+dpo-mixed" and plain_dpo_arm("sft+recovery") is None


def test_the_committed_config_is_frozen(tmp_path: Path) -> None:
    seed_dir = tmp_path / "seed0"
    assert resolve_config(seed_dir, 0, {"samples_per_task": 4}).samples_per_task == 4
    assert resolve_config(seed_dir, 0, {"samples_per_task": None}).samples_per_task == 4  # not given: kept
    with pytest.raises(ProofError, match="samples_per_task=4"):
        resolve_config(seed_dir, 0, {"samples_per_task": 2})


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    append_record(path, {"task_id": "a"})
    with open(path, "a") as fh:
        fh.write('{"task_id": "b", "res')
    assert [r["task_id"] for r in read_records(path)] == ["a"]
    append_record(path, {"task_id": "c"})
    assert [r["task_id"] for r in read_records(path)] == ["a", "c"]


def test_the_dry_run_needs_no_seed_and_finishes_on_the_fake_pair(tmp_path: Path) -> None:
    """The usage line `--dry-run` alone: seed 0 on the FAKE model and trainer, every unit finished."""
    out, work = tmp_path / "results", tmp_path / "work"
    assert ep.main(["--dry-run", "--out", str(out), "--work", str(work)]) == 0
    assert json.loads((out / "seed0" / "config.json").read_text())["seed"] == 0
    assert json.loads((out / "seed0" / "ep1" / "sft" / "summary.json").read_text())["n"] == 3


def test_a_mixed_arm_trains_only_on_tasks_whose_samples_disagreed(full_run: Path, tmp_path: Path) -> None:
    """`--rows-of mixed`: the arm's training rows are those of tasks whose samples in that search both passed and
    failed; which tasks those were is part of its train hash, so an edited tasks.jsonl cannot pass for the same
    adapter. The search arm's rows and hash are untouched."""
    root = copy_results(full_run, tmp_path)
    searches = [root / "seed0" / f"ep{k}" / "search" for k in (0, 1)]
    records = [read_records(s / "tasks.jsonl") for s in searches]
    solved = next(r["task_id"] for r in records[0] if any(r["attempts"]))
    for k, search in enumerate(searches):  # plant: in episode 0 one solved task disagreed; every other agreed
        for r in records[k]:
            r["attempts"] = [True, False] if (k, r["task_id"]) == (0, solved) else [bool(any(r["attempts"]))] * 2
        (search / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[k]))
    assert ep.arm_of("sft", "mixed") == "sft-mixed" and ep.arm_of("dpo,sft", "mixed") == "sft+dpo-mixed"
    with pytest.raises(SystemExit):
        ep.arm_of("sft", "hard")

    trainer = FakeTrainer()
    proof = make_proof(root, tmp_path / "work", trainer)
    rows, digest, spec = proof.train_inputs("sft-mixed", 1)
    all_rows, sft_digest, _ = proof.train_inputs("sft", 1)
    ep0_rows = [json.loads(x) for x in (searches[0] / "rows-sft.jsonl").read_text().splitlines()]
    mine = [r for r in ep0_rows if r["meta"]["task_id"] == solved]
    assert mine and len(all_rows["sft"]) > len(mine)  # there was more to leave out
    assert rows["sft"] == mine and spec["mixed_tasks"] == [[solved], []]
    assert sft_digest == json.loads((root / "seed0" / "ep1" / "sft" / "train.json").read_text())["train_hash"]
    proof.run_unit(Unit("train", 1, "sft-mixed"))
    assert trainer.calls[-1]["rows"]["sft"] == mine
    records[1][0]["attempts"] = [True, False]
    (searches[1] / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[1]))
    assert proof.train_inputs("sft-mixed", 1)[1] != digest


def test_an_rpo_arm_trains_on_the_dpo_arms_rows_with_its_own_dpo_stage_and_hash(full_run: Path,
                                                                                   tmp_path: Path) -> None:
    """`--dpo-recipe rpo`: the same rows as sft+dpo, but the trainer gets the DPO-stage overrides (an NLL term, one
    epoch) and they join the train hash, so the arm gets its own adapter; plain sft+dpo's hash has no such key (the
    committed arms keep theirs)."""
    root = copy_results(full_run, tmp_path)
    assert ep.arm_of("sft,dpo", dpo_recipe="rpo") == "sft+rpo"
    assert ep.arm_of("dpo,sft,recovery", "mixed", "rpo") == "sft+recovery+rpo-mixed"
    for kinds, recipe in (("sft", "rpo"), ("sft,dpo", "ipo")):
        with pytest.raises(SystemExit):
            ep.arm_of(kinds, dpo_recipe=recipe)
    assert arm_kinds("sft+recovery+rpo-mixed") == ("sft", "recovery", "dpo")
    with pytest.raises(ProofError):
        arm_kinds("sft+rationalized+rpo")  # a combination no arm has
    trainer = FakeTrainer()
    proof = make_proof(root, tmp_path / "work", trainer)
    rows, digest, spec = proof.train_inputs("sft+rpo", 1)
    dpo_rows, dpo_digest, dpo_spec = proof.train_inputs("sft+dpo", 1)
    assert rows == dpo_rows and rows["dpo"] and digest != dpo_digest
    assert spec["dpo_overrides"] == {"dpo_sft_weight": 1.0, "epochs": 1} and "dpo_overrides" not in dpo_spec
    proof.run_unit(Unit("train", 1, "sft+rpo"))
    assert trainer.calls[-1]["dpo_overrides"] == {"dpo_sft_weight": 1.0, "epochs": 1}
    proof.run_unit(Unit("train", 1, "sft+dpo"))
    assert trainer.calls[-1]["dpo_overrides"] == {} and trainer.calls[-1]["rows"] == trainer.calls[-2]["rows"]
    trained = {arm: json.loads((root / "seed0" / "ep1" / arm / "train.json").read_text()) for arm in
               ("sft+rpo", "sft+dpo")}
    assert trained["sft+rpo"]["train_hash"] == digest and trained["sft+dpo"]["train_hash"] == dpo_digest
    assert trained["sft+rpo"]["weights_hash"] != trained["sft+dpo"]["weights_hash"]


def test_another_draw_of_the_base_uses_other_revision_seeds_and_is_paired_with_the_base(full_run: Path,
                                                                                        tmp_path: Path) -> None:
    """`--base-draws 2`: the base is evaluated again into base-draw1/, every attempt asked with seed 1 (the agent
    offsets its revision seeds by it; the first turn stays greedy), paired with the base in the report; nothing
    committed before changes, and episodes stay paired with the first draw."""
    root = copy_results(full_run, tmp_path)
    before = snapshot(root)
    assert [u.name for u in plan(ProofConfig(seed=0, episodes=1), "sft", base_draws=2)][:3] == [
        "base-eval", "base-eval-draw1", "search-ep0"]
    with pytest.raises(ProofError):
        plan(ProofConfig(seed=0, episodes=1), "sft", base_draws=0)
    proof = make_proof(root, tmp_path / "work", FakeTrainer())
    models: list[ScriptedFakeModel] = []
    policy = proof.backend.policy
    proof.backend = Backend(policy=lambda v: models.append(policy(v)) or models[-1], train=proof.backend.train,
                            base_hf_dir=proof.backend.base_hf_dir, registry=proof.backend.registry, label="FAKE")
    for unit in plan(proof.config, "sft", base_draws=2):
        proof.run_unit(unit)
    assert len(models) == 1 and models[0].params and all(p.get("seed") == 1 for p in models[0].params)
    split = json.loads((root / "seed0" / "split.json").read_text())
    drawn = read_records(root / "seed0" / "base-draw1" / "outcomes.jsonl")
    assert [r["task_id"] for r in drawn] == held_out_ids(split)
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("seed0/base-draw1/")
            and k != "seed0/sessions.jsonl"} == {k: v for k, v in before.items() if k != "seed0/sessions.jsonl"}
    assert ep.main(["--report", "--out", str(root)]) == 0
    (row,) = json.loads((root / "summary.json").read_text())["seeds"]["0"]["base_draws"]
    assert row["draw"] == 1 and row["n"] == 3 and row["vs_base"]["gained"] == row["vs_base"]["lost"] == 0


def test_the_bench_runs_on_the_agent_seed_0_is_pinned_to(tmp_path: Path) -> None:
    """The proof's documented path on a fresh machine: `bench/agent_tree.py --seed 0 DIR` (HEAD's bench/ over the
    agent code.json pins), then the proof from DIR. The bench must not import what the pinned agent lacks (it once
    imported a helper added after the pin): the dry run goes through every unit on that tree."""
    import agent_tree

    root = Path(__file__).resolve().parents[1]
    recipe = json.loads((root / "bench" / "results" / "evolve-proof" / "seed0" / "code.json").read_text())["tree"]
    commits = {recipe["base"], *recipe["files"].values()}
    if any(subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=root).returncode for c in commits):
        pytest.skip("this clone lacks the commits seed 0's agent is built from (a shallow clone)")
    tree = tmp_path / "tree"
    agent_tree.main(["--seed", "0", str(tree)])
    proc = subprocess.run([sys.executable, "bench/evolve_proof.py", "--dry-run", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "seed0" / "ep1" / "sft" / "summary.json").read_text())["n"] == 3
