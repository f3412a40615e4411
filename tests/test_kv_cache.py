"""Prefix KV reuse and concurrent decoding: the cache's LRU, size cap and prefix keying (fast, no model), and the
batch engine on the real 0.5B (slow): concurrent greedy output equals the output of the same calls made one
after another, and steps reuse their conversation's KV instead of recomputing it."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from agent_selfevolve.models.kv_cache import PrefixKVCache, canonical_cuts, next_cut, usable_prefix

MB = 2**20


def _put(cache: PrefixKVCache, tokens: list[int], size: int, label: str = "") -> bool:
    return cache.put(tokens, [True] * (len(tokens) + 1), bytes(size), label)


def test_lru_evicts_the_least_recently_used_state_past_the_cap() -> None:
    cache = PrefixKVCache(cap_bytes=3 * 1000 + 200)
    for first in (1, 2, 3):
        _put(cache, [first, 10, 11], 1000)
    assert len(cache) == 3
    entry, n = cache.best([1, 10, 11, 12])  # a lookup makes [1, ...] the most recently used
    assert entry is not None and n == 3
    _put(cache, [4, 10, 11], 1000)
    assert [1, 10, 11] in cache and [4, 10, 11] in cache and [3, 10, 11] in cache
    assert [2, 10, 11] not in cache  # the least recently used one went
    assert cache.stats.evictions == 1 and cache.used_bytes <= cache.cap_bytes


def test_size_cap_holds_and_a_state_over_the_cap_is_refused() -> None:
    cache = PrefixKVCache.with_cap_mb(1)
    for i in range(10):
        _put(cache, [i, 1, 2], MB // 3)
    assert cache.used_bytes <= MB and len(cache) == 2
    assert not _put(cache, [99], 2 * MB) and [99] not in cache and cache.stats.rejected == 1
    off = PrefixKVCache.with_cap_mb(0)
    assert not _put(off, [1, 2], 10) and len(off) == 0


def test_same_tokens_replace_one_entry_and_bytes_are_counted_once() -> None:
    cache = PrefixKVCache.with_cap_mb(1)
    _put(cache, [5, 6, 7], 1000, "first")
    _put(cache, [5, 6, 7], 2000, "second")
    assert len(cache) == 1
    entry, _ = cache.best([5, 6, 7, 8])
    assert entry is not None and entry.label == "second" and cache.used_bytes == entry.nbytes


def test_best_serves_the_longest_prefix_but_only_up_to_a_cut() -> None:
    cache = PrefixKVCache.with_cap_mb(1)
    tokens = list(range(100, 110))
    cuts = np.zeros(11, dtype=bool)
    cuts[[0, 4, 10]] = True
    cache.put(tokens, cuts, bytes(10), "a")
    cache.put([100, 101, 555], [True, True, True, True], bytes(10), "b")
    # shares 7 tokens with the first entry: usable only up to its cut at 4 (the second entry serves 2)
    entry, n = cache.best(tokens[:7] + [1, 2, 3])
    assert (entry.label, n) == ("a", 4) if entry else False
    entry, n = cache.best(tokens + [1, 2])
    assert entry is not None and n == 10
    _, n = cache.best(tokens + [1, 2], limit=9)
    assert n == 4  # the limit falls between cuts
    assert cache.best([7, 8, 9]) == (None, 0)
    with pytest.raises(ValueError):
        cache.put([1, 2], [True], bytes(1))


def test_record_counts_hits_misses_and_tokens_served() -> None:
    cache = PrefixKVCache.with_cap_mb(1)
    cache.record(0)
    cache.record(120)
    cache.record(30)
    stats = cache.to_dict()
    assert (stats["lookups"], stats["hits"], stats["misses"], stats["tokens_served"]) == (3, 2, 1, 150)


def test_canonical_cuts_are_message_starts_chunk_multiples_and_the_last_token() -> None:
    start = 7
    prompt = [start, 1, 2, 3, start, 4, 5, 6, 8, 9, 10, start, 11, 12]
    cuts = canonical_cuts(prompt, chunk=6, message_start=start)
    assert np.flatnonzero(cuts).tolist() == [0, 4, 6, 11, 12, 13, 14]


def _chunks(cuts: np.ndarray, start: int, end: int) -> list[tuple[int, int]]:
    out = []
    while start < end:
        stop = next_cut(cuts, start)
        out.append((start, stop))
        start = stop
    return out


def test_a_prefill_resumed_at_any_cut_makes_the_chunks_of_a_cold_one() -> None:
    """The property greedy identity rests on: warm starts compute the same chunks as a cold prefill."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 9, 300).tolist()
    cuts = canonical_cuts(prompt, chunk=32, message_start=3)
    last = len(prompt) - 1
    cold = _chunks(cuts, 0, last)
    assert cold[-1][1] == last and all(b - a <= 32 for a, b in cold)
    for resume in np.flatnonzero(cuts[:last]).tolist():
        assert _chunks(cuts, resume, last) == [c for c in cold if c[0] >= resume]
    # and a cache entry of this prompt never offers a position that is not a cut
    for shared in range(len(prompt)):
        n = usable_prefix(np.asarray(prompt), cuts, np.asarray(prompt[:shared] + [99]), len(prompt))
        assert cuts[n] and n <= shared


