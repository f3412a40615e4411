"""In-process transformers (+ peft adapter) backend: the training stack's own forward pass as a runtime.

Slower than llama.cpp on CPU, but it runs exactly the weights being trained (no GGUF conversion), which makes
it the fallback runtime and the reference for checking that an exported adapter behaves the same.
Text action mode only (tools are described in the prompt; the caller renders the history in the text format,
`action_format.FencedText`), like the embedded small-model set-ups; this backend only applies the chat template.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage
from agent_selfevolve.models.llama_messages import to_template_messages


class TransformersModel:
    supports_tools = False

    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None, *, max_new_tokens: int = 512,
                 temperature: float = 0.0, dtype: str = "auto", threads: int | None = None, max_context: int = 8192):
        self.model_dir, self.adapter_dir = Path(model_dir), Path(adapter_dir) if adapter_dir else None
        self.max_new_tokens, self.temperature, self.max_context = max_new_tokens, temperature, max_context
        self.dtype_name, self.threads = dtype, threads
        self.name = f"hf/{self.model_dir.name}" + (f"+lora:{self.adapter_dir.name}" if self.adapter_dir else "")
        self._lock = threading.Lock()
        self._model: Any = None
        self._tok: Any = None

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError("the transformers backend needs `pip install 'agent-selfevolve[train]'`") from exc
        if self.threads:
            torch.set_num_threads(self.threads)
        dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32,
                 "float32": torch.float32}.get(self.dtype_name, torch.bfloat16 if not torch.cuda.is_available()
                                               or torch.cuda.is_bf16_supported() else torch.float16)
        self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        if self.adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter_dir))
        self._model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            start = time.monotonic()
            text = self._tok.apply_chat_template(to_template_messages(messages), tokenize=False,
                                                 add_generation_prompt=True)
            ids = self._tok(text, return_tensors="pt").input_ids.to(self._model.device)
            if ids.shape[1] >= self.max_context:
                raise ModelError(f"prompt of {ids.shape[1]} tokens exceeds the context of {self.max_context}")
            temperature = float(params.get("temperature", self.temperature))
            pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else self._tok.eos_token_id
            # an explicit mask: left to infer one, generate() masks every prompt token equal to the pad id, which
            # is the end-of-turn token whenever pad falls back to eos (the model then never sees a turn end)
            gen: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens", self.max_new_tokens)),
                                   "do_sample": temperature > 0, "pad_token_id": pad,
                                   "attention_mask": torch.ones_like(ids)}
            stop = [params["stop"]] if isinstance(params.get("stop"), str) else list(params.get("stop") or [])
            if stop:
                gen.update(stop_strings=stop, tokenizer=self._tok)
            if temperature > 0:
                gen["temperature"] = temperature
                if params.get("seed") is not None:
                    torch.manual_seed(int(params["seed"]))
            with torch.no_grad():
                out = self._model.generate(ids, **gen)
            new = out[0, ids.shape[1]:]
            content = self._tok.decode(new, skip_special_tokens=True)
            for marker in stop:  # generation stops after the stop string; the reply ends before it, as in OpenAI
                content = content.split(marker, 1)[0]
            usage = Usage(int(ids.shape[1]), int(new.shape[0]), 0.0, 1)
            return ModelReply({"role": "assistant", "content": content}, usage, time.monotonic() - start)
