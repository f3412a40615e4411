"""Serving an adapter version to the agent: the policy factories the episode loop calls.

- llama.cpp (embedded default): export the adapter as GGUF LoRA once (cached next to it), load in-process.
- transformers: load the peft adapter in-process (the fallback runtime).
- vLLM: load it through vLLM's runtime LoRA API under a NEW name per version (reusing a name can serve stale
  cached prefixes), unload the previous one, and address it by model name through the openai backend.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent_selfevolve.models.base import Model


def llama_cpp_policy(model_key: str, registry: Any, base_hf_dir: str | Path, **options: Any) -> Any:
    """PolicyFactory: AdapterVersion | None -> LlamaCppModel (with the adapter as GGUF LoRA)."""
    from agent_selfevolve.models.llama_cpp import LlamaCppModel

    def factory(version: Any) -> Model:
        if version is None:
            return LlamaCppModel(model_key, **options)
        gguf = Path(registry.root) / "gguf" / f"{version.name}-{version.version}.gguf"
        if not gguf.exists():
            registry.export_gguf(version.ref, base_hf_dir, gguf)
        return LlamaCppModel(model_key, lora_path=str(gguf), **options)

    return factory


def transformers_policy(base_hf_dir: str | Path, **options: Any) -> Any:
    """PolicyFactory for the in-process transformers backend."""
    from agent_selfevolve.models.transformers_backend import TransformersModel

    def factory(version: Any) -> Model:
        return TransformersModel(base_hf_dir, version.path if version is not None else None, **options)

    return factory


class VLLMAdapters:
    """Client for vLLM's runtime LoRA endpoints (server started with --enable-lora and
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""

    def __init__(self, base_url: str, api_key: str = "not-needed", timeout_s: float = 120):
        self.base_url, self.api_key, self.timeout_s = base_url.rstrip("/"), api_key, timeout_s
        self.loaded: str | None = None

    def _post(self, path: str, payload: dict[str, Any]) -> None:
        req = urllib.request.Request(f"{self.base_url}{path}", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"vLLM {path} failed ({exc.code}): {exc.read().decode(errors='replace')[:500]}") \
                from exc

    @staticmethod
    def lora_name(version: Any) -> str:
        return f"{version.name}-v{version.version}"

    def serve(self, version: Any) -> str:
        """Load `version` under its own name, unload the previous one; returns the model name to request."""
        name = self.lora_name(version)
        if name == self.loaded:
            return name
        self._post("/load_lora_adapter", {"lora_name": name, "lora_path": str(version.path)})
        if self.loaded:
            self._post("/unload_lora_adapter", {"lora_name": self.loaded})
        self.loaded = name
        return name

    def policy(self, base_model_name: str, **options: Any) -> Any:
        from agent_selfevolve.models.openai_compat import OpenAICompatModel

        def factory(version: Any) -> Model:
            name = base_model_name if version is None else self.serve(version)
            return OpenAICompatModel(name, base_url=self.base_url, api_key=self.api_key, **options)

        return factory
