"""How a model states its actions and sees their results: native tool calls or one fenced text block per reply.

One component per format, chosen once per attempt (`choose`): it describes the tools for the prompt, names the
tools to pass the model, renders the history in its format, parses a reply into tool calls (ActionFormatError,
shown to the model, when it holds none), renders an observation as a message and names its stop strings. The
agent asks the format and never switches on `Model.supports_tools` itself, and neither do the backends: they
render the messages they are given with their chat template, so whoever calls a model (the agent, `serve`)
renders the history in the model's format first.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

from agent_selfevolve import text_forms
from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.tools import ActionFormatError, describe_for_prompt, parse_text_action, parse_tool_call
from agent_selfevolve.models.base import Message, Model, prompt_messages

TEXT_ACTION_RULES = """You can use these tools:
{tools}

Every reply must be a short thought followed by exactly ONE fenced code block whose language is the tool name.
For bash, the block holds the command; for other tools, a JSON object of arguments. Examples:
```bash
grep -rn "def parse" src/
```
```str_replace
{{"path": "src/mod.py", "old": "return a - b", "new": "return a + b"}}
```
```submit
{{}}
```"""

TOOL_ACTION_RULES = """You can use these tools:
{tools}

Every reply must be a short thought followed by exactly ONE fenced code block whose first line is ``` and the tool's
name, and whose body is a JSON object of the tool's arguments. One action runs per reply; you see its result before
the next.
{examples}"""
"""The rules for a tool set without bash (the browser's): the examples are its own tools, since a small model
copies the example's form (with a bash example the 1.5B wrote `click (id: 13)` inside ```bash blocks). With one
example the 0.5B wrote its body as ```json {"id": "13"}, naming no tool, and acted on none of five MiniWoB
types; with a click and a fill it names the tool (```json {"action": "click", ...}, which parses) and solves
two. The 1.5B solves one fewer of the five (it wrote both examples' actions in one reply): README, BrowserGym."""

BROWSER_EXAMPLES = ("I will click the Submit button.", "I will type the name into the text box.")

TEXT_STOP = ("\nObservation:",)
"""Text mode stops where the model starts inventing the tool's answer (and acting on it), as ReAct agents do."""


class ActionFormat(Protocol):
    name: str
    native: bool
    """Whether tool schemas go to the model (and results come back as `tool` messages)."""
    stop: tuple[str, ...]

    def describe(self, specs: list[dict[str, Any]], rules: str | None) -> str:
        """What the system prompt gets appended about how to act ("" for nothing)."""
        ...

    def model_tools(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]] | None: ...

    def render_history(self, messages: list[Message]) -> list[Message]:
        """The conversation as the model is shown it (recorded token ids stripped)."""
        ...

    def parse(self, message: Message, specs: list[dict[str, Any]]) -> list[ToolCall]: ...

    def observation(self, call_id: str, text: str) -> Message: ...


