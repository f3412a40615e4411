"""Concurrent attempts on one llama.cpp model: several sequences decoded in one batch, with prefix KV reuse.

Chosen by measurement (2 cores, Qwen2.5-Coder-0.5B Q4_K_M, CPU time per generated token, which a busy machine
does not distort): one context decoding 1, 2 or 4 sequences per `llama_decode` spent 38.7, 38.0 and 26.6 ms per
token; a pool of 2 or 4 contexts with one thread each spent 36.5 and 35.6. Batching four sequences is the only
option that makes a token cheaper; a pool only spreads the same work (and keeps a KV cache per context).

Greedy output does not depend on what else runs. llama.cpp on CPU is not batch invariant (a token computed in a
chunk of 4+ tokens gets other bits than one computed alone), so the engine only makes batches whose bits are:
- a decode batch holds one token per sequence, at most 4 sequences: with flash attention on, llama.cpp's
  repacked weight buffers off and a Q8_0 KV cache, each token's logits are bitwise those of decoding it alone
  (measured in every order of 2 and 4 sequences of unequal lengths; with the repacked buffers a batch of 4
  differs). The KV type matters: on an F16 cache llama.cpp's CPU flash attention splits a lone query's KV
  (512+ cells) across threads and merges the partial softmaxes, a summation order it does not use when several
  sequences share the batch, so a sequence decoded beside a neighbour drifted from itself alone (up to 0.3 in a
  logit; HumanEval/3's greedy loop variable changed). A quantized cache never takes that path; Q8_0 costs the
  same CPU per token here and halves the bytes of every cached state;
- a prompt is prefilled alone, in chunks cut at canonical positions (message starts, multiples of `chunk`),
  and its last token always goes through the decode batch; a cached state is resumed only at a position where
  its own computation was cut (see `kv_cache`), so a warm start computes exactly the chunks a cold one does.
So an attempt's tokens are the same run alone or beside three others, as long as the states it reuses were not
evicted from the cache meanwhile.

Each sequence lives in a slot (its own KV stream, `kv_unified=False`). A request takes the idle slot that
already holds the longest usable prefix of its prompt (an attempt's previous step, usually), or restores the
best cached state into the least recently used idle slot (spilling that slot's contents to the cache first).
The system message and the first user turn are saved as shared states, so sibling attempts compute them once.
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from agent_selfevolve.models.base import ModelError
from agent_selfevolve.models.kv_cache import PrefixKVCache, as_tokens, canonical_cuts, next_cut, usable_prefix

if TYPE_CHECKING:
    from llama_cpp import Llama

MAX_SLOTS = 4
"""Decode batches of up to 4 tokens were measured bitwise equal to decoding alone; beyond, unverified."""
SPILL_MIN_TOKENS = 64
KV_TYPES = {"q8_0": "GGML_TYPE_Q8_0", "f16": "GGML_TYPE_F16"}
"""The KV cache's ggml type. Only q8_0 keeps batches bitwise equal to decoding alone (module docstring);
f16 is kept to show why."""
SHARED_BOUNDARIES = 2
"""Save states at the first two message starts after position 0: the system message, then the first user turn."""


@dataclass
class Sampling:
    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0
    max_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    grammar: Any = None
    """A llama_cpp LlamaGrammar, or None."""


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    reused_tokens: int
    """Prompt tokens whose KV came from a slot or the cache instead of being computed."""
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)
    """Per token of `token_ids`: its log-probability under the model's raw distribution (temperature 1, no
    penalties or grammar), whatever the sampler then did. Training diagnostics (how sure was the policy of a row?)
    and importance ratios need the policy's own probability, not the sampler's."""


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)
    cuts: list[bool] = field(default_factory=lambda: [True])
    busy: bool = False
    spilled: bool = False
    used: float = 0.0


@dataclass
class _Request:
    prompt: list[int]
    sampling: Sampling
    done: threading.Event = field(default_factory=threading.Event)
    slot: _Slot | None = None
    pos: int = 0
    sampler: Any = None
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    reused: int = 0
    finish: str = ""
    error: BaseException | None = None


@dataclass
class EngineStats:
    requests: int = 0
    prompt_tokens: int = 0
    """Prompt tokens sent."""
    prefill_tokens: int = 0
    """Prompt tokens computed (the rest were reused)."""
    reused_from_slot: int = 0
    reused_from_cache: int = 0
    reused_from_copy: int = 0
    slot_hits: int = 0
    cache_hits: int = 0
    copy_hits: int = 0
    misses: int = 0
    spills: int = 0
    shared_saves: int = 0
    generated_tokens: int = 0
    decode_batches: int = 0
    decode_rows: int = 0
    decode_ubatches: int = 0
    """How many pieces llama.cpp cut the decode batches into (a piece holds sequences whose ids rise by one)."""
    prefill_chunks: int = 0


class BatchEngine:
    """Owns one llama.cpp context with `slots` sequences and a worker thread; `generate` may be called from any
    number of threads at once."""

    def __init__(self, llm: Llama, *, slots: int = MAX_SLOTS, n_ctx: int = 8192, n_threads: int = 2,
                 chunk: int = 256, cache_mb: float = 512, message_start: int | None = None,
                 kv_type: str = "q8_0"):
        import llama_cpp as lib

        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be 1..{MAX_SLOTS}, not {slots}")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, not {kv_type!r}")
        self._lib, self._llm, self.n_ctx, self.chunk = lib, llm, n_ctx, chunk
        self.message_start = message_start
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_batch = params.n_ubatch = max(chunk, slots)
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.type_k = params.type_v = getattr(lib, KV_TYPES[kv_type])
        params.kv_unified = False
        self._ctx = lib.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise ModelError(f"llama.cpp could not create a context of {slots} x {n_ctx} tokens")
        adapter = getattr(llm, "_lora_adapter", None)
        if adapter is not None:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(getattr(llm, "lora_scale", 1.0))
            if lib.llama_set_adapters_lora(self._ctx, adapters, 1, scales):
                raise ModelError("llama.cpp could not apply the LoRA adapter to the batch context")
        self._ctx_ref = SimpleNamespace(ctx=self._ctx)
        self._mem = lib.llama_get_memory(self._ctx)
        self._vocab = lib.llama_model_get_vocab(llm._model.model)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._batch = lib.llama_batch_init(params.n_batch, 0, 1)
        self.cache = PrefixKVCache.with_cap_mb(cache_mb)
        self.stats = EngineStats()
        self._slots = [_Slot(i) for i in range(slots)]
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        # The worker holds the engine only weakly between rounds, so an engine nobody closes (a model dropped at
        # the end of a task) is still collected, and its context freed, instead of living on in its thread.
        self._thread = threading.Thread(target=_worker, args=(weakref.ref(self),), name="llama-batch-engine",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ public

    def generate(self, prompt: list[int], sampling: Sampling) -> Generation:
        """Generate a completion of `prompt` (token ids); blocks until done. Raises ModelError."""
        if len(prompt) == 0:
            raise ModelError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise ModelError(f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}")
        req = _Request(list(prompt), sampling)
        with self._cv:
            if self._closed:
                raise ModelError("the llama.cpp engine is closed")
            self._waiting.append(req)
            self._cv.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error if isinstance(req.error, ModelError) else ModelError(
                f"llama.cpp failed: {type(req.error).__name__}: {req.error}") from req.error
        return self._result(req)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
        self._free()

    def _free(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self._free()

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {**s.__dict__, "prefill_saved": round(1 - s.prefill_tokens / s.prompt_tokens, 3) if s.prompt_tokens
                else 0.0, "cache": self.cache.to_dict(), "slots": len(self._slots)}

    # ------------------------------------------------------------------------------------------ worker

    def _run_once(self, idle_wait_s: float) -> bool:
        """Admit what waits and run one round; False once the engine is closed."""
        with self._cv:
            if not self._closed and not self._waiting and not self._active:
                self._cv.wait(idle_wait_s)
            if self._closed:
                for req in [*self._waiting, *self._active]:
                    req.error = ModelError("the llama.cpp engine was closed")
                    req.done.set()
                return False
            if not self._waiting and not self._active:
                return True
        try:
            self._admit()
            self._step()
        except Exception as exc:  # a failed llama_decode: fail what was running, start clean
            for req in self._active:
                req.error = exc
                self._release(req)
            self._active.clear()
            for slot in self._slots:
                self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
                slot.tokens, slot.cuts, slot.spilled, slot.busy = [], [True], False, False
        return True

    def _admit(self) -> None:
        with self._cv:
            waiting = list(self._waiting)
        for req in waiting:
            idle = [s for s in self._slots if not s.busy]
            if not idle:
                return
            prompt = as_tokens(req.prompt)
            limit = len(req.prompt) - 1  # the last prompt token always goes through the decode batch
            own = max(idle, key=lambda s: (self._usable(s, prompt, limit), s.used))
            own_n = self._usable(own, prompt, limit)
            entry, cache_n = self.cache.best(prompt, limit)
            donor = max((s for s in self._slots if s.busy), key=lambda s: self._usable(s, prompt, limit), default=None)
            donor_n = self._usable(donor, prompt, limit) if donor is not None else 0
            best_n = max(own_n, cache_n, donor_n)
            if self._wait_for_sibling(prompt, best_n):
                continue
            with self._cv:
                self._waiting.remove(req)
            if best_n > 0 and own_n == best_n:
                slot, source = own, "slot"
            else:  # the least valuable idle slot: an empty one, else the least recently used
                slot = min(idle, key=lambda s: (len(s.tokens) > 0, s.used))
                source = "miss" if best_n == 0 else "cache" if cache_n >= donor_n else "copy"
            self._prepare(slot, req, prompt, best_n, source, entry, donor)

    def _usable(self, slot: _Slot, prompt: np.ndarray, limit: int) -> int:
        if not slot.tokens:
            return 0
        return usable_prefix(as_tokens(slot.tokens), np.asarray(slot.cuts, dtype=bool), prompt, limit)

    def _wait_for_sibling(self, prompt: np.ndarray, best_n: int) -> bool:
        """True when a request still prefilling shares a much longer prefix: it will save that state to share."""
        for other in self._active:
            if other.pos < len(other.prompt) - 1:
                cuts = canonical_cuts(other.prompt, self.chunk, self.message_start)
                n = usable_prefix(as_tokens(other.prompt), cuts, prompt, len(prompt) - 1)
                if n >= best_n + SPILL_MIN_TOKENS and n > other.pos:
                    return True
        return False

    def _prepare(self, slot: _Slot, req: _Request, prompt: np.ndarray, n: int, source: str, entry: Any,
                 donor: _Slot | None) -> None:
        lib, s = self._lib, self.stats
        keep = n if source == "slot" else 0
        if (not slot.spilled and len(slot.tokens) - keep >= SPILL_MIN_TOKENS
                and self.cache.put(slot.tokens, slot.cuts, self._state(slot.seq), "spill")):
            s.spills += 1
        if source in ("cache", "copy"):
            state = entry.state if source == "cache" else self._state(donor.seq)  # type: ignore[union-attr]
            tokens = entry.tokens if source == "cache" else donor.tokens  # type: ignore[union-attr]
            cuts = entry.cuts if source == "cache" else donor.cuts  # type: ignore[union-attr]
            lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            if lib.llama_state_seq_set_data(self._ctx, buf, len(state), slot.seq) != len(state):
                raise ModelError("llama.cpp could not restore a cached KV state")
            slot.tokens, slot.cuts = [int(t) for t in tokens], [bool(c) for c in cuts]
        lib.llama_memory_seq_rm(self._mem, slot.seq, n, -1)
        slot.tokens, slot.cuts = slot.tokens[:n], slot.cuts[: n + 1]
        if n == 0:
            slot.tokens, slot.cuts = [], [True]
        slot.busy, slot.spilled, slot.used = True, False, time.monotonic()
        req.slot, req.pos, req.reused = slot, n, n
        req.sampler = self._sampler(req.sampling)
        s.requests += 1
        s.prompt_tokens += len(req.prompt)
        s.prefill_tokens += len(req.prompt) - n
        if source == "miss":
            s.misses += 1
        else:
            setattr(s, f"{source}_hits", getattr(s, f"{source}_hits") + 1)
            setattr(s, f"reused_from_{source}", getattr(s, f"reused_from_{source}") + n)
        self.cache.record(n if source == "cache" else 0)
        self._active.append(req)

    def _step(self) -> None:
        prefilling = [r for r in self._active if r.pos < len(r.prompt) - 1]
        if prefilling:
            self._prefill_chunk(prefilling[0])
        decoding = [r for r in self._active if r.pos >= len(r.prompt) - 1]
        if decoding:
            self._decode_round(decoding)

    def _prefill_chunk(self, req: _Request) -> None:
        slot = req.slot
        assert slot is not None
        cuts = canonical_cuts(req.prompt, self.chunk, self.message_start)
        start = req.pos
        end = next_cut(cuts, start)
        self._decode([(req.prompt[p], p, slot.seq) for p in range(start, end)], logits=False)
        slot.tokens.extend(req.prompt[start:end])
        slot.cuts.extend([False] * (end - start - 1) + [True])
        req.pos = end
        self.stats.prefill_chunks += 1
        if self.message_start is None:
            return
        shared = np.flatnonzero(as_tokens(req.prompt[1:]) == self.message_start)[:SHARED_BOUNDARIES] + 1
        if (end in shared.tolist() and req.prompt[:end] not in self.cache
                and self.cache.put(req.prompt[:end], slot.cuts, self._state(slot.seq), "shared")):
            self.stats.shared_saves += 1

    def _decode_round(self, reqs: list[_Request]) -> None:
        # llama.cpp puts tokens of several sequences in one ubatch only while their ids rise by one (split_equal):
        # fed in admission order, a round of 4 fell apart into ubatches of 1-2 rows. Any order gives the same bits.
        reqs = sorted(reqs, key=lambda r: r.slot.seq)  # type: ignore[union-attr]
        seqs = [r.slot.seq for r in reqs]  # type: ignore[union-attr]
        feeds = [(r.prompt[-1] if not r.generated else r.generated[-1], r) for r in reqs]
        self._decode([(tok, r.pos, seq) for (tok, r), seq in zip(feeds, seqs, strict=True)], logits=True)
        self.stats.decode_batches += 1
        self.stats.decode_rows += len(reqs)
        self.stats.decode_ubatches += 1 + sum(b != a + 1 for a, b in zip(seqs, seqs[1:], strict=False))
        for i, (tok, req) in enumerate(feeds):
            slot = req.slot
            assert slot is not None
            slot.tokens.append(tok)
            slot.cuts.append(True)
            req.pos += 1
            token = int(req.sampler.sample(self._ctx_ref, i))
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                self._finish(req, "stop")
                continue
            req.generated.append(token)
            req.logprobs.append(self._logprob(i, token))
            self.stats.generated_tokens += 1
            req.text += self._llm.detokenize([token])
            if any(stop.encode() in req.text for stop in req.sampling.stop if stop):
                self._finish(req, "stop")
            elif len(req.generated) >= req.sampling.max_tokens or req.pos >= self.n_ctx - 1:
                self._finish(req, "length")

    def _logprob(self, row: int, token: int) -> float:
        """log softmax(logits of batch row `row`)[token], from the raw logits the sampler started from."""
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, row), shape=(self._n_vocab,))
        top = float(logits.max())
        return float(logits[token]) - top - float(np.log(np.exp(logits - top, dtype=np.float64).sum()))

    def _finish(self, req: _Request, reason: str) -> None:
        req.finish = reason
        self._active.remove(req)
        self._release(req)

    def _release(self, req: _Request) -> None:
        if req.slot is not None:
            req.slot.busy, req.slot.used = False, time.monotonic()
        if req.sampler is not None:
            req.sampler.close()
            req.sampler = None
        req.done.set()

    def _decode(self, items: list[tuple[int, int, int]], logits: bool) -> None:
        batch = self._batch
        batch.n_tokens = len(items)
        for i, (tok, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if logits else 0
        rc = self._lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise ModelError(f"llama_decode failed ({rc}) on a batch of {len(items)} tokens")

    def _state(self, seq: int) -> bytes:
        size = self._lib.llama_state_seq_get_size(self._ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        got = self._lib.llama_state_seq_get_data(self._ctx, buf, size, seq)
        return bytes(buf[:got])

    def _sampler(self, sp: Sampling) -> Any:
        """The sampler chain llama-cpp-python builds for `create_chat_completion`, so the two paths sample alike."""
        llm = self._llm
        llm._seed = sp.seed
        return llm._init_sampler(top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p, typical_p=sp.typical_p,
                                 temp=sp.temperature, repeat_penalty=sp.repeat_penalty,
                                 frequency_penalty=sp.frequency_penalty, presence_penalty=sp.presence_penalty,
                                 grammar=sp.grammar)

    def _result(self, req: _Request) -> Generation:
        raw = bytes(req.text)
        cut = min((raw.find(s.encode()) for s in req.sampling.stop if s and s.encode() in raw), default=len(raw))
        text = raw[:cut].decode("utf-8", errors="ignore")
        ids, spelled = [], b""
        for token in req.generated:  # the sampled ids that spell the returned text (a stop string may end it)
            piece = self._llm.detokenize([token])
            if len(spelled) + len(piece) > cut:
                break
            ids.append(token)
            spelled += piece
        return Generation(text, ids, len(req.prompt), req.reused, req.finish, req.logprobs[:len(ids)])


def _worker(ref: weakref.ref[BatchEngine]) -> None:
    while True:
        engine = ref()
        if engine is None or not engine._run_once(idle_wait_s=0.5):
            return
        del engine
