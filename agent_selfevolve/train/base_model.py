"""The trainable base: a GGUF (what llama.cpp serves) dequantized once into a bf16 safetensors HF directory.

Loading a GGUF through transformers dequantizes it (~40 s, ~3.7 GB for the 0.5B), so we do it once per GGUF
hash and cache the result. Two fixes are needed before `save_pretrained` works: the model keeps a GGUF
`hf_quantizer` and a `quantization_config` that make it refuse to save; both are dropped, since the weights in
memory are plain dequantized tensors. Conversion runs in a spawned process so its peak memory is given back.

`base.json` in the directory records the base's identity (id + GGUF sha256); adapters and the registry key on
that hash, so an adapter is never applied to a different base by accident.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.infra import cache_root, file_sha256
from agent_selfevolve.train._subprocess import spawn

BASE_META = "base.json"


def base_model_identity(hf_dir: str | Path) -> dict[str, str]:
    """{"id", "hash"} of an HF model directory: from base.json when we built it, else a hash of its config and
    weights (so two copies of the same model agree, and a different model never does)."""
    hf_dir = Path(hf_dir)
    meta = hf_dir / BASE_META
    if meta.exists():
        data = json.loads(meta.read_text())
        return {"id": str(data["id"]), "hash": str(data["hash"])}
    if not (hf_dir / "config.json").exists():
        raise FileNotFoundError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    h = hashlib.sha256()
    for f in sorted([hf_dir / "config.json", *hf_dir.glob("*.safetensors"), *hf_dir.glob("*.bin")]):
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    cfg = json.loads((hf_dir / "config.json").read_text())
    return {"id": str(cfg.get("_name_or_path") or cfg.get("model_type") or hf_dir.name), "hash": h.hexdigest()}


def _convert(gguf_path: str, out_dir: str, model_id: str, gguf_hash: str) -> dict[str, Any]:
    """Child-process body: dequantize, fix the quantizer leftovers, save bf16 safetensors + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{src.name} carries no chat template; training needs one")
    write_json_atomic(Path(out_dir) / BASE_META, {"id": model_id, "hash": gguf_hash, "source": str(src),
                                                   "dtype": "bfloat16"})
    return {"params": sum(p.numel() for p in model.parameters())}


def hf_base_from_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None, model_id: str | None = None,
                      in_process: bool = False) -> Path:
    """Path of the cached bf16 HF directory for this GGUF, converting it on first use (atomically)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.exists():
        raise FileNotFoundError(f"GGUF not found: {gguf_path}")
    cache = Path(cache_dir) if cache_dir else cache_root() / "hf-base"
    digest = file_sha256(gguf_path)
    model_id = model_id or gguf_path.stem
    final = cache / f"{gguf_path.stem}-{digest[:12]}"
    if (final / BASE_META).exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / "owner.pid").write_text(str(os.getpid()))
    try:
        args = {"gguf_path": str(gguf_path), "out_dir": str(tmp), "model_id": model_id, "gguf_hash": digest}
        if in_process:
            _convert(**args)
        else:
            spawn("agent_selfevolve.train.base_model:_convert", args, tmp.with_suffix(".result.json")).wait()
        (tmp / "owner.pid").unlink()
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / BASE_META).exists():  # lost a race to another converter: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.with_suffix(".result.json").unlink(missing_ok=True)
    return final
