"""The action format as one component: each of the two formats describes tools, parses replies (ActionFormatError
for none), renders observations and history, names its stop strings; a set-up can pick one whatever the model."""

from __future__ import annotations

import json

import pytest

from agent_selfevolve.action_format import FORMATS, TEXT_STOP, FencedText, NativeToolCalls, choose
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.tools import ActionFormatError, load_bundles, parse_text_action
from agent_selfevolve.models.base import EXTRA_KEY
from agent_selfevolve.models.fake import ScriptedFakeModel, tool_call
from agent_selfevolve.setups import get_setup
from agent_selfevolve.tasks import Task

SPECS = [b.openai_schema() for b in load_bundles(["bash", "write_file", "submit"])]


def test_native_format_passes_schemas_and_answers_calls_with_tool_messages() -> None:
    fmt = NativeToolCalls()
    assert fmt.model_tools(SPECS) is SPECS and fmt.stop == () and fmt.describe(SPECS, None) == ""
    call = fmt.parse(tool_call("bash", {"command": "ls"}) | {"content": ""}, SPECS)[0]
    assert (call.name, call.arguments) == ("bash", {"command": "ls"})
    with pytest.raises(ActionFormatError, match="did not call a tool"):
        fmt.parse({"role": "assistant", "content": "```bash\nls\n```"}, SPECS)
    assert fmt.observation("c1", "out") == {"role": "tool", "tool_call_id": "c1", "content": "out"}


def test_text_format_lists_tools_parses_blocks_and_shows_observations_as_user_turns() -> None:
    fmt = FencedText()
    assert fmt.model_tools(SPECS) is None and fmt.stop == TEXT_STOP
    rules = fmt.describe(SPECS, None)
    assert rules.startswith("You can use these tools:") and "- write_file" in rules
    assert fmt.describe(SPECS, "") == "" and fmt.describe(SPECS, "MY RULES") == "MY RULES"
    call = fmt.parse({"role": "assistant", "content": "Look.\n```bash\nls -la\n```"}, SPECS)[0]
    assert (call.name, call.arguments) == ("bash", {"command": "ls -la"})
    with pytest.raises(ActionFormatError, match="No action found"):
        fmt.parse({"role": "assistant", "content": "I would run ls."}, SPECS)
    assert fmt.observation("ignored", "out") == {"role": "user", "content": "Observation:\nout"}


def test_text_format_renders_a_native_history_as_blocks_and_strips_recorded_token_ids() -> None:
    """A replayed native attempt shown to a text-format model: one format throughout, no engine-internal keys."""
    history = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
               {**tool_call("bash", {"command": "ls"}), "content": "", EXTRA_KEY: {"token_ids": [1, 2]}},
               {"role": "tool", "tool_call_id": "c", "content": "a.py"}]
    shown = FencedText().render_history(history)
    assert shown[2] == {"role": "assistant", "content": "```bash\nls\n```"}
    assert shown[3] == {"role": "user", "content": "Observation:\na.py"}
    native = NativeToolCalls().render_history(history)
    assert EXTRA_KEY not in native[2] and native[3]["role"] == "tool" and EXTRA_KEY in history[2]


def test_auto_follows_the_model_and_an_explicit_format_overrides_it() -> None:
    tools, plain = ScriptedFakeModel([]), ScriptedFakeModel([], supports_tools=False)
    assert choose("auto", tools) is FORMATS["native"] and choose("auto", plain) is FORMATS["text"]
    assert choose("text", tools) is FORMATS["text"] and choose("native", plain) is FORMATS["native"]


def test_a_setup_can_use_the_text_format_with_a_tool_calling_model(demo_task: Task) -> None:
    """FAKE model that could call tools natively; the set-up says text, so it gets no schemas, the text rules and
    the stop string, and its fenced replies act."""
    model = ScriptedFakeModel(["Look.\n```bash\nls\n```", "Done.\n```submit\n{}\n```"])
    setup = get_setup("default").with_overrides(name="text-default", action_format="text")
    traj = run_attempt(demo_task, model, AttemptSpec(demo_task.instance_id), agent=setup, evaluate="none")
    assert traj.status == "submitted", traj.exit_message
    assert all(p.get("stop") == list(TEXT_STOP) for p in model.params)
    assert "You can use these tools" in model.requests[0][0]["content"]
    assert traj.messages[3]["role"] == "user" and traj.messages[3]["content"].startswith("Observation:\n")
    assert json.dumps(traj.messages).count('"tool_calls"') == 0


def test_a_python_block_whose_docstring_holds_a_fenced_example_is_read_whole() -> None:
    """humanize's `apnumber` docstring has an indented ```pycon example: cut at its first fence, the 0.5B's answer
    did not parse. A block closes at a fence on its own line; a block closed mid-line still reads."""
    specs = [b.openai_schema() for b in load_bundles(["python", "bash", "submit"])]
    code = 'def f():\n    """Example:\n      ```pycon\n      >>> f()\n      1\n      ```\n    """\n    return 1\n'
    call = FencedText().parse({"role": "assistant", "content": f"Fixed:\n```python\n{code}```\nDone."}, specs)[0]
    assert call.arguments == {"code": code}
    same_line = FencedText().parse({"role": "assistant", "content": "```bash\nls -la```"}, specs)[0]
    assert same_line.arguments == {"command": "ls -la"}
    with pytest.raises(ActionFormatError, match="2 action blocks"):  # each closing fence still ends its block
        parse_text_action("```bash\nls\n```\nthen\n```submit\n```", specs)
