"""Message formats for the embedded models: OpenAI messages as a chat template (the GGUF's, or a transformers
tokenizer's) takes them, and Qwen's <tool_call> replies back to OpenAI `tool_calls` (see `llama_cpp` for the two
modes). Rendering a history in the text action format is the action format's job (`action_format.FencedText`)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

from agent_selfevolve.models.base import Message

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCED_JSON = re.compile(r"^```(?:json)?\s*\n(.*?)\n?```$", re.S)


def tool_call_grammar_text(tools: list[dict[str, Any]], thought: bool = False) -> str:
    """GBNF for exactly one `<tool_call>{"name": <known tool>, "arguments": <its schema>}</tool_call>`.

    A 0.5B model asked for tool calls freely invents tool names (`ops.py`, `slugify`) or falls back to prose;
    constrained decoding makes every reply a well-formed call of a real tool, the model still picks which.
    With `thought`, one line of prose (no code) may precede the call.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    alternatives = []
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        alternatives.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                             "required": ["name", "arguments"], "additionalProperties": False})
    call = json_schema_to_gbnf(json.dumps({"oneOf": alternatives}, sort_keys=True), prop_order=["name", "arguments"])
    call = re.sub(r"^root ::=", "call ::=", call, flags=re.M)
    head = 'thought? ' if thought else ""
    rules = f'root ::= {head}"<tool_call>\\n" call "\\n</tool_call>"\n'
    if thought:
        rules += 'thought ::= [^<`\\n] [^<`\\n]* "\\n"\n'
    return rules + call


def _loads_call(text: str) -> dict[str, Any] | None:
    """A {"name": ..., "arguments": {...}} object from `text`, tolerating code fences; None if it is not one."""
    text = text.strip()
    fenced = _FENCED_JSON.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text, strict=False)  # small models put raw newlines inside strings
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return {"name": data["name"], "arguments": args if isinstance(args, dict) else {}}


def parse_qwen_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split Qwen output into (content, OpenAI tool_calls). Also accepts a bare JSON call without the tags."""
    calls: list[dict[str, Any]] = []
    for raw in _TOOL_CALL.findall(text):
        call = _loads_call(raw)
        if call is not None:
            calls.append(call)
    content = _TOOL_CALL.sub("", text).strip() if calls else text.strip()
    if not calls:
        call = _loads_call(text)
        if call is not None:
            calls, content = [call], ""
    tool_calls = [{"id": f"call_{i}", "type": "function",
                   "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                  for i, c in enumerate(calls)]
    return content, tool_calls


def assistant_message(text: str, native: bool) -> Message:
    """The reply as an assistant message; in native mode its <tool_call> blocks become OpenAI `tool_calls`."""
    if not native:
        return {"role": "assistant", "content": text}
    content, tool_calls = parse_qwen_tool_calls(text)
    message: Message = {"role": "assistant", "content": content or None}
    if tool_calls:
        stamp = int(time.time() * 1000) % 10**8
        for i, call in enumerate(tool_calls):
            call["id"] = f"call_{stamp}_{i}"
        message["tool_calls"] = tool_calls
    return message


def to_template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as a chat template takes them: content as str, tool-call arguments as objects (Qwen's template
    renders them with `tojson`), and only the keys a template reads."""
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.get("role", "user"), "content": m.get("content") or ""}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function", {})
                args = fn.get("arguments") or "{}"
                with contextlib.suppress(json.JSONDecodeError):  # keep the raw string; the template shows it
                    args = json.loads(args) if isinstance(args, str) else args
                calls.append({"id": c.get("id", ""), "type": "function",
                              "function": {"name": fn.get("name", ""), "arguments": args}})
            msg["tool_calls"] = calls
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out
