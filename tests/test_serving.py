"""Serving adapters: vLLM's runtime LoRA API (against a FAKE vLLM server), the transformers backend."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent_selfevolve.serving import VLLMAdapters


class FakeVLLM:
    """FAKE stand-in for a vLLM server's LoRA endpoints: records requests, answers 200 (or 400 for bad paths)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append((self.path, body))
                bad = "missing" in body.get("lora_path", "")
                self.send_response(400 if bad else 200)
                self.end_headers()
                self.wfile.write(b"adapter not found" if bad else b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_vllm_loads_new_name_per_version_and_unloads_old() -> None:
    fake = FakeVLLM()
    adapters = VLLMAdapters(fake.url)
    v1 = SimpleNamespace(name="policy", version=1, path=Path("/reg/policy/1"))
    v2 = SimpleNamespace(name="policy", version=2, path=Path("/reg/policy/2"))
    policy = adapters.policy("qwen-base")
    assert policy(None).model == "qwen-base"
    assert policy(v1).model == "policy-v1" and policy(v1).model == "policy-v1"
    assert policy(v2).model == "policy-v2"
    assert fake.calls == [("/v1/load_lora_adapter", {"lora_name": "policy-v1", "lora_path": "/reg/policy/1"}),
                          ("/v1/load_lora_adapter", {"lora_name": "policy-v2", "lora_path": "/reg/policy/2"}),
                          ("/v1/unload_lora_adapter", {"lora_name": "policy-v1"})]
    with pytest.raises(RuntimeError, match="adapter not found"):
        adapters.serve(SimpleNamespace(name="policy", version=3, path=Path("/missing")))
    fake.server.shutdown()


def test_transformers_backend_runs_the_trained_weights(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from test_train import FAST, MEMO, _tiny_model

    from agent_selfevolve.models.transformers_backend import TransformersModel
    from agent_selfevolve.train import TrainConfig, train_lora

    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    adapter = tmp_path / "adapter"
    train_lora(tiny, MEMO, adapter, TrainConfig(epochs=10, grad_accum=1, lr=1e-2, **FAST), spawn_process=False)
    messages = [{"role": "user", "content": MEMO[0]["messages"][0]["content"]}]
    base = TransformersModel(tiny, max_new_tokens=8, dtype="fp32").chat(messages)
    tuned_model = TransformersModel(tiny, adapter, max_new_tokens=8, dtype="fp32")
    tuned = tuned_model.chat(messages)
    assert base.usage.completion_tokens > 0 and tuned.usage.prompt_tokens == base.usage.prompt_tokens
    assert tuned.message["content"] != base.message["content"] and "+lora:adapter" in tuned_model.name
