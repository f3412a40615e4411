"""Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama) through the official client."""

from __future__ import annotations

import os
import time
from typing import Any

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage, with_retries

_TRANSIENT = ("RateLimitError", "APITimeoutError", "APIConnectionError", "InternalServerError",
              "ServiceUnavailableError", "Timeout")


def message_from_openai(msg: Any) -> Message:
    """Keep only the fields we replay: role, content, tool_calls."""
    out: Message = {"role": "assistant", "content": msg.content}
    if getattr(msg, "tool_calls", None):
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": c.function.arguments}}
                             for c in msg.tool_calls]
    return out


def classify(exc: Exception) -> ModelError:
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    transient = name in _TRANSIENT or (isinstance(status, int) and (status == 429 or status >= 500))
    return ModelError(f"{name}: {exc}", transient=transient)


class OpenAICompatModel:
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 supports_tools: bool = True, timeout_s: float = 600, retries: int = 4, **params: Any):
        import openai

        self.model, self.supports_tools, self.retries, self.params = model, supports_tools, retries, params
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.name = f"openai/{model}" + (f"@{self.base_url}" if self.base_url else "")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0)

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        kwargs = {**self.params, **params}
        if tools and self.supports_tools:
            kwargs["tools"] = tools

        def call() -> Any:
            try:
                return self.client.chat.completions.create(model=self.model, messages=messages, **kwargs)
            except Exception as exc:  # the SDK's error classes -> our transient/permanent split
                raise classify(exc) from exc

        start = time.monotonic()
        resp = with_retries(call, attempts=self.retries)
        if not resp.choices:
            raise ModelError("the endpoint returned no choices")
        u = resp.usage
        usage = Usage(getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0, 0.0, 1)
        return ModelReply(message_from_openai(resp.choices[0].message), usage, time.monotonic() - start)
