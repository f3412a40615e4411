"""Named agent set-ups: the prompt, tools and first observation an agent gets, as one choice.

`default` is the general SWE agent (explore, edit, test, submit with six tools; any model). `small` is for the
embedded 0.5B/1.5B models, measured to fail the default set-up (they loop on one bash command, cannot escape code
inside JSON strings, and narrate several steps per reply): it shows the repo's files up front when they are small,
writes code as code (the raw `write_file` block), uses the plain-text action format, and gives one worked
example. The example is about a different function, so it teaches the format, not an answer.
`selfcheck` is self-correction for the embedded models: its first turn is kept close to asking the model
directly (a short prompt with its own three-line action rules, no tool list, no worked example, code files only in
the preview: bench/first_turn_ablation.py), the model answers with the function in a ```python block, every edit
is followed by the checks the repository offers (tests near the file, doctests, docstring examples; never the
hidden tests) with what the code gave against what was expected, the model revises on a failure, and the attempt
ends when they all pass. A reply that repeats an action from the same state (greedy decoding does, after a failed
check) is asked again at a temperature before it counts as a format error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent_selfevolve.agent import SYSTEM_PROMPT

SMALL_MODEL_PROMPT = '''You are a software engineer fixing an issue in a small git repository whose files are shown \
to you. Work in three steps, one action per reply:
1. Write the complete corrected file with `write_file`: every line of it, with the function body fully implemented.
2. Check it with one `bash` command that runs python on an example from the issue.
3. If the output is right, `submit`. If not, rewrite the file and check again.

Example. The issue: "Implement `count_vowels` in text.py so that it does what its docstring says." The file text.py:
```
def count_vowels(s: str) -> int:
    """Return how many vowels (a, e, i, o, u) are in s.
    >>> count_vowels("banana")
    3
    """
    raise NotImplementedError
```
Reply 1:
I will write the whole file with the function implemented.
```write_file text.py
def count_vowels(s: str) -> int:
    """Return how many vowels (a, e, i, o, u) are in s.
    >>> count_vowels("banana")
    3
    """
    return sum(1 for ch in s if ch in "aeiou")
```
Observation: Rewrote text.py (6 lines).
Reply 2:
Now I check it on the example from the docstring.
```bash
python -c "from text import count_vowels; print(count_vowels('banana'))"
```
Observation: 3
Reply 3:
The output is 3, as the docstring says.
```submit
```'''


SELF_CHECK_PROMPT = """You are a software engineer fixing an issue in a small git repository whose files are shown \
to you.
Reply with the complete fixed function (or class) in one ```python block. It replaces the one of the same name in \
the repository, and the repository's checks for it (tests, doctests, docstring examples) run: you see what passed \
and what failed. If a check fails, reply with the corrected function in a ```python block.
To run a shell command instead, reply with a ```bash block. When your change is done and no check is left to run, \
reply with an empty ```submit block."""


@dataclass(frozen=True)
class AgentProfile:
    name: str
    system_prompt: str
    env_options: dict[str, Any] = field(default_factory=dict)
    """CodingEnvironment options: tools, preview_chars."""
    local_model_options: dict[str, Any] = field(default_factory=dict)
    """Options for the embedded llama.cpp model: tool_mode ('native' calls or the 'text' fenced-block format),
    max_tokens (a cap, so a reply that never closes its block cannot run for minutes)."""
    agent_options: dict[str, Any] = field(default_factory=dict)
    """AgentContext fields: action_rules (text mode), repeat_retries, retry_temperature."""

    def attempt_options(self, task_kind: str) -> dict[str, Any]:
        """run_attempt keyword arguments for a task; web tasks keep the browser's own prompt and tools."""
        if task_kind != "swe":
            return {"env_options": {}, "system_prompt": None, "agent_options": {}}
        return {"env_options": dict(self.env_options), "system_prompt": self.system_prompt,
                "agent_options": dict(self.agent_options)}

    def model_options(self, model_spec: str) -> dict[str, Any]:
        return dict(self.local_model_options) if model_spec.startswith("local") else {}


PROFILES: dict[str, AgentProfile] = {
    "default": AgentProfile("default", SYSTEM_PROMPT),
    "small": AgentProfile("small", SMALL_MODEL_PROMPT, {"tools": ["write_file", "bash", "submit"],
                                                        "preview_chars": 4000},
                          local_model_options={"tool_mode": "text", "max_tokens": 768}),
    "selfcheck": AgentProfile("selfcheck", SELF_CHECK_PROMPT, {"tools": ["python", "write_file", "bash", "submit"],
                                                               "preview_chars": 4000, "preview_docs": False,
                                                               "check_on_write": True,
                                                               "submit_when_checks_pass": True},
                              local_model_options={"tool_mode": "text", "max_tokens": 768},
                              agent_options={"action_rules": "", "repeat_retries": 2}),
}


def get_profile(name: str, model_spec: str = "") -> AgentProfile:
    """A profile by name; 'auto' is `small` for the embedded local models and `default` for any other."""
    if name == "auto":
        name = "small" if model_spec.startswith("local") else "default"
    if name not in PROFILES:
        raise ValueError(f"unknown agent profile '{name}': use auto or one of {', '.join(PROFILES)}")
    return PROFILES[name]
