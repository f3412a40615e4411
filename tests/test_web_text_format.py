"""The text action format on the browser's tools: the rules show a block of the set-up's own tools (never the bash
example), the forms small models write for one web action are read when they are unambiguous and refused with the
expected block otherwise, a block of several actions runs the first and says so, and the repeat guard's message
does not speak of a repository. The models here are FAKE (scripted); the environment is a FAKE page with the real
web tool specs; the agent, set-up and format are the product's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_selfevolve.action_format import FencedText
from agent_selfevolve.attempt import AttemptSpec, run_attempt
from agent_selfevolve.envs.base import Evaluation, Observation, ToolCall
from agent_selfevolve.envs.browsergym_map import BROWSERGYM_TOOLS
from agent_selfevolve.envs.tools import ActionFormatError, load_bundles
from agent_selfevolve.envs.web import WEB_TOOLS
from agent_selfevolve.models.fake import ScriptedFakeModel
from agent_selfevolve.tasks import Task

sys.path.insert(0, str(Path(__file__).parent / "data"))
from capture_first_prompts import first_turn  # noqa: E402

BASH_EXAMPLE = 'grep -rn "def parse" src/'
CODING = [b.openai_schema() for b in load_bundles(["bash", "write_file", "submit"])]


def parse(text: str, specs: list[dict[str, Any]] = BROWSERGYM_TOOLS) -> ToolCall:
    calls = FencedText().parse({"role": "assistant", "content": text}, specs)
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("reply, name, arguments", [
    ('Click it.\n```click\n{"id": "13"}\n```', "click", {"id": "13"}),  # the format's own block
    ("```click\nid: 13\n```", "click", {"id": "13"}),
    ("```fill\nid: 12\ntext: hello world\n```", "fill", {"id": "12", "text": "hello world"}),
    ("```press\nkey: Enter\n```", "press", {"key": "Enter"}),
    ("```click 36\n```", "click", {"id": "36"}),
    ("Click the button.\n```click 13```", "click", {"id": "13"}),
    ("```click(13)```", "click", {"id": "13"}),
    ("```scroll down```", "scroll", {"direction": "down"}),
    ("```go_back```", "go_back", {}),
    ("```bash\nclick (id: 13)\n```", "click", {"id": "13"}),
    ("```bash\nclick (id: '16')\n```", "click", {"id": "16"}),
    ("```bash\nclick 13\n```", "click", {"id": "13"}),
    ("```bash\nclick id:12\n```", "click", {"id": "12"}),
    ("```\nclick(13)\n```", "click", {"id": "13"}),
    ('```sh\nfill 12 "two words"\n```', "fill", {"id": "12", "text": "two words"}),
    ('```python\nfill(12, "a, b")\n```', "fill", {"id": "12", "text": "a, b"}),
    ('```bash\nfill("12", text="x")\n```', "fill", {"id": "12", "text": "x"}),
    ("```\n# the link\nclick 13\n```", "click", {"id": "13"}),
])
def test_each_common_form_of_one_web_action_parses_to_the_right_call(reply: str, name: str,
                                                                      arguments: dict[str, Any]) -> None:
    call = parse(reply)
    assert (call.name, call.arguments, call.id) == (name, arguments, "")
    ours = parse(reply.replace("13", "e13"), WEB_TOOLS)  # the bundled-app browser has the same tools and names
    assert (ours.name, ours.arguments) == (name, {k: v.replace("13", "e13") for k, v in arguments.items()})


@pytest.mark.parametrize("reply, expected", [
    ("```click 1 2```", '```click\n{"id": "13"}\n```'),  # two values for one id
    ("```bash\nfill (id: '17')\n```", '```fill\n{"id": "17", "text": "..."}\n```'),  # text missing
    ("```fill 12 hello world```", '```fill\n{"id": "13", "text": "..."}\n```'),  # unquoted words: where does text end
    ('```bash\nfill id:12, newline, "Hello, World!", newline\n```', '```fill\n{"id": "12", "text": "..."}\n```'),
    ("```bash\nclick id: 3 id: 4\n```", '```click\n{"id": "13"}\n```'),
])
def test_an_ambiguous_action_is_refused_with_the_expected_block(reply: str, expected: str) -> None:
    with pytest.raises(ActionFormatError) as exc:
        parse(reply)
    assert expected in str(exc.value)


@pytest.mark.parametrize("reply", ["I would click 13.", "```bash\nls -la\n```", "```python\nprint('click 13')\n```"])
def test_a_reply_without_a_web_action_names_the_block_of_the_web_tools(reply: str) -> None:
    with pytest.raises(ActionFormatError, match="No action found") as exc:
        parse(reply)
    assert '```click\n{"id": "13"}\n```' in str(exc.value) and "save code to a file" not in str(exc.value)


def test_calls_in_two_blocks_are_refused_as_the_format_refuses_two_blocks() -> None:
    with pytest.raises(ActionFormatError, match="Found 2 action blocks"):
        parse("```bash\nclick 1\n```\n```bash\nclick 2\n```")


def test_with_a_bash_tool_a_bash_block_stays_a_command_and_coding_errors_are_unchanged() -> None:
    """A coding set-up's blocks are code: `click 13` in a bash block is a shell command, not a web action."""
    call = parse("```bash\nsubmit 13\n```", CODING)
    assert (call.name, call.arguments) == ("bash", {"command": "submit 13"})
    with pytest.raises(ActionFormatError, match="To save code to a file"):  # the shared hint, as before
        parse("```python\nprint(1)\n```", CODING)