class NativeToolCalls:
    """OpenAI `tool_calls`: the backend gets the schemas; results are `tool` messages answering a call id."""

    name, native, stop = "native", True, ()

    def describe(self, specs: list[dict[str, Any]], rules: str | None) -> str:
        return ""

    def model_tools(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return specs

    def render_history(self, messages: list[Message]) -> list[Message]:
        return prompt_messages(messages)

    def parse(self, message: Message, specs: list[dict[str, Any]]) -> list[ToolCall]:
        raw_calls = message.get("tool_calls") or []
        if not raw_calls:
            raise ActionFormatError("Your reply did not call a tool. Call exactly one tool (for example "
                                    "`bash`), or `submit` when you are done.")
        return [parse_tool_call(c, specs) for c in raw_calls]

    def observation(self, call_id: str, text: str) -> Message:
        return {"role": "tool", "tool_call_id": call_id, "content": text}


class FencedText:
    """A thought and one fenced block named after the tool (`envs.tools`); results are user 'Observation:' turns,
    for models without tool calling. Earlier native calls in a replayed history are shown as blocks too."""

    name, native, stop = "text", False, TEXT_STOP

    def describe(self, specs: list[dict[str, Any]], rules: str | None) -> str:
        if rules is not None:
            return rules
        if _has_bash(specs):
            return TEXT_ACTION_RULES.format(tools=describe_for_prompt(specs))
        return TOOL_ACTION_RULES.format(tools=describe_for_prompt(specs), examples=example_actions(specs))

    def model_tools(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    def render_history(self, messages: list[Message]) -> list[Message]:
        """Tool results become user 'Observation:' turns, tool calls fenced blocks, content plain text, and every
        message just {"role", "content"} (a role the chat template may not know, such as 'developer', a user)."""
        out: list[Message] = []
        for m in prompt_messages(messages):
            role, content = m.get("role", "user"), m.get("content") or ""
            if not isinstance(content, str):  # OpenAI content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if role == "tool":
                out.append({"role": "user", "content": f"Observation:\n{content}"})
            elif role == "assistant" and m.get("tool_calls"):
                blocks = "\n".join(_text_action(c) for c in m["tool_calls"])
                out.append({"role": "assistant", "content": f"{content}\n{blocks}".strip()})
            else:
                out.append({"role": role if role in ("system", "user", "assistant") else "user", "content": content})
        return out

    def parse(self, message: Message, specs: list[dict[str, Any]]) -> list[ToolCall]:
        """The format's block (`envs.tools`), else the other unambiguous forms of one call (`text_forms`). Where
        bash is a tool, block bodies are code and are read only as written."""
        text = message.get("content") or ""
        bash = _has_bash(specs)
        if not bash and (call := text_forms.key_value_call(text, specs)) is not None:
            return [call]
        try:
            return [parse_text_action(text, specs)]
        except ActionFormatError as exc:
            call = text_forms.lenient_call(text, specs)
            if call is not None:
                return [call]
            if bash or not str(exc).startswith("No action found"):
                raise
            raise ActionFormatError(text_forms.no_action_hint(specs, example_action(specs))) from None

    def observation(self, call_id: str, text: str) -> Message:
        return {"role": "user", "content": f"Observation:\n{text}{text_forms.only_first_note(call_id)}"}


def _has_bash(specs: list[dict[str, Any]]) -> bool:
    return any(s["function"]["name"] == "bash" for s in specs)


def example_actions(specs: list[dict[str, Any]]) -> str:
    """'Examples:' with a click and a fill, each after a thought, for a browser's tools (both named so); else
    'Example:' with `example_action`'s one block."""
    fns = {s["function"]["name"]: s["function"] for s in specs}
    if "click" not in fns or "fill" not in fns:
        return f"Example:\n{example_action(specs)}"
    click = example_action([{"function": fns["click"]}])
    fill = text_forms.expected_block("fill", fns["fill"], {"text": "Alice"})
    return f"Examples:\n{BROWSER_EXAMPLES[0]}\n{click}\n{BROWSER_EXAMPLES[1]}\n{fill}"


def example_action(specs: list[dict[str, Any]]) -> str:
    """One block of the set-up's own tools: the first whose arguments all have a value from its schema (the web
    tools' id: "e.g. e12"), else the first tool with arguments, `...` for their values."""
    fns = [s["function"] for s in specs]
    with_args = [f for f in fns if f.get("parameters", {}).get("required")]
    shown = next((f for f in with_args if all(text_forms.example_value(f["parameters"]["properties"][p]) is not None
                                              for p in f["parameters"]["required"])),
                 with_args[0] if with_args else fns[0])
    return text_forms.expected_block(shown["name"], shown)


def _text_action(call: dict[str, Any]) -> str:
    """An OpenAI tool call as the fenced block the text format would have written for it."""
    fn = call.get("function", {})
    name, args = fn.get("name", ""), fn.get("arguments") or "{}"
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except json.JSONDecodeError:
        parsed = None
    if name == "bash" and isinstance(parsed, dict) and isinstance(parsed.get("command"), str):
        body = parsed["command"]
    else:
        body = json.dumps(parsed) if parsed is not None else str(args)
    return f"```{name}\n{body}\n```"


FORMATS: dict[str, ActionFormat] = {"native": NativeToolCalls(), "text": FencedText()}


def choose(preference: Literal["auto", "native", "text"], model: Model) -> ActionFormat:
    """The set-up's format; 'auto': native tool calls when the model supports them."""
    if preference == "auto":
        preference = "native" if model.supports_tools else "text"
    return FORMATS[preference]


def of_model(model: Model) -> ActionFormat:
    """The format a model acts in when nobody chose one: what `serve` shows a served model its clients' history
    in (a text-mode model sees their tool calls and results as fenced blocks and observations)."""
    return choose("auto", model)


def of_state(native: bool) -> ActionFormat:
    """The format an attempt chose at its start (kept in state, so a resumed attempt keeps it)."""
    return FORMATS["native" if native else "text"]
