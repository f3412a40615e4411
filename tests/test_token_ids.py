"""Training on the tokens that were generated: replies carry the sampled token ids from the engine through the
agent and the store to the masker, which trains on exactly those ids (never a re-tokenization), and prompts never
see them. Masks are checked with the real Qwen tokenizer when it is on this machine, and always with a tiny BPE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.models.base import EXTRA_KEY, Message, ModelReply
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.models.generated import llama_completion_ids
from agent_selfevolve.models.weights import default_cache_dir
from agent_selfevolve.train.masking import IGNORE_INDEX, MaskStats, tokenize_chat, tokenize_pairs, tokenize_rows

pytest.importorskip("transformers")

REAL_HF_BASE = default_cache_dir().parent / "hf-base"
"""Read at import, before conftest isolates the cache: the Qwen tokenizer converted from the embedded GGUF."""
CHATML = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
          "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>"
          "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")
BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command.",
                                         "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                                                        "required": ["command"]}}}


def _tiny_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["I will list them. the quick brown fox fix the bug done bash command ls"] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module", params=["tiny", "qwen"])
def tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "tiny":
        return _tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    found = sorted(REAL_HF_BASE.glob("*/tokenizer.json"))
    if not found:
        pytest.skip(f"no converted Qwen base under {REAL_HF_BASE} (any `selfevolve train` run creates it)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(found[0].parent)


def char_ids(tok: Any, text: str) -> list[int]:
    """`text` spelled one character per token: how a sampler may spell it, never how the tokenizer does."""
    return [i for ch in text for i in tok(ch, add_special_tokens=False)["input_ids"]]


def _runs(row: Any) -> list[list[int]]:
    """The trained stretches of a row, in order."""
    runs: list[list[int]] = []
    prev = False
    for i, lab in zip(row.input_ids, row.labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == i
            if not prev:
                runs.append([])
            runs[-1].append(i)
        prev = lab != IGNORE_INDEX
    return runs


def _context(row: Any) -> list[int]:
    return [i for i, lab in zip(row.input_ids, row.labels, strict=True) if lab == IGNORE_INDEX]


RAW = 'I will list them.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'


def _conversation(recorded: list[int] | None) -> list[Message]:
    turn: Message = {"role": "assistant", "content": "I will list them.",
                     "tool_calls": [{"id": "c1", "type": "function",
                                     "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]}
    if recorded is not None:
        turn[EXTRA_KEY] = {"token_ids": recorded}
    return [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "Fix the bug."}, turn,
            {"role": "tool", "tool_call_id": "c1", "content": "calc.py"}, {"role": "assistant", "content": "Done."}]


def test_recorded_ids_are_trained_verbatim_and_a_planted_drift_survives(tok: Any) -> None:
    planted = char_ids(tok, RAW)
    assert planted != tok(RAW, add_special_tokens=False)["input_ids"]  # the plant really differs from re-tokenizing
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    stats = MaskStats()
    row = tokenize_chat(_conversation(planted), tok, [BASH], stats=stats)
    plain = tokenize_chat(_conversation(None), tok, [BASH])
    assert row is not None and plain is not None
    first, second = _runs(row)
    assert first == planted + [eot]  # exactly the sampled ids, then the template's end of turn
    assert second == _runs(plain)[1]  # a turn without recorded ids is tokenized as before
    assert _context(row) == _context(plain)  # the prompt around them is untouched
    assert stats.exact_turns == 1 and stats.ids_rejected == 0
    pairs, pair_stats = tokenize_pairs([{"prompt": _conversation(planted)[:2], "chosen": _conversation(planted)[2:3],
                                         "rejected": [{"role": "assistant", "content": "no"}], "tools": [BASH]}], tok)
    assert _runs(pairs[0][0]) == [planted + [eot]] and pair_stats.exact_turns == 1


def test_ids_that_do_not_fit_the_tokenizer_or_the_text_are_retokenized(tok: Any, caplog: Any) -> None:
    foreign = char_ids(tok, RAW)[:-1] + [len(tok) + 5]  # from another vocabulary
    edited = char_ids(tok, RAW.replace("I will list them.", "Something else entirely."))  # text edited afterwards
    rows, stats = tokenize_rows([{"messages": _conversation(foreign)}, {"messages": _conversation(edited)}], tok)
    rows_plain, _ = tokenize_rows([{"messages": _conversation(None)}], tok)
    assert [r.input_ids for r in rows] == [rows_plain[0].input_ids] * 2
    assert [r.labels for r in rows] == [rows_plain[0].labels] * 2
    assert stats.ids_rejected == 2 and stats.exact_turns == 0 and "re-tokenized" in caplog.text


def test_left_truncation_keeps_the_recorded_ids_of_the_turns_it_keeps(tok: Any) -> None:
    planted = char_ids(tok, "fix the bug")
    messages: list[Message] = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                               {"role": "assistant", "content": "the quick brown fox " * 40},
                               {"role": "user", "content": "again"},
                               {"role": "assistant", "content": "fix the bug", EXTRA_KEY: {"token_ids": planted}}]
    full = tokenize_chat(messages, tok)
    assert full is not None
    cut = tokenize_chat(messages, tok, max_length=len(full.input_ids) - 20)
    assert cut is not None and cut.truncated
    assert _runs(cut) == [planted + [tok.convert_tokens_to_ids("<|im_end|>")]]
    assert tok.decode(cut.input_ids).count("quick") == 0  # the first turn was cut, the recorded one kept


class _IdFake(ScriptedFakeModel):
    """FAKE model that also returns token ids for its replies, spelled one character per token."""

    def __init__(self, script: list[Any], tok: Any, logprobs: bool = False):
        super().__init__(script)
        self.tok, self.logprobs = tok, logprobs
        self.sent: list[list[int]] = []
        self.sent_logprobs: list[list[float]] = []

    def chat(self, messages: list[Message], tools: Any = None, **params: Any) -> ModelReply:
        reply = super().chat(messages, tools, **params)
        text = (reply.message.get("content") or "") + "".join(
            f"<tool_call>{json.dumps(c['function'])}</tool_call>" for c in reply.message.get("tool_calls") or [])
        reply.token_ids = char_ids(self.tok, text)
        self.sent.append(reply.token_ids)
        if self.logprobs:  # a different value per turn and token, so a wrong average shows
            reply.logprobs = [-0.01 * (len(self.sent) + k % 7) for k in range(len(reply.token_ids))]
            self.sent_logprobs.append(reply.logprobs)
        return reply


def test_agent_records_sampled_ids_that_reach_training_but_never_a_prompt(demo_task: Any, tmp_path: Path) -> None:
    from conftest import solving_script

    from agent_selfevolve.attempt import run_attempt
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.train.dataset import build_dataset

    tok = _tiny_tokenizer(tmp_path / "tok")
    model = _IdFake(solving_script(), tok)
    traj = run_attempt(demo_task, model)
    assert traj.resolved, traj.evaluation
    recorded = [m[EXTRA_KEY]["token_ids"] for m in traj.messages if m["role"] == "assistant"]
    assert recorded == model.sent and len(recorded) == 4
    assert "token_ids" not in json.dumps(model.requests) and EXTRA_KEY not in json.dumps(model.requests)
    assert EXTRA_KEY not in json.dumps(traj.to_openai_finetune())
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    store.record(traj)
    rows, _ = build_dataset(store, kinds=("sft",))
    (tokenized,), stats = tokenize_rows(rows["sft"], tok, max_length=1 << 16)
    assert stats.exact_turns == 4 and stats.ids_rejected == 0
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert _runs(tokenized) == [ids + [eot] for ids in model.sent]


def test_sft_rows_say_how_sure_the_policy_was_of_them_and_carry_no_per_token_logprobs(demo_task: Any,
                                                                                      tmp_path: Path) -> None:
    """The engine's per-token log-probs travel with the trajectory to the dataset, which summarizes them per row
    (token-weighted mean over the trained replies) and in its report, then leaves them out of the rows."""
    from conftest import solving_script

    from agent_selfevolve.attempt import run_attempt
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.train.dataset import build_dataset

    tok = _tiny_tokenizer(tmp_path / "tok")
    model = _IdFake(solving_script(), tok, logprobs=True)
    store = TrajectoryStore(tmp_path / "runs.sqlite")
    store.record(run_attempt(demo_task, model))
    rows, report = build_dataset(store, kinds=("sft",))
    flat = [lp for turn in model.sent_logprobs for lp in turn]
    (meta,) = [r["meta"] for r in rows["sft"]]
    assert meta["policy_tokens"] == len(flat) and report.sft_rows_scored == 1
    assert meta["policy_logprob"] == pytest.approx(sum(flat) / len(flat), abs=1e-5)
    assert report.sft_policy_logprob == pytest.approx(sum(flat) / len(flat), abs=1e-5)
    assert '"logprobs"' not in json.dumps(rows)  # the ids stay, the floats do not
    assert all(m[EXTRA_KEY]["token_ids"] for r in rows["sft"] for m in r["messages"] if m["role"] == "assistant")
    (kept,) = store.attempts()  # building rows did not strip the stored trajectory
    assert [m[EXTRA_KEY]["logprobs"] for m in kept.messages if m["role"] == "assistant"] == model.sent_logprobs

    unscored = TrajectoryStore(tmp_path / "unscored.sqlite")  # an engine that records no log-probs
    unscored.record(run_attempt(demo_task, _IdFake(solving_script(), tok)))
    rows, report = build_dataset(unscored, kinds=("sft",))
    assert "policy_logprob" not in rows["sft"][0]["meta"] and report.sft_policy_logprob is None


class _FakeLlama:
    """FAKE llama.cpp context: a tiny vocabulary, the evaluated tokens, and a greedy canonical tokenizer."""

    VOCAB = {1: b"Hel", 2: b"lo", 3: b" wor", 4: b"ld", 5: b"Hello", 6: b"\nObs", 7: b"\n"}

    def __init__(self, prompt: list[int], evaluated: list[int]):
        self.input_ids = prompt + evaluated + [0] * 8
        self.n_tokens = len(prompt) + len(evaluated)

    def detokenize(self, ids: list[int]) -> bytes:
        return b"".join(self.VOCAB[i] for i in ids)

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        out = []
        while text:
            i = max((k for k, v in self.VOCAB.items() if text.startswith(v)), key=lambda k: len(self.VOCAB[k]))
            out.append(i)
            text = text[len(self.VOCAB[i]):]
        return out


def test_llama_ids_are_the_evaluated_tokens_not_a_retokenization() -> None:
    prompt = [7, 7, 7]
    assert llama_completion_ids(_FakeLlama(prompt, [1, 2]), 3, "Hello") == [1, 2]  # ended on EOS: all sampled
    assert _FakeLlama([], []).tokenize(b"Hello") == [5]  # what re-tokenizing would have given
    assert llama_completion_ids(_FakeLlama(prompt, [1]), 3, "Hello") == [1, 2]  # max_tokens: last one not fed back
    assert llama_completion_ids(_FakeLlama(prompt, [1, 2, 6]), 3, "Hello") == [1, 2]  # cut at a stop string
    assert llama_completion_ids(_FakeLlama(prompt, [1, 2, 3, 4]), 3, "Hello world") == [1, 2, 3, 4]
    assert llama_completion_ids(object(), 3, "Hello") is None  # never fails the reply it describes
