"""The other ways a model writes one tool call in the text format, read when they are unambiguous.

The text format asks for one fenced block named after the tool, holding a JSON object (`envs.tools`). Small models
write web actions in other forms, and a run that refuses all of them never acts (the embedded 1.5B solved 0/10
MiniWoB tasks, every attempt ended in format errors). Read here, each only for a tool the environment has:
- a tool-named block of `key: value` lines: ```click\\nid: 13\\n```
- the call on the block's header line, with an empty body or on one line: ```click 36\\n``` or ```click 13```
- when the environment has no bash tool, a call as the first line of any other block:
  ```bash\\nclick (id: 13)\\n```, `click 13`, `click(13)`, `click id:12`, `fill 12 "text"`.
Positional arguments fill the tool's required parameters in schema order, and only when there are exactly as many
as required parameters left; anything else is an ActionFormatError that shows the expected block. A block whose
first line is a call and whose later lines are calls too runs the first: its id (`ONLY_FIRST`) makes the format add
a note to the observation that one action per reply runs, as the format's rules say.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.tools import ActionFormatError

ONLY_FIRST = "text-first-of-"
"""Id prefix of a call taken from a block that held more: `text-first-of-3`."""

_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```|```([^\n`]+?)```", re.S)
_CALL = re.compile(r"\s*([A-Za-z_][\w-]*)(.*)$", re.S)
_KEY_VALUE = re.compile(r"\s*([A-Za-z_]\w*)\s*[:=]\s*(.*?)\s*$")
_ITEM = re.compile(r"""\s*((?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^,"'])*)\s*(?:,|$)""")
_EXAMPLE = re.compile(r"e\.g\.\s*[`'\"]?([^\s`'\",;]+?)[`'\"]?[.,;]?(?:\s|$)")


def _functions(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["function"]["name"]: s["function"] for s in specs}


def _props(fn: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A tool's parameters and its required ones, in schema order."""
    params = fn.get("parameters", {})
    props = params.get("properties", {})
    return props, [p for p in props if p in params.get("required", [])]


def example_value(prop: dict[str, Any]) -> Any:
    """A value the schema itself gives for a parameter (an enum's first, `examples`, an "e.g. X" in its
    description), else None: a made-up value would be copied by a small model."""
    if prop.get("enum"):
        return prop["enum"][0]
    if prop.get("examples"):
        return prop["examples"][0]
    m = _EXAMPLE.search(prop.get("description", ""))
    return _typed(m.group(1), prop) if m else None


def expected_block(name: str, fn: dict[str, Any], given: dict[str, Any] | None = None) -> str:
    """The block the format asks for, with the values read so far, the schema's examples, else `...`."""
    props, required = _props(fn)
    args = {p: (given or {}).get(p, example_value(props[p])) for p in required}
    return f"```{name}\n{json.dumps({k: '...' if v is None else v for k, v in args.items()})}\n```"


def _typed(value: str, prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _unquote(item: str) -> str:
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
        return item[1:-1]
    return item


def _items(rest: str, props: dict[str, Any]) -> list[tuple[str | None, str]]:
    """`(id: 13)`, `(13, "a")`, `id=13`, `13 "a b"`, `id:12` as (key or None, value) pairs."""
    if rest.startswith("(") and rest.endswith(")"):
        raw = [m.group(1).strip() for m in _ITEM.finditer(rest[1:-1]) if m.group(1).strip()]
        pairs: list[tuple[str | None, str]] = []
        for item in raw:
            kv = _KEY_VALUE.match(item)
            keyed = kv is not None and kv.group(1) in props
            pairs.append((kv.group(1), _unquote(kv.group(2))) if kv and keyed else (None, _unquote(item)))
        return pairs
    try:
        words = [w.removesuffix(",") for w in shlex.split(rest)]  # `fill 12, "a"`
    except ValueError as exc:
        raise ActionFormatError(f"Could not read the arguments `{rest}` ({exc}).") from None
    pairs, i = [], 0
    while i < len(words):
        key, sep, value = words[i].partition(":") if ":" in words[i] else words[i].partition("=")
        if sep and key in props:
            if not value and i + 1 < len(words):  # `id: 13`
                value, i = words[i + 1], i + 1
            pairs.append((key, value))
        else:
            pairs.append((None, words[i]))
        i += 1
    return pairs


def read_call(line: str, known: dict[str, dict[str, Any]]) -> ToolCall | None:
    """A line naming a known tool as a call, None when it names none; a line that names one with arguments that
    map to its parameters in no single way is an ActionFormatError showing the expected block."""
    m = _CALL.match(line)
    if not m or m.group(1) not in known or m.group(1) == "bash":
        return None
    name, rest = m.group(1), m.group(2).strip().rstrip(";").strip()
    if rest and not rest.startswith("(") and not line[m.end(1):m.end(1) + 1].isspace():
        return None  # `click.js`, `fill-in`: not a call
    fn = known[name]
    props, required = _props(fn)
    given: dict[str, Any] = {}
    positional: list[str] = []
    for key, value in _items(rest, props):
        if key is None:
            positional.append(value)
        elif key in given:
            raise ActionFormatError(f"`{line.strip()}` gives `{key}` twice. Write it as {expected_block(name, fn)}.")
        else:
            given[key] = _typed(value, props[key])
    left = [p for p in required if p not in given]
    if len(positional) != len(left):
        wants = ", ".join(required) or "no arguments"
        raise ActionFormatError(f"`{line.strip()}` is not one `{name}` action: `{name}` takes {wants}, and "
                                f"{len(positional)} value(s) without a name cannot fill {', '.join(left) or 'none'} "
                                f"in one way. Write it as {expected_block(name, fn, given)}.")
    given.update({p: _typed(v, props[p]) for p, v in zip(left, positional, strict=True)})
    return ToolCall(name, given)


def _key_values(body: str, fn: dict[str, Any]) -> dict[str, Any] | None:
    """A body of `key: value` lines naming the tool's parameters (all the required ones), else None."""
    props, required = _props(fn)
    args: dict[str, Any] = {}
    for line in body.strip().splitlines():
        kv = _KEY_VALUE.match(line)
        if not kv or kv.group(1) not in props or kv.group(1) in args:
            return None
        args[kv.group(1)] = _typed(_unquote(kv.group(2)), props[kv.group(1)])
    return args if args and all(p in args for p in required) else None


def _blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block as (header line, body); a one-line block has an empty body."""
    return [(m.group(1).strip(), m.group(2)) if m.group(3) is None else (m.group(3).strip(), "")
            for m in _FENCE.finditer(text)]


def key_value_call(text: str, specs: list[dict[str, Any]]) -> ToolCall | None:
    """The one tool-named block of `key: value` lines (read before the format's raw form, which would take
    `id: 13` as the id); None for anything else."""
    known = _functions(specs)
    named = [(h, b) for h, b in _blocks(text) if h.split(" ")[0] in known]
    if len(named) != 1 or named[0][0] not in known or named[0][0] == "bash" or not named[0][1].strip():
        return None
    args = _key_values(named[0][1], known[named[0][0]])
    return ToolCall(named[0][0], args) if args is not None else None


def _block_call(header: str, body: str, known: dict[str, dict[str, Any]]) -> ToolCall | None:
    if (m := _CALL.match(header)) and m.group(1) in known:  # the call on the header: ```click 36``` or ```click(36)
        return read_call(header, known) if not body.strip() else None
    if "bash" in known:  # a bash block is a command
        return None
    lines = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
    call = read_call(lines[0], known) if lines else None
    if call is None:
        return None
    more = sum(1 for ln in lines[1:] if (m := _CALL.match(ln)) and m.group(1) in known)
    return ToolCall(call.name, call.arguments, f"{ONLY_FIRST}{more + 1}") if more else call


def lenient_call(text: str, specs: list[dict[str, Any]]) -> ToolCall | None:
    """The one call the reply's blocks hold in the forms above; None when they hold none; an ActionFormatError
    for a call that cannot be read, or for calls in more than one block."""
    known = _functions(specs)
    calls = [c for h, b in _blocks(text) if (c := _block_call(h, b, known)) is not None]
    if len(calls) > 1:
        raise ActionFormatError(f"Found {len(calls)} action blocks; send exactly one per reply.")
    return calls[0] if calls else None


def no_action_hint(specs: list[dict[str, Any]], example: str) -> str:
    """What a reply without an action is told, for a tool set without bash (the shared hint talks of files)."""
    return ("No action found: a reply needs exactly one fenced code block whose language is a tool name "
            f"({', '.join(_functions(specs))}) and whose body is a JSON object of its arguments, e.g.\n{example}")


def only_first_note(call_id: str) -> str:
    """The note an observation gets when the reply's block held more calls than the one that ran."""
    if not call_id.startswith(ONLY_FIRST):
        return ""
    n = call_id[len(ONLY_FIRST):]
    return (f"\n\n(Your block held {n} actions; only the first ran, since one action runs per reply. "
            "Send the next one after reading this result.)")
