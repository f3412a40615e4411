"""Model backends behind one protocol; `make_model` turns a spec string into one.

Specs: `local` or `local:<key>` (embedded GGUF via llama.cpp), `openai:<model>` (any OpenAI-compatible
endpoint; pass base_url), `litellm:<provider/model>`, `fake:<script.json>` (the scripted FAKE model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent_selfevolve.models.base import Message, Model, ModelError, ModelReply, Usage

__all__ = ["Message", "Model", "ModelError", "ModelReply", "Usage", "make_model"]

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b"


def make_model(spec: str, **options: Any) -> Model:
    kind, _, rest = spec.partition(":")
    if kind == "local":
        from agent_selfevolve.models.llama_cpp import LlamaCppModel

        return LlamaCppModel(rest or DEFAULT_LOCAL_MODEL, **options)
    if kind == "openai":
        from agent_selfevolve.models.openai_compat import OpenAICompatModel

        return OpenAICompatModel(rest, **options)
    if kind == "litellm":
        from agent_selfevolve.models.litellm_backend import LiteLLMModel

        return LiteLLMModel(rest, **options)
    if kind == "fake":
        from agent_selfevolve.models.fake import fake_from_spec

        script = Path(rest)
        if not rest or not script.is_file():
            raise ValueError(f"model spec '{spec}': a FAKE model needs its script, fake:<script.json> "
                             f"({'no file given' if not rest else f'{script} is not a file'})")
        try:
            return fake_from_spec(json.loads(script.read_text()), **options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model spec '{spec}': {script} is not JSON ({exc})") from exc
    raise ValueError(f"unknown model spec '{spec}': use local[:key], openai:<model>, litellm:<model> or "
                     "fake:<script.json>")
