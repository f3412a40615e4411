"""Capture every prompt the embedded backends hand their chat template in a scripted 3-step attempt (bash, edit,
submit), for the text action format and for native tool calls, and what `selfevolve serve` hands a text-mode
model for an OpenAI conversation with tool turns.

Run from the repository root: `python3 tests/data/capture_text_turns.py` writes tests/data/text_turns.json. The
file was written by running this against the code before the text rewrite moved from the backends into the action
format (the llama.cpp and transformers backends each called `to_text_messages` then); tests/test_text_turns.py
checks that the backends' chat templates still receive byte-identical messages. Rewrite it only for an intended
change of a prompt.

The FAKE parts: a llama.cpp chat engine and a transformers tokenizer/model that record the messages they are given
and answer from a script; everything above them (agent, action format, environment, backend `chat`, server) is
the product's own code.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from capture_first_prompts import demo_task  # noqa: E402

from agent_selfevolve.models.llama_engine import Generation  # noqa: E402

OUT = Path(__file__).with_name("text_turns.json")
CASES = [("llama", "default", "text"), ("llama", "small", "text"), ("llama", "default", "native"),
         ("transformers", "default", "text")]
TEXT_SCRIPT = ["Let me look.\n```bash\ncat calc.py\n```",
               'Fix it.\n```str_replace\n{"path": "calc.py", "old": "return a - b", "new": "return a + b"}\n```',
               "Done.\n```submit\n{}\n```"]
SMALL_SCRIPT = ["I will write the file.\n```write_file calc.py\ndef add(a, b):\n    return a + b\n```",
                "Check it.\n```bash\npython -c \"from calc import add; print(add(2, 3))\"\n```",
                "It prints 5.\n```submit\n```"]
NATIVE_SCRIPT = ['<tool_call>\n{"name": "bash", "arguments": {"command": "cat calc.py"}}\n</tool_call>',
                 '<tool_call>\n{"name": "str_replace", "arguments": {"path": "calc.py", "old": "return a - b", '
                 '"new": "return a + b"}}\n</tool_call>',
                 '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>']
_CALL_ID = re.compile(r"call_\d+_(\d+)")
"""Native replies get time-stamped call ids (`llama_messages.assistant_message`): recorded without the stamp."""


class NoContext:
    """FAKE llama.cpp context: nothing to free."""

    def close(self) -> None:
        pass


class RecordingChatEngine:
    """FAKE llama.cpp chat engine: records the messages, tools and sampling its chat template would render."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.seen = list(script), []  # type: ignore[var-annotated]

    def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 sampling: dict[str, Any], grammar: Any = None) -> Generation:
        self.seen.append({"messages": messages, "tools": tools, "sampling": sampling})
        return Generation(self.script.pop(0), [1, 2, 3], 10, 0, "stop")

    def close(self) -> None:
        pass


class RecordingTokenizer:
    """FAKE tokenizer: records the messages given to its chat template; decodes to the next scripted reply."""

    pad_token_id = eos_token_id = 0

    def __init__(self, script: list[str]) -> None:
        self.script, self.seen = list(script), []  # type: ignore[var-annotated]

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        self.seen.append({"messages": messages})
        return "PROMPT"

    def __call__(self, text: str, return_tensors: str = "pt") -> Any:
        import torch

        return SimpleNamespace(input_ids=torch.tensor([[1, 2, 3]]))

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.script.pop(0)


class OneTokenModel:
    """FAKE transformers model: appends one token."""

    device = "cpu"

    def generate(self, ids: Any, **gen: Any) -> Any:
        import torch

        return torch.cat([ids, torch.tensor([[4]])], dim=1)


def llama_model(script: list[str], tool_mode: str) -> tuple[Any, RecordingChatEngine]:
    """The real `LlamaCppModel` (batched engine), its llama.cpp context replaced by a recording FAKE engine."""
    from agent_selfevolve.models.llama_cpp import LlamaCppModel

    model = LlamaCppModel(tool_mode=tool_mode, constrained=False, n_threads=1)  # type: ignore[arg-type]
    engine = RecordingChatEngine(script)
    model._llm, model._chat_engine = NoContext(), engine  # type: ignore[assignment]
    return model, engine


def transformers_model(script: list[str], root: Path) -> tuple[Any, RecordingTokenizer]:
    from agent_selfevolve.models.transformers_backend import TransformersModel

    model = TransformersModel(root / "hf-model")
    tok = RecordingTokenizer(script)
    model._tok, model._model = tok, OneTokenModel()
    return model, tok


def attempt_turns(backend: str, setup: str, mode: str, root: Path) -> list[dict[str, Any]]:
    """Every request the backend's chat template gets in one scripted attempt, call ids unstamped."""
    from agent_selfevolve.attempt import AttemptSpec, run_attempt

    script = NATIVE_SCRIPT if mode == "native" else SMALL_SCRIPT if setup == "small" else TEXT_SCRIPT
    model, recorder = llama_model(script, mode) if backend == "llama" else transformers_model(script, root)
    task = demo_task(root)
    traj = run_attempt(task, model, AttemptSpec(task.instance_id, attempt_id=f"turns-{backend}-{setup}-{mode}"),
                       agent=setup, evaluate="none")
    assert traj.status == "submitted", (traj.status, traj.exit_message)
    return json.loads(_CALL_ID.sub(r"call_X_\1", json.dumps(recorder.seen)))


SERVED_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Which files?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "bash", "arguments": '{"command": "ls"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "a.py\nb.py"},
    {"role": "assistant", "content": "Two.", "tool_calls": [{"id": "c2", "type": "function", "function": {
        "name": "str_replace", "arguments": '{"path": "a.py", "old": "x", "new": "y"}'}}]},
    {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "Edited a.py"}]},
    {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Done?"}]
BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}


def served_turn(backend: str, root: Path) -> dict[str, Any]:
    """What `selfevolve serve` hands a text-mode model's chat template for a conversation with tool turns."""
    from agent_selfevolve.serve import ModelPool, ServeApp

    model, recorder = llama_model(["Yes."], "text") if backend == "llama" else transformers_model(["Yes."], root)
    with ServeApp(ModelPool("m", lambda: model)) as app:
        body = json.dumps({"model": "m", "messages": SERVED_CONVERSATION, "tools": [BASH], "stop": ["END"]})
        req = urllib.request.Request(f"{app.base_url}/chat/completions", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["choices"][0]["message"]["content"] == "Yes."
    (seen,) = recorder.seen
    return seen


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(Path(tmp) / "cache")
        out: dict[str, Any] = {}
        for backend, setup, mode in CASES:
            name = f"{backend}-{setup}-{mode}"
            out[name] = attempt_turns(backend, setup, mode, Path(tmp) / name)
        for backend in ("llama", "transformers"):
            out[f"serve-{backend}-text"] = served_turn(backend, Path(tmp) / f"serve-{backend}")
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(out)} cases to {OUT}")


if __name__ == "__main__":
    main()