REAL_MODELS = Path(os.environ.get("AGENT_SELFEVOLVE_CACHE", Path.home() / ".cache" / "agent-selfevolve")) / "models"
"""Read at import, before conftest points AGENT_SELFEVOLVE_CACHE at a per-test folder: reuse the real cache."""
SYSTEM = "You are a terse Python expert. Answer with one short code block and nothing else."
QUESTIONS = ["Reverse the string s.", "Sum the list xs."]


def _conversation(model, question: str) -> list[str]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    first = model.chat(messages)
    second = model.chat([*messages, first.message, {"role": "user", "content": "Now as a function with a docstring."}])
    return [first.message["content"], second.message["content"]]


def _concurrently(model) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in QUESTIONS]

    def run(i: int) -> None:
        out[i] = _conversation(model, QUESTIONS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.slow
def test_concurrent_greedy_output_equals_one_after_another_and_steps_reuse_their_prefix() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as LlamaCppModel sets it, before llama_cpp loads libgomp
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'agent-selfevolve[local]'")
    from agent_selfevolve.models.llama_cpp import LlamaCppModel
    from agent_selfevolve.models.weights import ensure_gguf

    ensure_gguf("qwen2.5-coder-0.5b", REAL_MODELS)
    options = {"n_ctx": 1024, "max_tokens": 24, "n_threads": 2, "cache_dir": REAL_MODELS, "engine": "batched"}
    one_by_one = LlamaCppModel("qwen2.5-coder-0.5b", **options)
    sequential = [_conversation(one_by_one, q) for q in QUESTIONS]
    stats = one_by_one.stats()
    one_by_one.close()
    assert all(reply.strip() for conv in sequential for reply in conv)
    # each second turn starts from its first turn's KV; the second conversation from the first's system prompt
    assert stats["prefill_tokens"] < stats["prompt_tokens"] and stats["slot_hits"] >= 2

    together = LlamaCppModel("qwen2.5-coder-0.5b", **options)
    try:
        cold = _concurrently(together)
        batched = together.stats()
        warm = _concurrently(together)  # now from cached states of the first run
        rerun = together.stats()
    finally:
        together.close()
    assert batched["decode_rows"] > batched["decode_batches"]  # the conversations really shared decode batches
    assert cold == sequential
    assert warm == sequential
    assert rerun["prefill_tokens"] - batched["prefill_tokens"] < rerun["prompt_tokens"] - batched["prompt_tokens"]


def test_simple_engine_counts_what_llama_cpp_python_recomputes() -> None:
    """Today's path reuses the longest common prefix with the last sequence and always re-evaluates one token."""
    from agent_selfevolve.models.llama_cpp import LlamaCppModel

    model = LlamaCppModel("qwen2.5-coder-0.5b", engine="simple")  # constructing does not load anything
    model._count_simple([1, 2, 3, 4], [1, 2, 3, 9, 9])  # a step after another one: 2 new tokens
    model._count_simple([7, 7], [1, 2, 3])  # another conversation ran last: all of it
    model._count_simple([1, 2, 3], [1, 2, 3])  # the same prompt again: its last token for fresh logits
    stats = model.stats()
    assert (stats["requests"], stats["prompt_tokens"], stats["prefill_tokens"]) == (3, 11, 2 + 3 + 1)


def test_batch_summary_adds_up_prompt_tokens_sent_and_computed() -> None:
    from agent_selfevolve.batch import summarize
    from agent_selfevolve.tasks import Task

    tasks = [Task(instance_id=f"t{i}", repo_path="/nonexistent", problem_statement="x") for i in range(3)]
    results = {"t0": {"instance_id": "t0", "ok": True, "engine": {"prompt_tokens": 1000, "prefill_tokens": 300}},
               "t1": {"instance_id": "t1", "ok": True, "engine": {"prompt_tokens": 500, "prefill_tokens": 200}},
               "t2": {"instance_id": "t2", "ok": True}}  # a backend without counters
    assert summarize(tasks, results)["prefill"] == {"prompt_tokens_sent": 1500, "prefill_tokens_computed": 500,
                                                    "saved": 0.667}
    assert "prefill" not in summarize(tasks, {"t2": results["t2"]})


def _logits_after(engine, items: list[tuple[list[int], int]]) -> list[np.ndarray]:
    """Decode the last token of each (prompt, seq) in one batch; its logits, then roll the batch back."""
    lib = engine._lib
    n_vocab = lib.llama_vocab_n_tokens(engine._vocab)
    engine._decode([(prompt[-1], len(prompt) - 1, seq) for prompt, seq in items], logits=True)
    rows = [np.ctypeslib.as_array(lib.llama_get_logits_ith(engine._ctx, i), shape=(n_vocab,)).copy()
            for i in range(len(items))]
    for prompt, seq in items:
        lib.llama_memory_seq_rm(engine._mem, seq, len(prompt) - 1, -1)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize(("kv_type", "invariant"), [("q8_0", True), ("f16", False)])
def test_a_token_decoded_beside_other_sequences_gets_the_bits_it_gets_alone(kv_type: str, invariant: bool) -> None:
    """The property concurrent greedy identity rests on, at the logits: four sequences of unequal lengths past
    512 cells (where llama.cpp splits a lone query's attention on an F16 cache), decoded alone and in batches
    in several orders. The engine's Q8_0 cache must give the same bits; F16 is checked to differ, which is why
    the engine does not use it (if a llama.cpp upgrade makes F16 invariant too, this says so)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'agent-selfevolve[local]'")
    from agent_selfevolve.models.llama_cpp import LlamaCppModel
    from agent_selfevolve.models.llama_engine import BatchEngine
    from agent_selfevolve.models.weights import ensure_gguf

    ensure_gguf("qwen2.5-coder-0.5b", REAL_MODELS)
    model = LlamaCppModel("qwen2.5-coder-0.5b", n_ctx=1024, n_threads=2, cache_dir=REAL_MODELS, engine="batched")
    llm = model.load()  # the batched load: llama.cpp's repacked weight buffers off, as the engine needs
    engine = BatchEngine(llm, slots=4, n_ctx=1024, n_threads=2, kv_type=kv_type)
    try:
        text = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # step {i}" for i in range(120))
        tokens = llm.tokenize(text.encode(), add_bos=False)
        prompts = [tokens[k:k + n] for k, n in enumerate((600, 630, 680, 720))]
        for seq, prompt in enumerate(prompts):
            for start in range(0, len(prompt) - 1, engine.chunk):
                end = min(start + engine.chunk, len(prompt) - 1)
                engine._decode([(prompt[p], p, seq) for p in range(start, end)], logits=False)
        alone = [_logits_after(engine, [(prompts[s], s)])[0] for s in range(4)]
        same = []
        for order in [(0, 1, 2, 3), (3, 2, 1, 0), (1, 2), (2, 0, 3, 1)]:
            rows = _logits_after(engine, [(prompts[s], s) for s in order])
            same += [bool(np.array_equal(alone[s], row)) for s, row in zip(order, rows, strict=True)]
    finally:
        engine.close()
        model.close()
    assert all(same) if invariant else not all(same), same


def test_a_decode_round_feeds_sequences_in_rising_order_so_llama_cpp_batches_them() -> None:
    """llama.cpp keeps tokens of several sequences in one ubatch only while their ids rise by one; the round must
    sort what admission order scrambled, and sample each request from its own row."""
    from types import SimpleNamespace

    from agent_selfevolve.models.llama_engine import BatchEngine, EngineStats, Sampling, _Request, _Slot

    engine = BatchEngine.__new__(BatchEngine)  # no llama.cpp: the decode call and the sampler are recorded
    fed: list[list[tuple[int, int, int]]] = []
    engine._decode = lambda items, logits: fed.append(items)  # type: ignore[method-assign]
    engine.stats, engine.n_ctx, engine._ctx_ref = EngineStats(), 4096, None
    vocab = 4096
    rows = [np.zeros(vocab, dtype=np.float32) for _ in range(4)]
    for row, logits in enumerate(rows):
        logits[1001 * row] = row  # the token this row's request samples; the rest uniform
    engine._lib = SimpleNamespace(llama_vocab_is_eog=lambda vocab, token: False,
                                  llama_get_logits_ith=lambda ctx, row: rows[row].ctypes.data_as(
                                      ctypes.POINTER(ctypes.c_float)))
    engine._vocab, engine._n_vocab, engine._ctx = None, vocab, None
    engine._llm = SimpleNamespace(detokenize=lambda ids: b"x")
    engine._active = []
    for seq in (2, 0, 3, 1):  # the order requests came back from their tool calls
        req = _Request([100 + seq], Sampling(max_tokens=8), slot=_Slot(seq), pos=0)
        req.sampler = SimpleNamespace(sample=lambda ctx, row, seq=seq: 1000 * seq + row)
        engine._active.append(req)
    engine._decode_round(list(engine._active))
    assert [seq for _, _, seq in fed[0]] == [0, 1, 2, 3] and engine.stats.decode_ubatches == 1
    assert [tok for tok, _, _ in fed[0]] == [100, 101, 102, 103]
    assert {r.slot.seq: r.generated for r in engine._active} == {0: [0], 1: [1001], 2: [2002], 3: [3003]}
    for req in engine._active:  # each log-prob read from its own row: row r - log(e^r + vocab - 1)
        r = req.slot.seq
        assert req.logprobs == [pytest.approx(r - np.log(np.exp(r) + vocab - 1))]


@pytest.mark.slow
def test_the_batch_engine_records_each_sampled_tokens_raw_log_probability() -> None:
    """Sampled hot (temperature 1.5), the recorded log-prob of each token is the model's own (log softmax of the raw
    logits), not the sampler's: checked against llama-cpp-python re-scoring the same tokens with logits_all."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    llama_cpp = pytest.importorskip("llama_cpp",
                                    reason="llama-cpp-python is not installed: pip install 'agent-selfevolve[local]'")
    from llama_cpp import Llama

    from agent_selfevolve.models.base import recorded_logprobs
    from agent_selfevolve.models.llama_cpp import LlamaCppModel
    from agent_selfevolve.models.weights import ensure_gguf

    gguf = ensure_gguf("qwen2.5-coder-0.5b", REAL_MODELS)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}]
    model = LlamaCppModel("qwen2.5-coder-0.5b", n_ctx=1024, max_tokens=24, n_threads=2, cache_dir=REAL_MODELS,
                          engine="batched", tool_mode="text")
    try:
        reply = model.chat(messages, temperature=1.5, seed=3)
        prompt, _ = model._chat_engine.prompt_tokens(messages, None)
    finally:
        model.close()
    ids, recorded = reply.token_ids, recorded_logprobs(reply.recorded_message())
    assert ids and recorded is not None and len(recorded) == len(ids)
    # the engine's Q8_0 KV cache with flash attention: an F16 cache moves this first token's log-prob by ~0.5
    ref = Llama(str(gguf), n_ctx=1024, logits_all=True, n_threads=2, verbose=False, flash_attn=True,
                type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)
    try:
        ref.eval(prompt + ids)
        logits = np.asarray(ref.scores[len(prompt) - 1:len(prompt) + len(ids) - 1], dtype=np.float64)
    finally:
        ref.close()
    top = logits.max(axis=1, keepdims=True)
    expected = (logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[np.arange(len(ids)), ids]
    gap = np.abs(np.asarray(recorded) - expected)  # chunked prefill and batch shapes differ from the reference's
    assert gap.max() < 0.15 and gap.mean() < 0.03, list(zip(recorded, expected, strict=True))
    assert min(recorded) < -0.5  # sampled hot, some token was far from certain: the check above is not trivial
