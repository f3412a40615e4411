"""Tool bundles from the top-level `tools/` folder, as OpenAI tool schemas and as a plain-text action format.

Models without tool calling answer with one fenced block whose info string names the tool:
```bash
pytest -q tests/test_x.py
```
or, for tools with structured arguments, a JSON object:
```str_replace
{"path": "a.py", "old": "x = 1", "new": "x = 2"}
```
A tool whose arguments are all strings also takes them raw: the leading ones as words after the tool name, the
last as the body, so code is written as code rather than as an escaped JSON string (small models fail at that):
```write_file solution.py
def f():
    return 1
```
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.infra import data_dir

DEFAULT_TOOLS = ("bash", "view", "str_replace", "search", "find_files", "submit")


class ActionFormatError(ValueError):
    """The model's reply is not a valid action; the message tells the model how to fix it."""


def tools_dir() -> Path:
    """`$AGENT_SELFEVOLVE_TOOLS`, else the packaged `tools/` (a checkout's or the installed wheel's)."""
    env = os.environ.get("AGENT_SELFEVOLVE_TOOLS")
    return Path(env) if env else data_dir("tools")


@dataclass(frozen=True)
class ToolBundle:
    name: str
    description: str
    parameters: dict[str, Any]
    builtin: str | None
    script: Path | None

    def openai_schema(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def load_bundles(names: tuple[str, ...] | list[str] = DEFAULT_TOOLS, root: Path | None = None) -> list[ToolBundle]:
    root = root or tools_dir()
    bundles = []
    for name in names:
        manifest = root / name / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"tool bundle '{name}' has no manifest at {manifest}")
        data = json.loads(manifest.read_text())
        script = None if data.get("builtin") else root / name / "main.py"
        bundles.append(ToolBundle(data["name"], data["description"], data["parameters"], data.get("builtin"),
                                  script))
    return bundles


def _functions(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["function"]["name"]: s["function"] for s in specs}


def describe_for_prompt(specs: list[dict[str, Any]]) -> str:
    """Tool list for the text action format (models without native tool calling)."""
    lines = []
    for name, fn in _functions(specs).items():
        props = fn.get("parameters", {}).get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items()) or "no arguments"
        lines.append(f"- {name} ({args}): {fn.get('description', '')}")
        raw = _raw_params(fn)
        if len(raw) > 1:
            lines.append(f"  or raw:\n```{name} <{raw[0]}>\n<{raw[1]}>\n```")
    return "\n".join(lines)


def _raw_params(fn: dict[str, Any]) -> list[str]:
    """A tool's one or two parameters, in order, when all are required strings (the raw fenced form); else []."""
    params = fn.get("parameters", {})
    props, required = params.get("properties", {}), params.get("required", [])
    if 0 < len(props) <= 2 and list(props) == list(required) and all(v.get("type") == "string"
                                                                     for v in props.values()):
        return list(props)
    return []


_BLOCK = re.compile(r"```([A-Za-z_][\w-]*)([^\n`]*)\n(.*?)```", re.S)
_FENCED_BLOCK = re.compile(r"```([A-Za-z_][\w-]*)([^\n`]*)\n((?:.*?\n)?) {0,3}```[ \t]*(?=\n|$)", re.S)
"""A block closed by a fence on its own line (CommonMark): code whose docstring holds an indented ```pycon
example stays whole. `_BLOCK`, closed by any ```, reads the replies that close a block mid-line."""


