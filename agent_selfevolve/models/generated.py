"""The token ids llama.cpp actually sampled for a completion, read back from its context after the call.

llama-cpp-python's chat completion returns text only. Its context keeps every token it evaluated
(`Llama.input_ids[:n_tokens]`): the prompt, then each sampled token, which it feeds back before sampling the next.
So after a completion that ended on the end-of-turn token, the tokens past the prompt are exactly the sampled
ones. When it ended on a stop string or on max_tokens, the last sampled token was never fed back and the text
may end inside a token: the evaluated tokens are kept as long as they spell a prefix of the text, and only the
rest (usually one token) is tokenized. Log-probabilities are not recorded for llama.cpp: they need
`logits_all=True`, which keeps n_ctx x vocab floats (8192 x 151936 x 4 B, about 5 GB, for the 0.5B).
"""

from __future__ import annotations

from typing import Any


def llama_completion_ids(llm: Any, n_prompt: int, text: str) -> list[int] | None:
    """Token ids whose detokenization is `text`: the sampled ones as far as they go, then a tokenization of the
    remainder. None if the context cannot be read (never fails the completion it describes)."""
    try:
        evaluated = [int(t) for t in llm.input_ids[n_prompt:llm.n_tokens]]
        target = text.encode("utf-8")
        ids: list[int] = []
        done = b""
        for token in evaluated:
            piece = llm.detokenize([token])
            if not target.startswith(done + piece):
                break
            ids.append(token)
            done += piece
        if len(done) < len(target):
            ids += [int(t) for t in llm.tokenize(target[len(done):], add_bos=False, special=True)]
        return ids
    except Exception:
        return None
