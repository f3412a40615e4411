"""Chat rows -> token ids and labels with loss on assistant turns only, computed so it cannot silently vanish.

Why not `apply_chat_template(return_assistant_tokens_mask=True)`: it needs `{% generation %}` markers that stock
templates lack, and without them the mask is all zeros and training quietly learns nothing. Instead we render
the conversation incrementally: an assistant message i spans from the end of `render(messages[:i],
add_generation_prompt=True)` (after its header) to the end of `render(messages[:i+1])` (its content and end-of-turn
token). Spans are character ranges in the full render, mapped to tokens with the fast tokenizer's offsets, so
BPE merges across a boundary cannot shift them. Templates with generation markers are used as a fallback when a
template re-renders earlier turns (the prefix property fails).

Assistant turns that carry the token ids the engine sampled (`models.base.EXTRA_KEY`, recorded at rollout) are
trained on exactly those ids, spliced in place of the tokenization of their rendered text: re-tokenizing
generated text does not give back what was generated (measured with the embedded Qwen 0.5B: grammar-constrained
decoding spells `<tool_call>` as four tokens `<`,`tool`,`_call`,`>\n`, which the tokenizer turns into one
special token; and the template re-serializes tool-call JSON). The context around them is tokenized as rendered.
Recorded ids are checked first (inside this tokenizer's vocabulary, decoding to text that holds the message's
words and tool names); ids that fail, and rows on the generation-marker fallback, are re-tokenized and counted.

Every row is checked: at least one trainable token, and each trained assistant turn's end-of-turn token inside
the mask (a model never trained on `<|im_end|>` never learns to stop). Long rows are cut from the left at an
assistant-turn boundary keeping the system+first user messages; a row that still cannot keep a trainable token
is dropped and counted, never emitted with an empty mask.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent_selfevolve.models.base import EXTRA_KEY, Message, recorded_token_ids

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
EOT_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


class EmptyMaskError(ValueError):
    """The chat template yields no trainable assistant tokens (or drops the end-of-turn token) for a row."""


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass
class MaskStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    exact_turns: int = 0
    """Assistant turns trained on the token ids recorded at rollout."""
    ids_rejected: int = 0
    """Turns whose recorded ids did not fit this tokenizer or their text, or met a marker-only template:
    re-tokenized."""

    def add(self, row: TokenizedRow) -> None:
        self.kept += 1
        self.truncated += int(row.truncated)
        self.tokens += len(row.input_ids)
        self.trainable_tokens += row.n_trainable


def template_messages(messages: Sequence[Message]) -> list[Message]:
    """Messages as chat templates expect them: tool-call arguments as dicts, no None content, no 'weight' and no
    recorded token ids."""
    out = []
    for m in messages:
        m = {k: v for k, v in copy.deepcopy(m).items() if k not in ("weight", EXTRA_KEY)}
        if m.get("content") is None:
            m["content"] = ""
        calls = []
        for c in m.get("tool_calls") or []:
            fn = dict(c.get("function", c))
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except json.JSONDecodeError:
                    fn["arguments"] = {"raw": fn["arguments"]}
            calls.append({"type": "function", "id": c.get("id", ""), "function": fn})
        if calls:
            m["tool_calls"] = calls
        else:
            m.pop("tool_calls", None)
        out.append(m)
    return out


def _render(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None, gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=gen)


def _eot_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in EOT_TOKENS if t in vocab)
    return ids


def _has_markers(tokenizer: Any) -> bool:
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "generation %}" in template


class _PrefixBroken(Exception):
    """Incremental rendering does not reproduce the conversation (the template rewrites earlier turns)."""


@dataclass
class _Layout:
    text: str
    spans: list[tuple[int, int, int]]
    """(start, end, message index) in characters for every trainable assistant message."""
    head_end: int
    """End of the system+first user messages: kept by left truncation."""
    turn_starts: list[int]
    """Where each assistant turn (header included) starts: the places left truncation may cut to."""


def _layout(messages: Sequence[Message], tools: list[dict[str, Any]] | None, tokenizer: Any,
            train_from: int) -> _Layout:
    try:
        return _layout_unchecked(messages, tools, tokenizer, train_from)
    except _PrefixBroken:
        raise
    except Exception as exc:  # a template may refuse a partial conversation (jinja raise_exception)
        raise _PrefixBroken(f"the template refused a partial conversation: {exc}") from exc


def _layout_unchecked(messages: Sequence[Message], tools: list[dict[str, Any]] | None, tokenizer: Any,
                      train_from: int) -> _Layout:
    msgs = template_messages(messages)
    full = _render(tokenizer, msgs, tools, False)
    first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
    head = _render(tokenizer, msgs[:first], tools, False) if first else ""
    if not full.startswith(head):
        head = ""
    spans: list[tuple[int, int, int]] = []
    starts: list[int] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, msgs[:i], tools, False) if i else ""
        upto = _render(tokenizer, msgs[:i + 1], tools, False)
        if not (full.startswith(before) and full.startswith(upto)):
            raise _PrefixBroken(f"rendering messages[:{i + 1}] is not a prefix of the whole conversation")
        starts.append(len(before))
        if i < train_from or messages[i].get("weight", 1) == 0:
            continue
        opened = _render(tokenizer, msgs[:i], tools, True) if i else ""
        start = len(opened) if opened and full.startswith(opened) and len(opened) <= len(upto) else len(before)
        end = start + len(full[start:len(upto)].rstrip())
        spans.append((start, end, i))
    return _Layout(full, spans, len(head), starts)


def _labels_from_spans(offsets: list[tuple[int, int]], ids: list[int], spans: list[tuple[int, int, int]],
                       eot: set[int], text: str) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    eot_in_text = any(t in eot for t in ids)
    for start, end, i in spans:
        hit = [t for t, (s, e) in enumerate(offsets) if s < end and e > start]
        if not hit:
            raise EmptyMaskError(f"assistant message {i} renders to no tokens (span {start}:{end} of the "
                                 "template's text); the chat template drops assistant content")
        for t in hit:
            labels[t] = ids[t]
        if eot_in_text and ids[hit[-1]] not in eot:
            raise EmptyMaskError(f"assistant message {i}: its end-of-turn token is outside the loss mask "
                                 f"(text {text[start:end][-40:]!r}); the model would not learn to stop")
    return labels


def _labels_from_markers(tokenizer: Any, messages: Sequence[Message], tools: list[dict[str, Any]] | None,
                         train_from: int) -> tuple[list[int], list[int]]:
    msgs = template_messages(messages)
    enc = tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    runs: list[list[int]] = []
    for t, bit in enumerate(mask):
        if bit and (not runs or runs[-1][-1] != t - 1):
            runs.append([])
        if bit:
            runs[-1].append(t)
    keep = [i >= train_from and messages[i].get("weight", 1) != 0 for i in assistant]
    if len(runs) != len(assistant) and not all(keep):
        raise EmptyMaskError("generation markers do not give one span per assistant message, so per-message "
                             "weights cannot be applied")
    labels = [IGNORE_INDEX] * len(ids)
    for run, use in zip(runs, keep if len(runs) == len(assistant) else [True] * len(runs), strict=True):
        for t in run if use else []:
            labels[t] = ids[t]
    return ids, labels


def usable_ids(message: Message, tokenizer: Any) -> list[int] | None:
    """The ids recorded with an assistant message if they can stand for it under `tokenizer`, else None: every id
    inside the vocabulary, and their decoding holding each word of the content and each tool call's name (a
    sanity check for ids from another tokenizer or for text edited after the rollout; drift in how the text is
    split into tokens passes, which is the point)."""
    ids = recorded_token_ids(message)
    if ids is None:
        return None
    if not all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in ids):
        return None
    decoded = tokenizer.decode(ids)
    words = str(message.get("content") or "").split()
    names = [str((c.get("function") or c).get("name", "")) for c in message.get("tool_calls") or []]
    return ids if all(w in decoded for w in words + names) else None


def _splice_recorded(ids: list[int], offsets: list[tuple[int, int]], layout: _Layout, recorded: dict[int, list[int]],
                     eot: set[int], tokenizer: Any) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Ids, labels and offsets with each span in `recorded` replaced by its recorded ids (plus the template's
    end-of-turn tokens); other spans are labelled as tokenized. Spliced tokens get their span as offset, so
    `_truncate` still finds turn boundaries."""
    out_ids: list[int] = []
    out_labels: list[int] = []
    out_offsets: list[tuple[int, int]] = []

    def put(tokens: list[int], offs: list[tuple[int, int]], train: bool) -> None:
        out_ids.extend(tokens)
        out_offsets.extend(offs)
        out_labels.extend(tokens if train else [IGNORE_INDEX] * len(tokens))

    def text_tokens(lo: int, hi: int) -> list[int]:
        return list(tokenizer(layout.text[lo:hi], add_special_tokens=False)["input_ids"]) if hi > lo else []

    eot_in_text = any(t in eot for t in ids)
    pos = 0
    for start, end, i in layout.spans:
        hit = [t for t, (s, e) in enumerate(offsets) if s < end and e > start]
        if not hit:
            raise EmptyMaskError(f"assistant message {i} renders to no tokens (span {start}:{end} of the "
                                 "template's text); the chat template drops assistant content")
        first, last = hit[0], hit[-1]
        put(ids[pos:first], offsets[pos:first], False)
        pos = last + 1
        if i not in recorded:
            if eot_in_text and ids[last] not in eot:
                raise EmptyMaskError(f"assistant message {i}: its end-of-turn token is outside the loss mask")
            put(ids[first:last + 1], offsets[first:last + 1], True)
            continue
        tail = last + 1
        while tail > first and ids[tail - 1] in eot:
            tail -= 1
        if eot_in_text and tail == last + 1:
            raise EmptyMaskError(f"assistant message {i}: its end-of-turn token is outside the loss mask")
        lead = text_tokens(offsets[first][0], start)  # a token that began in the turn's header
        put(lead, [(offsets[first][0], start)] * len(lead), False)
        own = list(recorded[i])
        while own and own[-1] in eot:
            own.pop()
        put(own + ids[tail:last + 1], [(start, end)] * len(own) + offsets[tail:last + 1], True)
        trail = text_tokens(end, offsets[last][1])  # a token that ran past the turn's end
        put(trail, [(end, offsets[last][1])] * len(trail), False)
    put(ids[pos:], offsets[pos:], False)
    return out_ids, out_labels, out_offsets