def parse_text_action(text: str, specs: list[dict[str, Any]]) -> ToolCall:
    """Exactly one fenced block naming a known tool; its body is the bash command or a JSON object."""
    known = _functions(specs)
    blocks = []
    for pattern in (_FENCED_BLOCK, _BLOCK):
        blocks = [(lang, head.split(), body) for lang, head, body in pattern.findall(text or "")
                  if lang in known or lang in ("json", "sh")]
        if blocks:
            break
    if not blocks:
        raise ActionFormatError(_no_action_hint(text or "", known))
    if len(blocks) > 1:
        raise ActionFormatError(f"Found {len(blocks)} action blocks; send exactly one per reply.")
    lang, words, body = blocks[0]
    if lang == "sh":
        lang = "bash"
    if lang == "bash" and "bash" in known:
        return ToolCall("bash", {"command": body.strip()})
    raw = _raw_params(known[lang]) if lang in known else []
    if raw and (words or not body.lstrip().startswith("{")):
        if len(words) != len(raw) - 1:
            wanted = " ".join(f"<{p}>" for p in raw[:-1])
            raise ActionFormatError(f"`{lang}` takes {wanted} after its name and <{raw[-1]}> as the block's body, "
                                    f"e.g. ```{lang} {wanted}\n...\n```")
        return ToolCall(lang, {**dict(zip(raw, words, strict=False)), raw[-1]: body})
    body = body.strip()
    try:
        args = json.loads(body) if body else {}
    except json.JSONDecodeError as exc:
        raise ActionFormatError(f"The arguments of `{lang}` are not valid JSON ({exc.msg}); send a JSON object.") \
            from None
    if lang == "json":  # {"tool": ..., "arguments": {...}}, or flat: {"action": "click", "id": "e4"}
        key = next((k for k in ("tool", "action", "name") if isinstance(args, dict) and args.get(k) in known), None)
        if key is None:
            raise ActionFormatError(_untitled_json_hint(args, known))
        rest = args.get("arguments") if isinstance(args.get("arguments"), dict) else \
            {k: v for k, v in args.items() if k != key}
        return ToolCall(args[key], dict(rest))
    if not isinstance(args, dict):
        raise ActionFormatError(f"The arguments of `{lang}` must be a JSON object.")
    return ToolCall(lang, args)


def _untitled_json_hint(args: Any, known: dict[str, dict[str, Any]]) -> str:
    """A ```json block that names no tool: small models copy the example's body and drop its language. Show the
    same arguments under the tools that take them, which is the reply they meant."""
    named = next((args[k] for k in ("tool", "action", "name") if isinstance(args, dict) and k in args), None)
    if named is not None:
        return f"`{named}` is not a tool. Tools: {', '.join(known)}."
    fits = []
    if isinstance(args, dict):
        for name, fn in known.items():
            params = fn.get("parameters", {})
            if set(params.get("required", [])) <= set(args) <= set(params.get("properties", {})):
                fits.append(name)
    if not fits:
        return ("A ```json block does not say which tool to run. Put the tool's name as the block's language and "
                f"its arguments in the block, one of: {', '.join(known)}.")
    return (f"A ```json block does not say which tool to run: write the tool's name instead of `json`, e.g.\n"
            f"```{fits[0]}\n{json.dumps(args)}\n```" + (f"\n(tools taking these arguments: {', '.join(fits)})"
                                                        if len(fits) > 1 else ""))


def _no_action_hint(text: str, known: dict[str, dict[str, Any]]) -> str:
    """Say what was wrong with the reply: small models write ```python blocks and copy any example verbatim."""
    hint = ("No action found: a reply needs exactly one fenced code block whose language is a tool name "
            f"({', '.join(known)}).")
    other = sorted({lang for lang, _, _ in _BLOCK.findall(text)})
    if other:
        hint += f" A ```{other[0]} block is not an action."
        writers = [name for name, fn in known.items() if len(_raw_params(fn)) == 2]
        if writers:
            params = _raw_params(known[writers[0]])
            hint += (f" To save code to a file, put the file's {params[0]} after the tool name and the whole "
                     f"{params[1]} in the block: ```{writers[0]} <{params[0]}>, newline, the {params[1]}, "
                     "newline, ```.")
    return hint


def parse_tool_call(raw: dict[str, Any], specs: list[dict[str, Any]]) -> ToolCall:
    """An OpenAI `tool_calls` entry -> ToolCall; unknown names and bad JSON become ActionFormatError."""
    fn = raw.get("function", {})
    name = fn.get("name", "")
    known = _functions(specs)
    if name not in known:
        raise ActionFormatError(f"Unknown tool '{name}'. Available: {', '.join(known)}.")
    arguments = fn.get("arguments") or "{}"
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except json.JSONDecodeError as exc:
        raise ActionFormatError(f"Arguments of tool '{name}' are not valid JSON ({exc.msg}).") from None
    if not isinstance(args, dict):
        raise ActionFormatError(f"Arguments of tool '{name}' must be a JSON object.")
    return ToolCall(name, args, raw.get("id", ""))
