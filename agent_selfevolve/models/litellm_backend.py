"""Any provider through litellm. Imported lazily, with its network and .env look-ups switched off first."""

from __future__ import annotations

import os
import time
from typing import Any

from agent_selfevolve.models.base import Message, ModelError, ModelReply, Usage, with_retries
from agent_selfevolve.models.openai_compat import classify, message_from_openai


def import_litellm() -> Any:
    # Without these, import stalls ~8 s fetching a cost map from the internet and reads a local .env.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    import litellm

    litellm.telemetry = False
    return litellm


class LiteLLMModel:
    def __init__(self, model: str, api_base: str | None = None, api_key: str | None = None,
                 supports_tools: bool = True, timeout_s: float = 600, retries: int = 4, **params: Any):
        self.litellm = import_litellm()
        self.model, self.api_base, self.api_key = model, api_base, api_key
        self.supports_tools, self.timeout_s, self.retries, self.params = supports_tools, timeout_s, retries, params
        self.name = f"litellm/{model}"

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        kwargs = {**self.params, **params, "timeout": self.timeout_s, "num_retries": 0}
        if "seed" in kwargs and not self._takes_seed():
            del kwargs["seed"]  # a search's per-attempt seed; a provider without one samples freshly anyway
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if tools and self.supports_tools:
            kwargs["tools"] = tools

        def call() -> Any:
            try:
                return self.litellm.completion(model=self.model, messages=messages, **kwargs)
            except Exception as exc:
                raise classify(exc) from exc

        start = time.monotonic()
        resp = with_retries(call, attempts=self.retries)
        try:
            cost = float(self.litellm.completion_cost(completion_response=resp) or 0.0)
        except Exception:  # unknown models have no price: cost stays 0
            cost = 0.0
        u = resp.usage
        usage = Usage(getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0, cost, 1)
        if not resp.choices:
            raise ModelError("litellm returned no choices")
        return ModelReply(message_from_openai(resp.choices[0].message), usage, time.monotonic() - start)

    def _takes_seed(self) -> bool:
        """Whether the provider accepts `seed` (Anthropic's API rejects it); unknown providers are sent it."""
        try:
            supported = self.litellm.get_supported_openai_params(model=self.model)
        except Exception:
            return True
        return supported is None or "seed" in supported

