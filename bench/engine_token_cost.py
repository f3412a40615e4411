"""What a token costs the batch engine, and which batches keep greedy identity (the figures behind #11's bound).

    AGENT_SELFEVOLVE_THREADS=2 python bench/engine_token_cost.py [--kv q8_0|f16]

Four synthetic prompts of 600-720 tokens are prefilled into four slots of one `BatchEngine` (real 0.5B). Reported:
CPU ms per prefill token, CPU ms per decoded token with 1 sequence and with 4 in one batch (CPU time, which a busy
machine distorts less than wall time), whether each sequence's logits in a 4-sequence batch equal its logits
decoded alone, and whether the last 8 tokens of a prompt computed in one chunk equal them computed one by one
(the condition for speculative decoding without changing greedy output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from agent_selfevolve.models.llama_cpp import LlamaCppModel  # noqa: E402
from agent_selfevolve.models.llama_engine import BatchEngine  # noqa: E402

DRAFT = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv", default="q8_0", choices=["q8_0", "f16"])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    model = LlamaCppModel(args.model, n_ctx=1024, engine="batched")
    llm = model.load()  # the batched load: repacked weight buffers off, as the engine runs
    engine = BatchEngine(llm, slots=4, n_ctx=1024, n_threads=model.n_threads, kv_type=args.kv)
    lib = engine._lib
    n_vocab = lib.llama_vocab_n_tokens(engine._vocab)
    text = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # step {i}" for i in range(120))
    tokens = llm.tokenize(text.encode(), add_bos=False)
    prompts = [tokens[k:k + n] for k, n in enumerate((600, 630, 680, 720))]

    def logits(n: int) -> list[np.ndarray]:
        return [np.ctypeslib.as_array(lib.llama_get_logits_ith(engine._ctx, i), shape=(n_vocab,)).copy()
                for i in range(n)]

    def decode_last(seqs: list[int], copy: bool = True) -> list[np.ndarray]:
        engine._decode([(prompts[s][-1], len(prompts[s]) - 1, s) for s in seqs], logits=True)
        rows = logits(len(seqs)) if copy else []
        for s in seqs:
            lib.llama_memory_seq_rm(engine._mem, s, len(prompts[s]) - 1, -1)
        return rows

    start = time.process_time()
    for seq, prompt in enumerate(prompts):
        for lo in range(0, len(prompt) - 1, engine.chunk):
            engine._decode([(prompt[p], p, seq) for p in range(lo, min(lo + engine.chunk, len(prompt) - 1))], False)
    prefill_ms = (time.process_time() - start) / sum(len(p) - 1 for p in prompts) * 1000
    alone = [decode_last([s])[0] for s in range(4)]
    batched = decode_last([0, 1, 2, 3])
    cost = {}
    for seqs in ([0], [0, 1, 2, 3]):
        start = time.process_time()
        for _ in range(args.rounds):
            decode_last(seqs, copy=False)  # the engine samples in place, copying nothing
        cost[len(seqs)] = (time.process_time() - start) / (args.rounds * len(seqs)) * 1000
    p0, base = prompts[0], len(prompts[0]) - DRAFT  # the last DRAFT tokens of prompt 0: one by one, then one chunk
    lib.llama_memory_seq_rm(engine._mem, 0, base, -1)
    one_by_one = []
    for p in range(base, len(p0)):
        engine._decode([(p0[p], p, 0)], True)
        one_by_one += logits(1)
    lib.llama_memory_seq_rm(engine._mem, 0, base, -1)
    engine._decode([(p0[p], p, 0) for p in range(base, len(p0))], True)
    chunk = logits(DRAFT)
    engine.close()
    model.close()
    out = {"kv": args.kv, "threads": model.n_threads, "prefill_cpu_ms_per_token": round(prefill_ms, 1),
           "decode_cpu_ms_per_token_1_seq": round(cost[1], 1), "decode_cpu_ms_per_token_4_seqs": round(cost[4], 1),
           "batch_of_4_equals_alone": [bool(np.array_equal(a, b)) for a, b in zip(alone, batched, strict=True)],
           f"chunk_of_{DRAFT}_equals_one_by_one": [bool(np.array_equal(a, b))
                                                   for a, b in zip(one_by_one, chunk, strict=True)]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
