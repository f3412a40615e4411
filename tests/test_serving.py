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


def _random_adapter(base_dir: Path, out: Path, seed: int | None) -> Path:
    """A peft LoRA adapter on the tiny model: random A and B (seed), or peft's own init (B = 0) when seed is None."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                      target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]))
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.save_pretrained(out)
    return out


def _merged_reference(base_dir: Path, adapter_dir: Path | None) -> Any:
    """The base with W += (alpha / r) * B @ A added by hand from the adapter's files: no peft involved."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is None:
        return model
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(adapter_dir / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    merged = 0
    with torch.no_grad():
        for key, a in lora.items():
            if ".lora_A." not in key:
                continue
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            params[target] += scale * (b @ a)
            merged += 1
    assert merged == 2 * 4  # 2 layers x 4 target modules
    return model


def test_transformers_policy_serves_the_requested_adapter(tmp_path: Path) -> None:
    """The episode loop's factory, given registry versions, runs exactly that version's weights: each adapter's
    logits and greedy reply match a reference merged by hand; a zero adapter is the base; two adapters differ."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from test_train import _tiny_model

    from agent_selfevolve.action_format import FencedText
    from agent_selfevolve.serving import transformers_policy
    from agent_selfevolve.train import AdapterRegistry, base_model_identity

    tiny = _tiny_model(tmp_path / "tiny", seed=0)
    reg = AdapterRegistry(tmp_path / "reg")
    base_id = base_model_identity(tiny)
    sources = {"a": _random_adapter(tiny, tmp_path / "a", seed=1), "b": _random_adapter(tiny, tmp_path / "b", seed=2),
               "zero": _random_adapter(tiny, tmp_path / "zero", seed=None)}
    versions = {k: reg.register("policy", path, base_model=base_id) for k, path in sources.items()}
    assert [v.version for v in versions.values()] == [1, 2, 3]

    factory = transformers_policy(tiny, max_new_tokens=12, dtype="fp32")
    messages = [{"role": "user", "content": "fix the bug in calc add"}]
    replies, logits = {}, {}
    for key, version in [("base", None), *versions.items()]:
        served = factory(version)
        replies[key] = served.chat(messages).message["content"]
        prompt = served._tok.apply_chat_template(FencedText().render_history(messages), tokenize=False,
                                                 add_generation_prompt=True)
        ids = served._tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logits[key] = served._model(input_ids=ids).logits
        ref = _merged_reference(tiny, None if version is None else sources[key])
        with torch.no_grad():
            ref_logits = ref(input_ids=ids).logits
            ref_out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                   pad_token_id=served._tok.pad_token_id)
        assert torch.allclose(logits[key], ref_logits, atol=1e-4), key
        assert replies[key] == served._tok.decode(ref_out[0, ids.shape[1]:], skip_special_tokens=True), key
        if version is not None:
            assert served.name.endswith(f"+lora:{version.version}")  # the registry's directory for that version
    assert torch.equal(logits["zero"], logits["base"]) and replies["zero"] == replies["base"]
    assert not torch.allclose(logits["a"], logits["b"], atol=1e-2)
    assert not torch.allclose(logits["a"], logits["base"], atol=1e-2)
    assert len({replies["a"], replies["b"], replies["base"]}) == 3
