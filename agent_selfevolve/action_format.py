"""How a model states its actions and sees their results: native tool calls or one fenced text block per reply.

One component per format, chosen once per attempt (`choose`): it describes the tools for the prompt, names the
tools to pass the model, renders the history in its format, parses a reply into tool calls (ActionFormatError,
shown to the model, when it holds none), renders an observation as a message and names its stop strings. The
agent asks the format and never switches on `Model.supports_tools` itself.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.envs.tools import ActionFormatError, describe_for_prompt, parse_text_action, parse_tool_call
from agent_selfevolve.models.base import Message, Model, prompt_messages
from agent_selfevolve.models.llama_messages import to_text_messages

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
        return TEXT_ACTION_RULES.format(tools=describe_for_prompt(specs)) if rules is None else rules

    def model_tools(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    def render_history(self, messages: list[Message]) -> list[Message]:
        return [dict(m) for m in to_text_messages(prompt_messages(messages))]

    def parse(self, message: Message, specs: list[dict[str, Any]]) -> list[ToolCall]:
        return [parse_text_action(message.get("content") or "", specs)]

    def observation(self, call_id: str, text: str) -> Message:
        return {"role": "user", "content": f"Observation:\n{text}"}


FORMATS: dict[str, ActionFormat] = {"native": NativeToolCalls(), "text": FencedText()}


def choose(preference: Literal["auto", "native", "text"], model: Model) -> ActionFormat:
    """The set-up's format; 'auto': native tool calls when the model supports them."""
    if preference == "auto":
        preference = "native" if model.supports_tools else "text"
    return FORMATS[preference]


def of_state(native: bool) -> ActionFormat:
    """The format an attempt chose at its start (kept in state, so a resumed attempt keeps it)."""
    return FORMATS["native" if native else "text"]
