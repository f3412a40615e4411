"""Between our web format and BrowserGym's: the tools the model gets, their BrowserGym high-level action strings,
and BrowserGym's accessibility tree rendered like our other web observations (`- role 'name' [id=13]`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent_selfevolve.envs.base import ToolCall


def _fn(name: str, description: str, props: dict[str, Any] | None = None) -> dict[str, Any]:
    props = props or {}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}


_ID = {"id": {"type": "string", "description": "An element id from the latest observation, e.g. 13."}}
BROWSERGYM_TOOLS = [
    _fn("click", "Click the element with this id.", _ID),
    _fn("dblclick", "Double-click the element with this id.", _ID),
    _fn("hover", "Move the mouse over the element with this id.", _ID),
    _fn("fill", "Replace the text of an input or textarea.", {**_ID, "text": {"type": "string"}}),
    _fn("select_option", "Choose an option (by value or visible label) in a select box.",
        {**_ID, "value": {"type": "string"}}),
    _fn("press", "Press a key or chord, e.g. Enter, Tab, Control+a (on the focused element).",
        {"key": {"type": "string"}}),
    _fn("scroll", "Scroll the page.", {"direction": {"type": "string", "enum": ["up", "down", "left", "right"]}}),
    _fn("go_back", "Go back to the previous page."),
    _fn("send_msg_to_user", "Tell the user something (does not end the task).", {"text": {"type": "string"}}),
    _fn("stop", "Finish the task. `answer` is your final answer, or a short summary when none is asked for.",
        {"answer": {"type": "string"}}),
]
_TOOL_NAMES = [t["function"]["name"] for t in BROWSERGYM_TOOLS]
_BID = re.compile(r"^\[?(?:id=|bid=)?['\"]?([A-Za-z]*\d+)['\"]?\]?$")
_SCROLL = {"up": (0, -300), "down": (0, 300), "left": (-300, 0), "right": (300, 0)}
_LINE = re.compile(r"^(\t*)(?:\[([^\]\s]+)\] )?(.*)$")


class ActionError(Exception):
    """A tool call that maps to no BrowserGym action; the message goes to the model as an error observation."""


def to_action(call: ToolCall) -> str:
    """Our tool call as one BrowserGym high-level action string (arguments quoted as Python literals)."""
    a = call.arguments
    if call.name not in _TOOL_NAMES or call.name == "stop":
        raise ActionError(f"Unknown tool '{call.name}'. Available: {', '.join(_TOOL_NAMES)}")
    if call.name in ("click", "dblclick", "hover", "fill", "select_option"):
        raw = str(a.get("id", "")).strip()
        m = _BID.match(raw)
        if not m:
            raise ActionError(f"'{raw}' is not an element id; use an id shown as [id=...] in the latest observation.")
        bid = m.group(1)
        if call.name == "fill":
            return f"fill({bid!r}, {str(a.get('text', ''))!r})"
        if call.name == "select_option":
            return f"select_option({bid!r}, {str(a.get('value', ''))!r})"
        return f"{call.name}({bid!r})"
    if call.name == "press":
        key = str(a.get("key", "")).strip()
        if not key:
            raise ActionError("press needs a key, e.g. Enter.")
        return f"keyboard_press({key!r})"
    if call.name == "scroll":
        direction = str(a.get("direction", "down"))
        if direction not in _SCROLL:
            raise ActionError(f"scroll direction must be one of {', '.join(_SCROLL)}, not {direction!r}.")
        return "scroll({}, {})".format(*_SCROLL[direction])
    if call.name == "go_back":
        return "go_back()"
    return f"send_msg_to_user({str(a.get('text', ''))!r})"


def action_mapping() -> Callable[[str], str]:
    """BrowserGym's own parser and code generator, limited to the actions `to_action` produces."""
    from browsergym.core.action.functions import keyboard_press
    from browsergym.core.action.highlevel import HighLevelActionSet

    actions = HighLevelActionSet(subsets=["chat", "bid", "nav", "custom"], custom_actions=[keyboard_press],
                                 multiaction=False, strict=True)
    return actions.to_python_code


def render_tree(axtree: dict[str, Any], extra_properties: dict[str, Any] | None) -> str:
    """BrowserGym's flattened AXTree as our observation's tree: two-space indents, `- role 'name' [id=bid]`.

    Flattened with `with_clickable`, and BrowserGym's `skip_generic` applied here instead, so a plain `generic` is
    dropped (its children move up) but a clickable one stays: MiniWoB's links are `<span>`s, which the default
    flattening shows only as StaticText without an id. A clickable generic holding one text becomes
    `- generic 'text', clickable [id=17]`. InlineTextBox lines (which repeat their parent's text) are dropped."""
    from browsergym.utils.obs import IGNORED_AXTREE_ROLES, flatten_axtree_to_str

    flat = flatten_axtree_to_str(axtree, extra_properties=extra_properties, with_clickable=True, skip_generic=False,
                                 ignored_roles=[*IGNORED_AXTREE_ROLES, "InlineTextBox"])
    rows: list[list[Any]] = []  # [depth, bid, body]
    dropped: list[int] = []  # original depths of the dropped ancestors of the current line
    for line in flat.split("\n"):
        m = _LINE.match(line)
        if not m or not m.group(3).strip():
            continue
        depth, bid, body = len(m.group(1)), m.group(2), m.group(3)
        while dropped and dropped[-1] >= depth:
            dropped.pop()
        if body == "generic":
            dropped.append(depth)
            continue
        rows.append([depth - len(dropped), bid, body])
    out, i = [], 0
    while i < len(rows):
        depth, bid, body = rows[i]
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        after = rows[i + 2] if i + 2 < len(rows) else None
        if body == "generic, clickable" and nxt and nxt[0] == depth + 1 and nxt[2].startswith("StaticText ") \
                and (after is None or after[0] <= depth):
            body, i = f"generic {nxt[2][len('StaticText '):]}, clickable", i + 1
        out.append("  " * depth + "- " + body + (f" [id={bid}]" if bid else ""))
        i += 1
    return "\n".join(out)
