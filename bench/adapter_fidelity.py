"""Is the evolved policy we evaluate the one we trained, and how much did training move it?

    python bench/adapter_fidelity.py --registry runs/evolve-proof/seed0/registry --ref proof-s0-sft@1 \
        --rows bench/results/evolve-proof/seed0/ep2/search/rows-sft.jsonl --n 8

Training runs in peft on the base dequantized from the GGUF; evaluation serves the GGUF with the adapter exported
to a GGUF LoRA by llama.cpp's converter. For `--n` training rows this prints the mean log-probability per
completion token under four models: HF base, HF + peft adapter, llama.cpp base, llama.cpp + GGUF adapter. The
adapter's shift should be the same in both runtimes; and the base's own figure says how sure the model already was
of the rows it is trained on (rows it would write anyway teach it little).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.fileio import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "adapter-fidelity"


def trained_logprob(logits: Any, ids: list[int], labels: list[int]) -> float:
    """Mean log-probability of the tokens training learns (labels not IGNORE_INDEX); row k predicts token k + 1."""
    import numpy as np
    import torch

    from agent_selfevolve.train.masking import IGNORE_INDEX

    at = [k for k in range(1, len(ids)) if labels[k] != IGNORE_INDEX]
    scores = torch.as_tensor(np.asarray(logits[:len(ids)]), dtype=torch.float32)[[k - 1 for k in at]]
    return torch.log_softmax(scores, -1).gather(1, torch.tensor([ids[k] for k in at])[:, None]).mean().item()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="adapter version, name@N")
    parser.add_argument("--rows", type=Path, required=True, help="training rows (jsonl with `messages`)")
    parser.add_argument("--n", type=int, default=8, help="rows measured (the first N)")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy
    from agent_selfevolve.train import AdapterRegistry, hf_base_from_gguf, tokenize_chat

    torch.set_num_threads(args.threads)
    base_gguf = ensure_gguf(args.model)
    base_dir = hf_base_from_gguf(base_gguf)
    registry = AdapterRegistry(args.registry)
    version = registry.get(args.ref)
    served = llama_cpp_policy(args.model, registry, base_dir)(version)  # exports the GGUF LoRA as evaluation does
    lora_gguf = served.lora_path
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    lines = args.rows.read_text().splitlines()[:args.n]
    rows = []  # as training tokenizes them: recorded ids, every trained turn
    for line in lines:
        row = json.loads(line)
        done = tokenize_chat(row["messages"], tokenizer, row.get("tools"), max_length=1 << 16)
        if done is not None:
            rows.append((list(done.input_ids), list(done.labels)))
    scores: dict[str, list[float]] = {}
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    with torch.no_grad():
        scores["hf_base"] = [trained_logprob(hf(torch.tensor([ids])).logits[0], ids, s) for ids, s in rows]
        adapted = PeftModel.from_pretrained(hf, str(version.path))
        scores["hf_adapter"] = [trained_logprob(adapted(torch.tensor([ids])).logits[0], ids, s)
                                for ids, s in rows]
    del hf, adapted
    for name, lora in (("llama_cpp_base", None), ("llama_cpp_adapter", lora_gguf)):
        longest = max(len(ids) for ids, _ in rows)
        llm = Llama(str(base_gguf), lora_path=str(lora) if lora else None, n_ctx=longest + 8, logits_all=True,
                    n_threads=args.threads, verbose=False)
        try:
            out = []
            for ids, start in rows:
                llm.reset()
                llm.eval(ids)
                out.append(trained_logprob(llm.scores[:len(ids)], ids, start))
            scores[name] = out
        finally:
            llm.close()
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    shift_hf = mean["hf_adapter"] - mean["hf_base"]
    shift_cpp = mean["llama_cpp_adapter"] - mean["llama_cpp_base"]
    result = {"ref": args.ref, "rows_file": str(args.rows), "rows": len(rows),
              "completion_tokens": sum(sum(x != -100 for x in labels) for _, labels in rows),
              "mean_logprob_per_token": mean,
              "shift_hf": shift_hf, "shift_llama_cpp": shift_cpp, "per_row": scores}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{args.ref.replace('@', '-')}.json", result)
    print(f"{args.ref} on {len(rows)} of its training rows ({result['completion_tokens']} completion tokens), mean "
          f"log-prob per token:")
    for name, value in mean.items():
        print(f"  {name:<18} {value:+.4f}")
    print(f"  adapter shift: HF + peft {shift_hf:+.4f}, llama.cpp + GGUF LoRA {shift_cpp:+.4f} "
          f"(ratio {shift_cpp / shift_hf:.3f})")
    return result


if __name__ == "__main__":
    main()
