"""Training pipeline on a tiny model built in code: dataset rows, masks, LoRA SFT/DPO, the adapter registry.

The tiny model is a random-weight Qwen2 (hidden 64, 2 layers) with a byte-level BPE tokenizer trained here and a
ChatML template, so every step runs the real transformers/peft code paths in well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.train import (
    AdapterRegistry,
    BaseModelMismatchError,
    EmptyDatasetError,
    EmptyMaskError,
    HeldOutLeakError,
    RegistryError,
    TrainConfig,
    TrainingError,
    TrainingPaused,
    TrainResult,
    assert_no_held_out,
    build_dataset,
    check_template,
    read_jsonl,
    start_training,
    tokenize_chat,
    train_lora,
    train_sft_then_dpo,
    write_jsonl,
)
from agent_selfevolve.train.masking import IGNORE_INDEX, MaskStats
from agent_selfevolve.trajectory import Trajectory

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

CHATML = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
          "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>"
          "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "say", "fix", "bug", "calc", "add",
         "return", "ls", "cat", "edit", "done", "error", "file"]
FAST = {"progress": False, "dtype": "float32", "threads": 1, "rank": 8, "alpha": 16, "dropout": 0.0}


def _tiny_model(path: Path, seed: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 20 + ["system user assistant tool"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, initializer_range=0.2)  # 0.02 caps logits: loss can't fall
    fast.save_pretrained(path)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"id": f"id-{name}-{len(args)}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def _traj(aid: str, task: str, turns: list[tuple[str, str, str, bool]], resolved: bool,
          run: str = "r1") -> Trajectory:
    """turns: (thought, command, observation, observation_error) -> assistant tool call + tool reply."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You fix bugs."},
                                  {"role": "user", "content": f"Fix {task}."}]
    steps = []
    for i, (thought, cmd, obs, err) in enumerate(turns):
        call = _call("bash", command=cmd)
        call["id"] = f"{aid}-{i}"
        msgs += [{"role": "assistant", "content": thought, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": obs}]
        steps.append({"index": i, "thought": thought, "action": {"name": "bash", "arguments": {"command": cmd}},
                      "observation": obs, "observation_error": err})
    return Trajectory(attempt_id=aid, task_id=task, run_id=run, messages=msgs, steps=steps,
                      status="submitted", evaluation={"resolved": resolved, "reward": float(resolved),
                                                      "source": "tests"})


LOOK = ("look", "cat calc.py", "return a - b", False)
GOOD = [LOOK, ("fix it", "edit add", "ok", False), ("done", "submit", "submitted", False)]
BAD = [LOOK, ("try", "edit mul", "error: no mul", True), ("done", "submit", "submitted", False)]


def _trajs() -> list[Trajectory]:
    return [_traj("s1", "t1", GOOD, True), _traj("s1dup", "t1", GOOD, True), _traj("f1", "t1", BAD, False),
            _traj("f2", "t3", [("other", "ls", "file", False)], False), _traj("s3", "t3", GOOD, True),
            _traj("h1", "held", GOOD, True), _traj("h2", "held", BAD, False)]


# -- dataset ------------------------------------------------------------------------------------------------------
def test_dataset_builders_dedup_and_held_out(tmp_path: Path) -> None:
    out, report = build_dataset(_trajs(), held_out={"held"}, kinds=("sft", "dpo", "recovery"))
    sft, dpo, rec = out["sft"], out["dpo"], out["recovery"]
    assert len(sft) == 2 and report.duplicates >= 1 and report.held_out_skipped == 2  # s1dup deduplicated
    assert all(r["meta"]["task_id"] != "held" for rows in out.values() for r in rows)
    pair = next(r for r in dpo if r["meta"]["task_id"] == "t1")
    assert len(pair["prompt"]) == 4  # system, user, the shared first action and its observation
    assert "edit add" in pair["chosen"][0]["tool_calls"][0]["function"]["arguments"]
    assert "edit mul" in pair["rejected"][0]["tool_calls"][0]["function"]["arguments"]
    other = next(r for r in dpo if r["meta"]["task_id"] == "t3")
    assert [m["role"] for m in other["prompt"]] == ["system", "user"]  # no shared action: prompt is system+user
    row = next(r for r in rec if r["meta"]["task_id"] == "t1")
    roles = [(m["role"], m.get("weight", 1)) for m in row["messages"]]
    assert roles[4] == ("assistant", 0) and "edit mul" in json.dumps(row["messages"][4])  # the wrong step
    assert row["messages"][5]["content"] == "error: no mul"
    assert row["messages"][6]["content"].startswith("Looking back") and "edit add" in json.dumps(row["messages"][6])
    assert row["meta"]["wrong_step"] == 4
    broken = _traj("e1", "t4", BAD, False)
    broken.status = "env_error"  # the sandbox broke: not evidence against the policy
    assert build_dataset([_traj("s4", "t4", GOOD, True), broken], kinds=("dpo", "recovery"))[0] == \
        {"dpo": [], "recovery": []}
    with pytest.raises(HeldOutLeakError):
        assert_no_held_out([{"messages": [], "meta": {"task_id": "held"}}], {"held"})
    digest = write_jsonl(tmp_path / "d.jsonl", sft)
    assert read_jsonl(tmp_path / "d.jsonl") == json.loads(json.dumps(sft)) and len(digest) == 64


def test_dataset_from_store(tmp_path: Path) -> None:
    store = TrajectoryStore(tmp_path / "s.sqlite")
    for t in _trajs():
        store.record(t)
    store.record(_traj("other-run", "t1", GOOD[:1], True, run="r2"))
    out, _ = build_dataset(store, run_id="r1", held_out=["held"], kinds=("sft",))
    assert {r["meta"]["attempt_ids"][0] for r in out["sft"]} == {"s1", "s3"}


def test_unfinished_and_broken_siblings_are_never_rejected_or_failed_paths(caplog: pytest.LogCaptureFixture) -> None:
    """A tree search stops attempts at their step chunk ('unfinished') and goes on in their children, which may
    succeed: such an attempt is not a failure, even if something graded it. Nor is one the sandbox broke."""
    from agent_selfevolve.attempt import UNFINISHED
    from agent_selfevolve.train.dataset import UNFINISHED as NOT_ENDED

    assert UNFINISHED in NOT_ENDED  # the status the tree search gives an attempt stopped at its chunk
    win = _traj("win", "t1", GOOD, True, run="mcts")
    cut = _traj("cut", "t1", BAD[:2], False, run="mcts")
    cut.status = UNFINISHED  # graded anyway (as an older store would have it): the status alone must decide
    crashed = _traj("crashed", "t1", BAD, False, run="mcts")
    crashed.status = "error"
    lucky_cut = _traj("lucky", "t2", GOOD, True, run="mcts")
    lucky_cut.status = UNFINISHED
    with caplog.at_level(logging.WARNING, logger="agent_selfevolve.train.dataset"):
        out, report = build_dataset([win, cut, crashed, lucky_cut], kinds=("sft", "dpo", "recovery"))
    assert [r["meta"]["attempt_ids"] for r in out["sft"]] == [["win"]]  # no row from an unfinished attempt
    assert out["dpo"] == [] and out["recovery"] == [] and report.unfinished_skipped == 2
    assert "no task has both" in report.empty["dpo"] and "2 unfinished" in report.empty["dpo"]
    assert "no recovery rows" in caplog.text
    failed = _traj("failed", "t1", BAD, False, run="mcts")  # a finished sibling does pair
    out, report = build_dataset([win, cut, crashed, failed], kinds=("dpo", "recovery"))
    ids = {a for rows in out.values() for r in rows for a in r["meta"]["attempt_ids"]}
    assert len(out["dpo"]) == len(out["recovery"]) == 1 and ids == {"win", "failed"} and not report.empty


def _guided(aid: str, turns: list[tuple[str, str, str, bool]], resolved: bool, strategy: str,
            guidance: str) -> Trajectory:
    """A sibling whose first prompt carries search strategy/guidance, appended as the agent appends it."""
    from agent_selfevolve.agent import prompt_extras

    traj = _traj(aid, "t1", turns, resolved)
    traj.messages[1]["content"] += "".join(prompt_extras(strategy, guidance))
    traj.strategy, traj.guidance = strategy, guidance
    return traj


def test_empty_kinds_warn_with_the_reason_and_canonical_prompts_let_guided_siblings_pair(
        caplog: pytest.LogCaptureFixture) -> None:
    """SE-Agent gives every sibling its own strategy/guidance, so as served no two share a prompt: DPO and
    recovery come out empty, which must be said (log and report), not silent."""
    siblings = [_guided("a", GOOD, True, "STRATEGY-A", ""), _guided("b", BAD, False, "STRATEGY-B", "GUIDANCE-B")]
    with caplog.at_level(logging.WARNING, logger="agent_selfevolve.train.dataset"):
        out, report = build_dataset(siblings, kinds=("dpo", "recovery"), prompts="as_run")
    assert out == {"dpo": [], "recovery": []} and report.prompts == "as_run"
    for kind in ("dpo", "recovery"):
        assert "first messages" in report.empty[kind] and "prompts='canonical'" in report.empty[kind]
        assert f"no {kind} rows" in caplog.text and any(kind in n for n in report.notes)
    out, report = build_dataset(siblings, kinds=("sft", "dpo", "recovery"))
    assert report.prompts == "canonical" and not report.empty
    assert len(out["dpo"]) == 1 and len(out["recovery"]) == 1 and len(out["sft"]) == 1
    text = json.dumps(out)
    assert "STRATEGY" not in text and "GUIDANCE" not in text and "Approach to take" not in text
    assert out["dpo"][0]["prompt"][1]["content"] == "Fix t1."
    _, report = build_dataset([_traj("f", "t1", BAD, False)], kinds=("sft", "dpo"))
    assert "none of 1 attempts resolved" in report.empty["sft"] and "no task has both" in report.empty["dpo"]
    with pytest.raises(ValueError, match="prompts"):
        build_dataset(siblings, prompts="guided")


def test_canonical_rows_rebuild_the_prompt_an_unguided_attempt_sees(demo_task: Any, tmp_path: Path) -> None:
    """Through the real agent: a guided attempt's SFT row starts with exactly the first messages of an unguided
    attempt at the same task (up to the sandbox path), and carries no trace of the guidance."""
    from conftest import solving_script

    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.models.fake import ScriptedFakeModel

    def attempt(aid: str, **extra: str) -> Trajectory:
        spec = AttemptSpec(demo_task.instance_id, attempt_id=aid, run_id="r", **extra)
        return run_attempt(demo_task, ScriptedFakeModel(solving_script()), spec)

    guided = attempt("att-g1", strategy="STRATEGY-MARKER plan", guidance="GUIDANCE-MARKER: value 40/100")
    plain = attempt("att-u1")
    assert guided.resolved and "GUIDANCE-MARKER" in guided.messages[1]["content"]
    rows, report = build_dataset([guided], kinds=("sft",))
    (row,) = rows["sft"]
    assert report.prompts == "canonical" and "MARKER" not in json.dumps(row)
    assert row["messages"][:2] == json.loads(json.dumps(plain.messages[:2]).replace("att-u1", "att-g1"))
    as_run = build_dataset([guided], kinds=("sft",), prompts="as_run")[0]["sft"][0]
    assert "STRATEGY-MARKER" in as_run["messages"][1]["content"]


# -- masking ------------------------------------------------------------------------------------------------------
def _assistant_text(row: Any, tok: Any) -> str:
    return tok.decode([i for i, lab in zip(row.input_ids, row.labels, strict=True) if lab != IGNORE_INDEX])


def test_mask_covers_assistant_turns_only(tokenizer: Any) -> None:
    msgs = _traj("a", "t", GOOD, True).messages
    msgs[4]["weight"] = 0
    row = tokenize_chat(msgs, tokenizer)
    text = _assistant_text(row, tokenizer)
    assert text.startswith("look<tool_call>") and text.count("<|im_end|>") == 2
    assert "edit add" not in text and "Fix t" not in text and "return a - b" not in text
    check_template(tokenizer)


def test_long_rows_truncate_from_left_or_drop(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    msgs = _traj("a", "t", [LOOK] * 12 + [("done", "submit", "ok", False)], True).messages
    full = tokenize_chat(msgs, tokenizer)
    stats = MaskStats()
    cut = tokenize_chat(msgs, tokenizer, max_length=len(full.input_ids) // 2, stats=stats)
    head_text = tokenizer.apply_chat_template(msgs[:2], tokenize=False)
    n_head = len(tokenizer(head_text, add_special_tokens=False)["input_ids"])
    assert cut is not None and cut.truncated and len(cut.input_ids) <= len(full.input_ids) // 2
    assert cut.input_ids[:n_head] == full.input_ids[:n_head]  # system + first user kept
    assert cut.n_trainable > 0 and cut.input_ids[-5:] == full.input_ids[-5:]
    with caplog.at_level(logging.WARNING):
        from agent_selfevolve.train.masking import tokenize_rows

        rows, stats = tokenize_rows([{"messages": msgs}], tokenizer, max_length=n_head + 2)
    assert rows == [] and stats.dropped_too_long == 1 and "dropped 1 of 1" in caplog.text


def test_template_with_empty_mask_is_rejected(tmp_path: Path, tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    bad = AutoTokenizer.from_pretrained(tmp_path)
    bad.chat_template = ("{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n"
                         "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}")
    with pytest.raises(EmptyMaskError, match="no tokens"):
        check_template(bad)
    # end-of-turn emitted at the start of the next message: outside the assistant's own span
    bad.chat_template = ("{% for m in messages %}{% if not loop.first %}<|im_end|>\n{% endif %}<|im_start|>"
                         "{{ m.role }}\n{{ m.content }}{% endfor %}")
    with pytest.raises(EmptyMaskError, match="end-of-turn"):
        check_template(bad)


# -- training -----------------------------------------------------------------------------------------------------
MEMO = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"say {w}"},
                      {"role": "assistant", "content": f"the {w} fox jumps over"}]} for w in WORDS[:4]]


def _logits(model_dir: Path, adapter: Path | None, text: str = "<|im_start|>user\nsay fox") -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = AutoTokenizer.from_pretrained(model_dir)(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_sft_loss_falls_and_adapter_roundtrips(tiny: Path, tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    out = reg.staging_path("policy")
    res = train_lora(tiny, MEMO, out, TrainConfig(epochs=10, grad_accum=1, lr=1e-2, **FAST), spawn_process=False)
    assert res.steps == 40 and len(res.losses) == 40 and res.trainable_tokens > 0 and res.time_s > 0
    assert sum(res.losses[-4:]) < 0.25 * sum(res.losses[:4])
    base, tuned = _logits(tiny, None), _logits(tiny, out)
    assert not torch.allclose(base, tuned, atol=1e-4)
    v1 = reg.register("policy", out)
    assert v1.ref == "policy@1" and v1.metrics["losses"] == res.losses and v1.data_hashes == [res.data_hash]
    assert res.peak_memory_mb["rss"] > 0 and v1.metrics["peak_memory_mb"] == res.peak_memory_mb
    assert not (v1.path / "adapter_model.safetensors").stat().st_mode & stat.S_IWUSR
    assert torch.allclose(_logits(tiny, reg.export_peft("policy@1", tmp_path / "peft")), tuned)
    merged = reg.export_merged("policy@1", tiny, tmp_path / "merged", in_process=True)
    assert torch.allclose(_logits(merged, None), tuned, atol=1e-4)

    # continue from policy@1 on new data -> policy@2 with lineage
    out2 = reg.staging_path("policy")
    train_lora(tiny, MEMO[:2], out2, TrainConfig(epochs=1, grad_accum=1, **FAST), init_adapter=v1.path,
               spawn_process=False)
    v2 = reg.register("policy", out2, parent="policy@1")
    assert reg.latest("policy") == v2 and reg.get("policy@2") == v2
    assert [v.ref for v in reg.lineage("policy@2")] == ["policy@2", "policy@1"]
    assert reg.check() == []


def test_dpo_prefers_chosen(tiny: Path, tmp_path: Path) -> None:
    pairs = [{"prompt": [{"role": "user", "content": f"say {w}"}],
              "chosen": [{"role": "assistant", "content": f"the {w} fox"}],
              "rejected": [{"role": "assistant", "content": "error bug"}]} for w in WORDS[:4]]
    res = train_lora(tiny, pairs, tmp_path / "dpo", TrainConfig(objective="dpo", epochs=6, grad_accum=2, lr=1e-2,
                                                                 dpo_beta=0.5, **FAST), spawn_process=False)
    assert res.losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert res.losses[-1] < 0.5 and res.extra["reward_accuracy"][-1] == 1.0
    again = train_lora(tiny, pairs, tmp_path / "dpo2", TrainConfig(objective="dpo", epochs=1, dpo_beta=0.5, **FAST),
                       init_adapter=tmp_path / "dpo", spawn_process=False)
    assert again.losses[0] == pytest.approx(0.6931, abs=1e-3)  # reference = the adapter it started from


def test_empty_dataset_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError, match="empty"):
        train_lora(tiny, [], tmp_path / "a", TrainConfig(**FAST))
    context_only = [{"messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "x", "weight": 0}]}]
    with pytest.raises(EmptyDatasetError, match="dropped"):
        train_lora(tiny, context_only, tmp_path / "b", TrainConfig(**FAST), spawn_process=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".*tmp*"))


# -- registry -----------------------------------------------------------------------------------------------------
def test_registry_refuses_a_different_base(tiny: Path, tmp_path: Path) -> None:
    other = _tiny_model(tmp_path / "other", seed=1)
    reg = AdapterRegistry(tmp_path / "reg")
    a = train_lora(tiny, MEMO[:1], reg.staging_path(), TrainConfig(**FAST), spawn_process=False)
    b = train_lora(other, MEMO[:1], reg.staging_path(), TrainConfig(**FAST), spawn_process=False)
    reg.register("policy", a.adapter_dir)
    with pytest.raises(BaseModelMismatchError, match="new name"):
        reg.register("policy", b.adapter_dir)
    with pytest.raises(BaseModelMismatchError, match="parent"):
        reg.register("other", b.adapter_dir, parent="policy@1")
    with pytest.raises(BaseModelMismatchError):
        reg.export_merged("policy@1", other, tmp_path / "m")
    assert [v.ref for v in reg.versions("policy")] == ["policy@1"] and reg.names() == ["policy"]
    assert reg.check() == [] and not (tmp_path / "m").exists()


def test_the_same_adapter_gets_the_same_hash_whatever_order_peft_wrote_its_module_set_in(tiny: Path,
                                                                                        tmp_path: Path) -> None:
    """peft writes target_modules from a Python set, in an order that changes with each process's string hashing:
    a re-derived adapter with the same weights once got a new hash. The registry stores the list sorted."""
    reg = AdapterRegistry(tmp_path / "reg")
    res = train_lora(tiny, MEMO[:1], reg.staging_path(), TrainConfig(**FAST), spawn_process=False)
    config = json.loads((Path(res.adapter_dir) / "adapter_config.json").read_text())
    assert len(config["target_modules"]) > 1
    other = tmp_path / "other-process"
    shutil.copytree(res.adapter_dir, other)
    turned = {**config, "target_modules": sorted(config["target_modules"], reverse=True)}
    (other / "adapter_config.json").write_text(json.dumps(turned, indent=2, sort_keys=True))
    first, second = reg.register("policy", res.adapter_dir), reg.register("policy", other)
    assert first.adapter_hash == second.adapter_hash and reg.check() == []
    stored = json.loads((second.path / "adapter_config.json").read_text())
    assert stored["target_modules"] == sorted(config["target_modules"])


def test_failed_registration_leaves_the_index_consistent(tiny: Path, tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    res = train_lora(tiny, MEMO[:1], reg.staging_path(), TrainConfig(**FAST), spawn_process=False)
    real = reg._conn

    class FailingInsert:  # the database refuses the row after the files were renamed into place
        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("INSERT"):
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    reg._conn = FailingInsert()  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError):
        reg.register("policy", res.adapter_dir)
    reg._conn = real
    assert reg.latest("policy") is None and reg.check() == []
    (reg.root / "adapters" / "policy" / "1").mkdir(parents=True)  # as if a crash hit between rename and commit
    assert reg.check() == [f"unindexed directory {reg.root / 'adapters' / 'policy' / '1'}"]
    assert reg.register("policy", res.adapter_dir).ref == "policy@1" and reg.check() == []
    with pytest.raises(RegistryError, match="not a peft adapter"):
        reg.register("policy", tmp_path)


def test_killed_training_leaves_registry_consistent(tiny: Path, tmp_path: Path) -> None:
    reg = AdapterRegistry(tmp_path / "reg")
    out = reg.staging_path("policy")
    job = start_training(tiny, MEMO, out, TrainConfig(epochs=100_000, grad_accum=1, **FAST))
    deadline = time.monotonic() + 120
    while not job.progress() and time.monotonic() < deadline:
        assert job.job is not None and job.job.alive(), "the training process exited early"
        time.sleep(0.2)
    assert job.progress(), "training never reached its first step"
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(TrainingError, match="died"):
        job.wait(timeout=30)
    assert not out.exists() and not job.staging.exists()
    assert reg.latest("policy") is None and reg.check() == []
    (reg.root / ".staging" / "debris").mkdir()
    assert reg.clean_staging(min_age_s=0) == 1


def test_training_killed_mid_run_resumes_to_the_losses_of_an_unbroken_run(tiny: Path, tmp_path: Path) -> None:
    """An episode's LoRA outlasts a session on the CPU: a run killed -9 goes on from its last saved state and
    ends where a run never stopped ends (same losses, same weights: dropout's RNG is part of the state)."""
    cfg = TrainConfig(epochs=40, grad_accum=1, lr=1e-2, **{**FAST, "dropout": 0.1})
    whole = train_lora(tiny, MEMO, tmp_path / "whole", cfg, spawn_process=False)
    resume = tmp_path / "resume"
    job = start_training(tiny, MEMO, tmp_path / "a", cfg, resume_dir=resume, checkpoint_every_s=0)
    deadline = time.monotonic() + 120
    while len(job.progress()) < 8 and time.monotonic() < deadline:
        assert job.job is not None and job.job.alive(), "the training process exited early"
        time.sleep(0.05)
    logged = len(job.progress())
    os.kill(job.pid, signal.SIGKILL)
    with pytest.raises(TrainingError, match="died"):
        job.wait(timeout=30)
    with pytest.raises(TrainingPaused) as paused:  # a deadline already past: no step runs, nothing is lost
        train_lora(tiny, MEMO, tmp_path / "b", cfg, spawn_process=False, resume_dir=resume, stop_at=time.time())
    # a step's loss is logged just before its state is saved, so the kill may fall between them: one step lost
    assert logged - 1 <= paused.value.step < paused.value.total == whole.steps and not (tmp_path / "b").exists()
    resumed = train_lora(tiny, MEMO, tmp_path / "c", cfg, spawn_process=False, resume_dir=resume)
    assert resumed.losses == whole.losses and resumed.steps == whole.steps
    assert torch.equal(_logits(tiny, tmp_path / "c"), _logits(tiny, tmp_path / "whole"))
    again = train_lora(tiny, MEMO, tmp_path / "d", cfg, spawn_process=False, resume_dir=resume, stop_at=time.time())
    assert again.losses == whole.losses  # finished before: its adapter, even past the deadline
    other = train_lora(tiny, MEMO[:2], tmp_path / "e", cfg, spawn_process=False, resume_dir=resume)
    assert other.rows == 2 and len(other.losses) == other.steps  # other data: started over, not resumed


def test_a_two_stage_recipe_paused_in_dpo_keeps_its_sft_stage(tiny: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SFT then DPO with a resume dir: a deadline hit in the DPO stage, then a rerun, trains DPO from its state
    and takes the finished SFT adapter as it was (the SFT stage does not run again)."""
    import agent_selfevolve.train.lora as lora

    pairs = [{"prompt": [{"role": "user", "content": f"say {w}"}],
              "chosen": [{"role": "assistant", "content": f"the {w} fox"}],
              "rejected": [{"role": "assistant", "content": "error bug"}]} for w in WORDS[:4]]
    rows = {"sft": MEMO, "dpo": pairs}
    config = {"epochs": 4, "grad_accum": 1, "lr": 1e-2, **FAST}
    stages: list[str] = []

    def staging(stage: str) -> Path:
        stages.append(stage)
        return tmp_path / f"{stage}-{len(stages)}"

    whole, whole_metrics = train_sft_then_dpo(tiny, rows, staging, config, spawn_process=False)
    real_optimise = lora._optimise
    ran: list[str] = []

    def deadline_in_dpo(model: Any, batches: Any, total: int, cfg: Any, *args: Any) -> Any:
        ran.append(cfg.objective)
        if cfg.objective == "dpo" and len(ran) == 2 and args[-1] is not None:
            args[-1].stop_at = time.time()  # the session ends while DPO trains
        return real_optimise(model, batches, total, cfg, *args)

    monkeypatch.setattr(lora, "_optimise", deadline_in_dpo)
    resume = tmp_path / "resume"
    with pytest.raises(TrainingPaused):
        train_sft_then_dpo(tiny, rows, staging, config, resume_dir=resume, spawn_process=False)
    out, metrics = train_sft_then_dpo(tiny, rows, staging, config, resume_dir=resume, spawn_process=False)
    assert ran == ["sft", "dpo", "dpo"]  # the rerun went straight to DPO
    assert metrics["sft_loss_last"] == whole_metrics["sft_loss_last"]
    assert metrics["dpo_loss_last"] == whole_metrics["dpo_loss_last"]
    assert torch.equal(_logits(tiny, out), _logits(tiny, whole))


# -- the real model (slow) ----------------------------------------------------------------------------------------
REAL_CACHE = Path(os.environ.get("AGENT_SELFEVOLVE_CACHE") or Path.home() / ".cache" / "agent-selfevolve")
"""Read at import, before conftest isolates the cache per test: the slow test reuses the real model cache."""


def _real_gguf() -> Path | None:
    try:
        from agent_selfevolve.models.weights import get_spec, verified
    except ImportError:
        return None
    spec = get_spec("qwen2.5-coder-0.5b")
    path = REAL_CACHE / "models" / spec.filename
    return path if verified(path, spec.sha256, spec.size) else None


@pytest.mark.slow
def test_real_base_lora_and_gguf_export(tmp_path: Path) -> None:
    gguf = _real_gguf()
    if gguf is None:
        pytest.skip(f"the Qwen2.5-Coder-0.5B GGUF is not assembled under {REAL_CACHE}/models "
                    "(run `selfevolve model-fetch` first)")
    from transformers import AutoTokenizer

    from agent_selfevolve.train import hf_base_from_gguf

    base = hf_base_from_gguf(gguf, REAL_CACHE / "hf-base")  # converted once (~40 s), then cached
    check_template(AutoTokenizer.from_pretrained(base))
    rows = [{"messages": _traj(f"a{i}", f"t{i}", GOOD, True).messages} for i in range(2)]
    reg = AdapterRegistry(tmp_path / "reg")
    res = train_lora(base, rows, reg.staging_path(), TrainConfig(rank=8, alpha=16, epochs=1, grad_accum=1,
                                                                 max_length=512, progress=False))
    assert res.steps == 2 and all(x > 0 for x in res.losses) and res.dtype == "bfloat16"
    assert res.peak_memory_mb["rss"] > 1000  # the training process held the 0.5B's weights (~1 GB in bf16)
    v = reg.register("policy", res.adapter_dir)
    out = reg.export_gguf(v.ref, base, tmp_path / "policy.gguf", cache_dir=REAL_CACHE / "llama-cpp-convert")
    from gguf import GGUFReader

    names = [t.name for t in GGUFReader(out).tensors]
    assert names and all(".lora_" in n for n in names)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return  # the [local] extra is not installed: the export is checked, serving it is not
    from agent_selfevolve.models.llama_cpp import LlamaCppModel

    served = LlamaCppModel(str(gguf), lora_path=out, n_ctx=512, max_tokens=8, tool_mode="text")
    try:
        reply = served.chat([{"role": "user", "content": "Say hi."}])
    finally:
        served.close()
    assert "+lora:policy" in served.name and reply.message["content"].strip()


def test_cli_train_runs_sft_with_recovery_then_dpo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`selfevolve train --kinds sft,dpo,recovery` trains every kind it names (it once trained only SFT rows)."""
    from typer.testing import CliRunner

    import agent_selfevolve.cli as cli

    store = TrajectoryStore(tmp_path / "s.sqlite")
    for t in _trajs():
        store.record(t)
    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    monkeypatch.setattr(cli, "_local_base", lambda model: ("tiny", tiny))
    monkeypatch.setattr(cli, "_train_config", lambda *a: {**FAST, "epochs": 1, "grad_accum": 1, "max_length": 1024})
    result = CliRunner().invoke(cli.app, ["train", "--db", str(store.path), "--run", "r1", "--held-out", "held",
                                          "--kinds", "sft,dpo,recovery", "--registry", str(tmp_path / "reg")])
    assert result.exit_code == 0, result.output
    version = AdapterRegistry(tmp_path / "reg").get("policy@1")
    assert version.metrics["rows"] == 2 + 2 and version.metrics["recovery_rows"] == 2  # s1, s3 + a recovery each
    assert version.metrics["dpo_rows"] == 2 and version.metrics["dpo_steps"] >= 1
    assert version.parent is None and version.metrics["trained_from"] == "base"
    import agent_selfevolve.train as train_pkg

    starts: list[object] = []
    real = train_pkg.train_sft_then_dpo

    def spy(*args: object, **kwargs: object) -> object:
        starts.append(kwargs.get("init_adapter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_pkg, "train_sft_then_dpo", spy)
    again = CliRunner().invoke(cli.app, ["train", "--db", str(store.path), "--run", "r1", "--held-out", "held",
                                         "--kinds", "sft", "--registry", str(tmp_path / "reg")])
    assert again.exit_code == 0, again.output
    second = AdapterRegistry(tmp_path / "reg").get("policy@2")
    assert starts == [version.path]  # it continues from policy@1, so recording policy@1 as parent is the truth
    assert second.parent == "policy@1" and second.metrics["trained_from"] == "policy@1"


def test_dpo_overrides_reach_the_dpo_stage_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent_selfevolve.train.stages as stages

    seen: list[Any] = []

    def record(base: Any, rows: Any, out: Any, cfg: Any, init_adapter: Any = None, **_: Any) -> Any:
        seen.append((cfg, init_adapter, out))
        return TrainResult(str(out), 1, [0.5], 10, 5, 0.1, 10.0, len(rows), 0, "cpu", "float32", "", {}, {})

    monkeypatch.setattr(stages, "train_lora", record)
    out, metrics = stages.train_sft_then_dpo(tmp_path, {"sft": [{}], "dpo": [{}, {}]}, lambda s: tmp_path / s,
                                             {"epochs": 2, "lr": 1e-4}, dpo_overrides={"epochs": 1, "dpo_beta": 0.3})
    (sft_cfg, sft_init, sft_out), (dpo_cfg, dpo_init, _) = seen
    assert (sft_cfg.objective, sft_cfg.epochs, sft_cfg.dpo_beta, sft_init) == ("sft", 2, 0.1, None)
    assert (dpo_cfg.objective, dpo_cfg.epochs, dpo_cfg.dpo_beta, dpo_cfg.lr) == ("dpo", 1, 0.3, 1e-4)
    assert dpo_init == sft_out and out == tmp_path / "dpo" and metrics["dpo_rows"] == 2
    with pytest.raises(stages.EmptyDatasetError):
        stages.train_sft_then_dpo(tmp_path, {"dpo": [{}]}, lambda s: tmp_path / s, {})
    seen.clear()
    _, metrics = stages.train_sft_then_dpo(tmp_path, {"sft": [{}], "recovery": [{}], "rationalized": [{}, {}]},
                                           lambda s: tmp_path / s, {})
    assert len(seen) == 1 and metrics["rows"] == 4 and metrics["rationalized_rows"] == 2  # one SFT stage


@pytest.mark.slow
def test_llama_cpp_serves_the_lora_that_peft_holds(tmp_path: Path) -> None:
    """An evolved policy is evaluated through llama.cpp, not peft: the exported GGUF adapter must shift the real
    model's next-token logits as the peft adapter does (same direction and size, not merely "some change"), and the
    batch engine (the default) must apply it like the simple path. A random, non-zero adapter makes the shift large."""
    gguf = _real_gguf()
    if gguf is None:
        pytest.skip(f"the Qwen2.5-Coder-0.5B GGUF is not assembled under {REAL_CACHE}/models")
    pytest.importorskip("llama_cpp")
    import numpy as np
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent_selfevolve.models.llama_cpp import LlamaCppModel
    from agent_selfevolve.train import base_model_identity, hf_base_from_gguf

    base = hf_base_from_gguf(gguf, REAL_CACHE / "hf-base")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    texts = ["def add(a, b):\n    return", "The failing check says", "import os\nimport"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with torch.no_grad():
        hf_base = [model(torch.tensor([i])).logits[0, -1] for i in ids]
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj",
                                                                                          "down_proj"]))
        gen = torch.Generator().manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        hf_lora = [peft_model(torch.tensor([i])).logits[0, -1] for i in ids]
    peft_model.save_pretrained(tmp_path / "adapter")
    reg = AdapterRegistry(tmp_path / "reg")
    version = reg.register("policy", tmp_path / "adapter", base_model=base_model_identity(base))
    lora_gguf = reg.export_gguf(version.ref, base, tmp_path / "policy.gguf",
                                cache_dir=REAL_CACHE / "llama-cpp-convert")

    def cpp_logits(lora: Path | None) -> list[Any]:
        served = LlamaCppModel(str(gguf), lora_path=lora, n_ctx=512, engine="simple", tool_mode="text")
        try:
            llm = served.load()
            out = []
            for i in ids:
                llm.reset()
                llm.eval(i)
                # without logits_all, llama-cpp-python leaves `scores` unfilled: read the context's last row
                last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
                out.append(torch.tensor(last.copy(), dtype=torch.float32))
            return out
        finally:
            served.close()

    cpp_base, cpp_lora = cpp_logits(None), cpp_logits(lora_gguf)
    for k in range(len(texts)):
        hf_shift, cpp_shift = hf_lora[k] - hf_base[k], cpp_lora[k] - cpp_base[k]
        assert hf_shift.abs().max() > 1.0, "the adapter is too weak for this test to mean anything"
        cos = torch.nn.functional.cosine_similarity(hf_shift, cpp_shift, dim=0).item()
        ratio = (cpp_shift.norm() / hf_shift.norm()).item()
        assert cos > 0.95 and 0.9 < ratio < 1.1, (texts[k], cos, ratio)
        assert hf_lora[k].argmax() == cpp_lora[k].argmax(), texts[k]

    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    replies = {}
    for engine in ("simple", "batched"):
        for lora in (None, lora_gguf):
            served = LlamaCppModel(str(gguf), lora_path=lora, n_ctx=1024, max_tokens=24, engine=engine,
                                   tool_mode="text")
            try:
                replies[engine, lora is not None] = served.chat(messages).message["content"]
            finally:
                served.close()
    assert replies["batched", True] == replies["simple", True] != replies["simple", False]
    assert replies["batched", False] == replies["simple", False]