def test_the_web_first_prompt_in_text_mode_shows_a_web_example_and_no_bash_example(tmp_path: Path) -> None:
    """The prompt the shipped `web` set-up sends (the product's path: run_attempt with a FAKE page and model)."""
    system = first_turn("web", False, tmp_path)["messages"][0]["content"]
    assert ("Examples:\nI will click the Submit button.\n```click\n{\"id\": \"e12\"}\n```\n"
            "I will type the name into the text box.\n```fill\n{\"id\": \"e12\", \"text\": \"Alice\"}\n```") in system
    assert BASH_EXAMPLE not in system and "```bash" not in system and "```str_replace" not in system
    for specs in (WEB_TOOLS, BROWSERGYM_TOOLS):  # any tool set without bash
        rules = FencedText().describe(specs, None)
        assert BASH_EXAMPLE not in rules and "```bash" not in rules
    assert BASH_EXAMPLE in FencedText().describe(CODING, None)  # a coding tool set keeps its examples
    no_fill = [s for s in WEB_TOOLS if s["function"]["name"] != "fill"]
    assert "Example:\n```click\n{\"id\": \"e12\"}\n```" in FencedText().describe(no_fill, None)


def test_a_json_block_naming_no_tool_is_answered_with_the_block_it_meant() -> None:
    """The 0.5B writes the example's body as ```json {"id": "13"}: the error shows the same arguments under the
    tools that take them, and never guesses one of them."""
    with pytest.raises(ActionFormatError) as err:
        parse('```json\n{"id": "13"}\n```', BROWSERGYM_TOOLS)
    assert '```click\n{"id": "13"}\n```' in str(err.value) and "click, dblclick, hover" in str(err.value)
    with pytest.raises(ActionFormatError, match="Put the tool's name as the block's language"):
        parse('```json\n{"colour": "red"}\n```', BROWSERGYM_TOOLS)
    assert parse('```json\n{"action": "click", "id": "13"}\n```', BROWSERGYM_TOOLS) == ToolCall("click",
                                                                                                  {"id": "13"})


class FakePage:
    """FAKE browser environment: the real BrowserGym tool specs, a page that never changes; it records each call."""

    calls: list[ToolCall] = []

    def __init__(self, task: Task, name: str, **options: Any) -> None:
        FakePage.calls = []

    def tool_specs(self) -> list[dict[str, Any]]:
        return BROWSERGYM_TOOLS

    def reset(self) -> Observation:
        return Observation('RootWebArea "Form"\n  textbox "Name" [id=14]\n  button "Submit" [id=15]')

    def step(self, call: ToolCall) -> Observation:
        FakePage.calls.append(call)
        return Observation(f"PAGE-AFTER-{call.name}", done=call.name == "stop")

    def outcome(self) -> dict[str, Any]:
        return {}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        return Evaluation(False, 0.0, "fake")

    proxy_evaluate = evaluate

    def close(self) -> None:
        pass


def _web_attempt(replies: list[str]) -> tuple[Any, ScriptedFakeModel]:
    task = Task(instance_id="web__form-1", repo="", base_commit="", problem_statement="Enter Bob and submit.",
                start_url="http://app.test/", kind="web")
    model = ScriptedFakeModel(replies, supports_tools=False)  # FAKE model, text format
    traj = run_attempt(task, model, AttemptSpec("x", attempt_id="web-text-format"), agent="web", evaluate="none",
                       env_factory=FakePage)
    return traj, model


def test_a_block_of_several_actions_runs_the_first_and_the_next_observation_says_so() -> None:
    traj, model = _web_attempt(['```bash\nfill 14 "Bob"\nclick 15\npress Enter\n```', '```stop "done"```'])
    assert [(c.name, c.arguments) for c in FakePage.calls] == [("fill", {"id": "14", "text": "Bob"}),
                                                              ("stop", {"answer": "done"})]
    seen = model.requests[1][-1]["content"]
    assert seen.startswith("Observation:\nPAGE-AFTER-fill") and "held 3 actions; only the first ran" in seen
    assert traj.steps[0]["observation"] == "PAGE-AFTER-fill"  # the recorded observation is the page's own


def test_the_repeat_guard_on_a_web_task_does_not_speak_of_a_repository() -> None:
    traj, model = _web_attempt(["```click 15```", "```click 15```", '```stop "done"```'])
    refused = [s["format_error"] for s in traj.steps if s.get("format_error")]
    assert len(refused) == 1 and "already ran this exact `click` action" in refused[0]
    assert "repository" not in refused[0] and traj.status == "submitted"
    assert "repository" not in json.dumps(model.requests[-1])