def _truncate(ids: list[int], labels: list[int], offsets: list[tuple[int, int]], layout: _Layout,
              max_length: int) -> tuple[list[int], list[int]] | None:
    """Keep the head (system + first user) and the longest tail starting at an assistant turn that fits."""
    head_tok = sum(1 for s, e in offsets if e <= layout.head_end)
    for c in layout.turn_starts:
        if c < layout.head_end:
            continue
        tail = next((t for t, (s, _) in enumerate(offsets) if s >= c), len(ids))
        if head_tok + len(ids) - tail <= max_length:
            new_labels = labels[:head_tok] + labels[tail:]
            if any(x != IGNORE_INDEX for x in new_labels):
                return ids[:head_tok] + ids[tail:], new_labels
    return None


def tokenize_chat(messages: Sequence[Message], tokenizer: Any, tools: list[dict[str, Any]] | None = None,
                  max_length: int = 4096, train_from: int = 0, stats: MaskStats | None = None) -> TokenizedRow | None:
    """Token ids and labels for one conversation; None when the row had to be dropped (counted in `stats`).

    Assistant messages before `train_from` or with "weight": 0 are context only. Raises EmptyMaskError when the
    template, not the row, is at fault."""
    stats = stats if stats is not None else MaskStats()
    stats.rows += 1
    wanted = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and i >= train_from
              and m.get("weight", 1) != 0]
    if not wanted:
        stats.dropped_no_target += 1
        return None
    try:
        layout = _layout(messages, tools, tokenizer, train_from)
    except _PrefixBroken as exc:
        if not _has_markers(tokenizer):
            raise EmptyMaskError(f"cannot locate assistant turns: {exc}, and the template has no "
                                 "{% generation %} markers to fall back on") from exc
        ids, labels = _labels_from_markers(tokenizer, messages, tools, train_from)
        stats.ids_rejected += sum(recorded_token_ids(messages[i]) is not None for i in wanted)
        if not any(x != IGNORE_INDEX for x in labels):
            raise EmptyMaskError("the template's generation markers select no tokens") from exc
        if len(ids) > max_length:
            stats.dropped_too_long += 1
            return None
        row = TokenizedRow(ids, labels)
        stats.add(row)
        return row
    enc = tokenizer(layout.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    recorded = {i: found for _, _, i in layout.spans if (found := usable_ids(messages[i], tokenizer)) is not None}
    stats.ids_rejected += sum(recorded_token_ids(messages[i]) is not None for _, _, i in layout.spans) - len(recorded)
    if recorded:
        ids, labels, offsets = _splice_recorded(ids, offsets, layout, recorded, _eot_ids(tokenizer), tokenizer)
        stats.exact_turns += len(recorded)
    else:
        labels = _labels_from_spans(offsets, ids, layout.spans, _eot_ids(tokenizer), layout.text)
    truncated = False
    if len(ids) > max_length:
        cut = _truncate(ids, labels, offsets, layout, max_length)
        if cut is None:
            stats.dropped_too_long += 1
            return None
        ids, labels = cut
        truncated = True
    row = TokenizedRow(ids, labels, truncated)
    stats.add(row)
    return row


def _warn(stats: MaskStats, what: str) -> None:
    if stats.ids_rejected:
        log.warning("%s: %d assistant turn(s) had recorded token ids that do not fit this tokenizer or their text; "
                    "they were re-tokenized (%d turn(s) trained on their recorded ids)", what, stats.ids_rejected,
                    stats.exact_turns)
    if stats.dropped_too_long:
        log.warning("%s: dropped %d of %d rows longer than max_length with no assistant turn that fits after "
                    "keeping the system+user head", what, stats.dropped_too_long, stats.rows)
    if stats.dropped_no_target:
        log.warning("%s: dropped %d of %d rows with no trainable assistant message", what,
                    stats.dropped_no_target, stats.rows)


def tokenize_rows(rows: Iterable[dict[str, Any]], tokenizer: Any,
                  max_length: int = 4096) -> tuple[list[TokenizedRow], MaskStats]:
    """SFT rows {"messages", "tools"?} -> tokenized rows (each with >=1 trainable token) and counts."""
    stats = MaskStats()
    out = []
    for row in rows:
        tok = tokenize_chat(row["messages"], tokenizer, row.get("tools"), max_length, stats=stats)
        if tok is not None:
            out.append(tok)
    _warn(stats, "sft")
    return out, stats


def tokenize_pairs(rows: Iterable[dict[str, Any]], tokenizer: Any,
                   max_length: int = 4096) -> tuple[list[tuple[TokenizedRow, TokenizedRow]], MaskStats]:
    """DPO rows {"prompt", "chosen", "rejected"} -> (chosen, rejected) pairs; loss only after the prompt."""
    stats = MaskStats()
    out = []
    for row in rows:
        prompt = list(row["prompt"])
        pair = [tokenize_chat(prompt + list(row[side]), tokenizer, row.get("tools"), max_length, len(prompt), stats)
                for side in ("chosen", "rejected")]
        if pair[0] is not None and pair[1] is not None:
            out.append((pair[0], pair[1]))
    _warn(stats, "dpo")
    return out, stats


def check_template(tokenizer: Any) -> MaskStats:
    """Fail fast with a clear error when a tokenizer's chat template gives nothing to train on."""
    if not getattr(tokenizer, "chat_template", None):
        raise EmptyMaskError("the tokenizer has no chat template; set tokenizer.chat_template before training")
    probe: list[Message] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "List the files."},
        {"role": "assistant", "content": "Listing them.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"cmd": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py b.py"},
        {"role": "assistant", "content": "There are two files."}]
    stats = MaskStats()
    row = tokenize_chat(probe, tokenizer, max_length=1 << 20, stats=stats)
    if row is None or row.n_trainable == 0:
        raise EmptyMaskError(f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} yields an empty "
                             "assistant loss mask")
    return stats
