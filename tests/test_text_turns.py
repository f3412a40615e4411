"""The text action format is rendered by the action format, never by a backend: every turn of a scripted 3-step
attempt (and a served conversation with tool turns) reaches the embedded backends' chat templates byte for byte as
it did when the llama.cpp and transformers backends rewrote the history themselves (tests/data/text_turns.json),
and a backend handed tool messages passes them to its template as they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import load_data_module

from agent_selfevolve import action_format
from agent_selfevolve.action_format import FencedText
from agent_selfevolve.models.base import Message
from agent_selfevolve.models.llama_messages import to_template_messages

DATA = Path(__file__).parent / "data"


capture = load_data_module("capture_text_turns")
EXPECTED = json.loads((DATA / "text_turns.json").read_text())


def _same(got: Any, want: Any) -> bool:
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize(("backend", "setup", "mode"), capture.CASES)
def test_every_turn_reaches_the_chat_template_as_recorded(backend: str, setup: str, mode: str, tmp_path: Path) -> None:
    """FAKE engine/tokenizer under the real backends: all three requests of the attempt, messages, tools, sampling."""
    got = capture.attempt_turns(backend, setup, mode, tmp_path)
    want = EXPECTED[f"{backend}-{setup}-{mode}"]
    assert len(got) == len(want) == 3
    for turn, (g, w) in enumerate(zip(got, want, strict=True)):
        assert _same(g, w), f"turn {turn}"


@pytest.mark.parametrize("backend", ["llama", "transformers"])
def test_serve_shows_a_text_mode_model_its_clients_tool_turns_as_recorded(backend: str, tmp_path: Path) -> None:
    got = capture.served_turn(backend, tmp_path)
    assert _same(got, EXPECTED[f"serve-{backend}-text"])
    assert [m["role"] for m in got["messages"]].count("tool") == 0 and got.get("tools") is None


def test_the_text_format_renders_each_turn_and_the_backend_passes_it_on(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendering path: the agent's action format turns the history into text once per model call, and what
    the llama.cpp chat template gets is exactly that rendering (the backend rewrites nothing)."""
    rendered: list[list[Message]] = []
    original = FencedText.render_history

    def spy(self: FencedText, messages: list[Message]) -> list[Message]:
        rendered.append(original(self, messages))
        return rendered[-1]

    monkeypatch.setattr(FencedText, "render_history", spy)
    got = capture.attempt_turns("llama", "default", "text", tmp_path)
    assert len(rendered) == len(got) == 3
    for shown, seen in zip(rendered, got, strict=True):
        assert seen["messages"] == shown and seen["tools"] is None
        assert all(set(m) == {"role", "content"} for m in shown)
    assert rendered[2][3]["content"].startswith("Observation:\n")


@pytest.mark.parametrize("backend", ["llama", "transformers"])
def test_a_backend_renders_the_template_of_what_it_is_given_without_a_text_rewrite(backend: str,
                                                                                  tmp_path: Path) -> None:
    """Handed a native history, a text-mode backend no longer turns it into text itself: its template gets the
    `tool` turn and the tool call (as a template wants them), which is why callers render the format first."""
    history = capture.SERVED_CONVERSATION[:4]
    model, recorder = capture.llama_model(["ok"], "text") if backend == "llama" else \
        capture.transformers_model(["ok"], tmp_path)
    assert not model.supports_tools and action_format.of_model(model) is action_format.FORMATS["text"]
    model.chat(history, [capture.BASH])
    (seen,) = recorder.seen
    assert seen["messages"] == to_template_messages(history)
    assert [m["role"] for m in seen["messages"]] == ["system", "user", "assistant", "tool"]
