"""Agent set-ups as data: the prompts, tools, action format, first observation, model options and limits an
agent gets, as one typed config read from a YAML file (`<name>.yaml` here, or any path).

Shipped: `default` (the general SWE agent), `small` (the embedded 0.5B/1.5B models), `selfcheck`
(self-correction for the embedded models) and `web` (the browser agent). A set-up names the task kinds it is
for; `for_task` falls back to the shipped set-up of a task's kind otherwise (a coding set-up chosen for a run
leaves its web tasks to `web`). `auto` is `selfcheck` for the embedded local models (measured the best of the
three with them: bench/agent_vs_direct.py) and `default` for any other.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from agent_selfevolve.agent import Limits

SETUPS_DIR = Path(__file__).parent
SHIPPED = ("default", "small", "selfcheck", "web")
KIND_DEFAULTS = {"swe": "default", "web": "web"}
"""The shipped set-up a task of each kind gets when the chosen one is not for its kind."""


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvironmentSetup(_Config):
    """The environment's tools and first observation (CodingEnvironment options; None: the environment's own)."""

    tools: tuple[str, ...] | None = None
    preview_chars: int | None = None
    """Show the repo's files in the first observation when they fit in this many characters (0: never)."""
    preview_docs: bool | None = None
    """Whether that preview shows documentation files besides code."""
    named_chars: int | None = None
    """When the repo is too big for that preview, show the definitions the issue names within this many characters
    (for set-ups whose `python` tool merges a function back into its file; with only `write_file`, a model shown one
    function would write it as the whole file)."""
    check_on_write: bool | None = None
    submit_when_checks_pass: bool | None = None

    def options(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_dump().items() if v is not None}


class LocalModelSetup(_Config):
    """Options for the embedded llama.cpp model: `tool_mode` ('native' calls or the 'text' fenced-block format),
    `max_tokens` (a cap, so a reply that never closes its block cannot run for minutes)."""

    tool_mode: Literal["native", "text"] | None = None
    max_tokens: int | None = None


class LimitsSetup(_Config):
    """Per-attempt limit defaults of the set-up (None: `agent.Limits`' own); an explicit `limits=` wins."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    max_wall_s: float | None = None
    max_format_errors: int | None = None

    def apply(self, base: Limits) -> Limits:
        return replace(base, **{k: v for k, v in self.model_dump().items() if v is not None})


class AgentSetup(_Config):
    name: str
    description: str = ""
    task_kinds: tuple[str, ...] = ("swe",)
    system_prompt: str
    task_template: str
    """Formatted with {problem}, {orientation} (the first observation), {strategy} and {guidance}."""
    action_format: Literal["auto", "native", "text"] = "auto"
    """'auto': native tool calls when the model supports them, else the fenced text format."""
    action_rules: str | None = None
    """Text format only: the rules appended to the system prompt (None: the format's own, listing every tool;
    "": none, when the system prompt says how to act)."""
    environment: EnvironmentSetup = Field(default_factory=EnvironmentSetup)
    local_model: LocalModelSetup = Field(default_factory=LocalModelSetup)
    repeat_retries: int = 0
    """When a reply repeats an action from the same state (a small greedy model does, after a failed check), ask
    again this many times at `retry_temperature` before counting it as a format error."""
    retry_temperature: float = 0.8
    revision_context: Literal["history", "fresh"] = "history"
    """What a revision after a failed check is asked with: the whole conversation ('history'), or the first turn
    again plus the failed check, without the earlier code ('fresh'; Reflexion-style: a 0.5B copies code in view)."""
    revise_temperature: float | None = None
    """After an edit whose visible checks failed (until one passes them), sample the reply at this temperature:
    greedy decoding gives the same logic back with the failure in view. None: the model's own parameters."""
    limits: LimitsSetup = Field(default_factory=LimitsSetup)

    def env_options(self) -> dict[str, Any]:
        return self.environment.options()

    def model_options(self, model_spec: str) -> dict[str, Any]:
        """`make_model` options: the local-model ones apply to the embedded models only."""
        if not model_spec.startswith("local"):
            return {}
        return {k: v for k, v in self.local_model.model_dump().items() if v is not None}

    def for_task(self, task_kind: str) -> AgentSetup:
        """This set-up when it is for `task_kind`, else the shipped one for that kind."""
        if task_kind in self.task_kinds:
            return self
        return get_setup(KIND_DEFAULTS.get(task_kind, "default"))

    def with_overrides(self, **fields: Any) -> AgentSetup:
        """A copy with some fields replaced (validated as in a file)."""
        return AgentSetup.model_validate({**self.model_dump(), **fields}) if fields else self


def load_setup(path: str | Path) -> AgentSetup:
    """A set-up from a YAML file."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an agent set-up is a mapping of fields")
    return AgentSetup.model_validate(data)


@cache
def _shipped(name: str) -> AgentSetup:
    return load_setup(SETUPS_DIR / f"{name}.yaml")


def get_setup(name: str, model_spec: str = "") -> AgentSetup:
    """A shipped set-up by name, or one from a .yaml path; 'auto' is `selfcheck` for the embedded local models and
    `default` for any other."""
    if name == "auto":
        name = "selfcheck" if model_spec.startswith("local") else "default"
    if name.endswith((".yaml", ".yml")):
        return load_setup(name)
    if name not in SHIPPED:
        raise ValueError(f"unknown agent set-up '{name}': use auto, one of {', '.join(SHIPPED)}, or a .yaml file")
    return _shipped(name)


def resolve_setup(agent: AgentSetup | str | None, task_kind: str) -> AgentSetup:
    """The set-up an attempt at a task of `task_kind` runs with (None: the shipped one for that kind)."""
    if agent is None:
        return get_setup(KIND_DEFAULTS.get(task_kind, "default"))
    return (get_setup(agent) if isinstance(agent, str) else agent).for_task(task_kind)
