"""A bounded LRU cache of llama.cpp KV states keyed by token prefix (what vLLM calls automatic prefix caching).

An agent step re-sends the whole conversation; without reuse llama.cpp recomputes it, and with attempts
interleaved on one context every step recomputes its whole history (measured 14.8 s vs 3.6 s for a step).
A saved state covers the tokens it was computed for; a new prompt can start from any saved state whose tokens
share a prefix with it, truncated to that prefix.

Not every prefix length is a valid place to cut. llama.cpp on CPU is not batch invariant: the same token
computed in a chunk of 1-3 tokens or of 8+ tokens gets different bits (logits differ by up to 0.3, measured
for the 0.5B), so resuming a prompt at an arbitrary position would make greedy output depend on which state
happened to be cached, i.e. on timing. Each entry therefore carries `cuts`: the positions where its own
computation was split (chunk boundaries of its prefill, and every position of its one-token-at-a-time decode).
Resuming only at such a position reproduces exactly the chunks a cold computation of the same tokens makes.
Pure Python and numpy: no llama.cpp here, so the logic is tested without a model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.int32]


def as_tokens(tokens: Any) -> Tokens:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def usable_prefix(tokens: Tokens, cuts: npt.NDArray[np.bool_], prompt: Tokens, limit: int) -> int:
    """The longest prefix of `prompt` (at most `limit` tokens) these tokens can serve: their common prefix with the
    prompt, shortened to the nearest position where their computation was cut (`cuts[p]`: a chunk ended at p)."""
    n = min(common_prefix(tokens, prompt), limit, len(cuts) - 1)
    ok = np.flatnonzero(cuts[: n + 1])
    return int(ok[-1]) if len(ok) else 0


def canonical_cuts(prompt: Any, chunk: int, message_start: int | None) -> npt.NDArray[np.bool_]:
    """Where a cold prefill of `prompt` ends its chunks: before each message start, at multiples of `chunk`, and
    before the last token (which is decoded with the generation batch). A prefill resumed at any of these
    positions computes the same chunks from there on as one started at 0."""
    prompt = as_tokens(prompt)
    cuts = np.zeros(len(prompt) + 1, dtype=bool)
    cuts[::chunk] = True
    if message_start is not None:
        cuts[:-1] |= prompt == message_start
    cuts[0] = True
    cuts[max(0, len(prompt) - 1):] = True
    return cuts


def next_cut(cuts: npt.NDArray[np.bool_], start: int) -> int:
    """The end of the prefill chunk that starts at `start`."""
    return start + 1 + int(np.argmax(cuts[start + 1:]))


@dataclass
class KVEntry:
    tokens: Tokens
    cuts: npt.NDArray[np.bool_]
    """len(tokens) + 1 flags: cuts[p] is True when the computation of these tokens had a chunk boundary at p."""
    state: bytes
    """llama_state_seq_get_data of one sequence holding exactly `tokens`."""
    label: str = ""
    """Why it was saved ('shared' boundary, 'spill' of a slot taken over): reported in stats."""

    @property
    def nbytes(self) -> int:
        return len(self.state) + self.tokens.nbytes + self.cuts.nbytes


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    tokens_served: int = 0
    """Prompt tokens restored from the cache instead of recomputed."""
    inserts: int = 0
    evictions: int = 0
    rejected: int = 0
    """States larger than the whole cap, never stored."""

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class PrefixKVCache:
    """LRU cache of KV states, at most `cap_bytes` of them in memory (0 disables it). Thread-safe."""

    cap_bytes: int
    _entries: OrderedDict[tuple[int, ...], KVEntry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stats: CacheStats = field(default_factory=CacheStats)
    used_bytes: int = 0

    @classmethod
    def with_cap_mb(cls, cap_mb: float) -> PrefixKVCache:
        return cls(int(cap_mb * 1024 * 1024))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: Any) -> bool:
        return tuple(as_tokens(tokens).tolist()) in self._entries

    def put(self, tokens: Any, cuts: Any, state: bytes, label: str = "") -> bool:
        """Store a state (replacing one for the same tokens) and evict least-recently-used ones past the cap.
        Returns False when the state alone is bigger than the cap."""
        entry = KVEntry(as_tokens(tokens).copy(), np.asarray(cuts, dtype=bool).copy(), state, label)
        if len(entry.cuts) != len(entry.tokens) + 1:
            raise ValueError(f"cuts must have len(tokens) + 1 = {len(entry.tokens) + 1} flags, not {len(entry.cuts)}")
        key = tuple(entry.tokens.tolist())
        with self._lock:
            if entry.nbytes > self.cap_bytes:
                self.stats.rejected += 1
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self.used_bytes -= old.nbytes
            self._entries[key] = entry
            self.used_bytes += entry.nbytes
            self.stats.inserts += 1
            while self.used_bytes > self.cap_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.used_bytes -= evicted.nbytes
                self.stats.evictions += 1
        return True

    def best(self, prompt: Any, limit: int | None = None) -> tuple[KVEntry | None, int]:
        """The entry that serves the longest prefix of `prompt` (capped at `limit`) and that length; the entry
        becomes most recently used. Does not count a lookup (the caller may find a better source elsewhere)."""
        prompt = as_tokens(prompt)
        limit = len(prompt) if limit is None else limit
        best: tuple[KVEntry | None, int] = (None, 0)
        with self._lock:
            for entry in self._entries.values():
                n = usable_prefix(entry.tokens, entry.cuts, prompt, limit)
                if n > best[1]:
                    best = (entry, n)
            if best[0] is not None:
                self._entries.move_to_end(tuple(best[0].tokens.tolist()))
        return best

    def record(self, served: int) -> None:
        """Count one lookup: `served` tokens came from this cache (0: a miss)."""
        with self._lock:
            self.stats.lookups += 1
            if served > 0:
                self.stats.hits += 1
                self.stats.tokens_served += served
            else:
                self.stats.misses += 1

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {**self.stats.to_dict(), "entries": len(self._entries), "used_mb": round(self.used_bytes / 2**20, 2),
                    "cap_mb": round(self.cap_bytes / 2**20, 2)}
