"""Capture what each shipped agent set-up sends a FAKE model on its first turn (messages, tools, parameters).

Run from the repository root: `python3 tests/data/capture_first_prompts.py` writes tests/data/first_prompts.json.
The file was written by running this against the code before set-ups became data (commit c50aa03: `profiles.py`
and the web branch of `run_attempt`, see `first_turn`); tests/test_setups.py checks that the set-up files still send
byte-identical first turns. Rewrite it only for an intended change of a prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from agent_selfevolve.envs.base import Evaluation, Observation, ToolCall  # noqa: E402
from agent_selfevolve.models.base import Message, ModelError, ModelReply  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

OUT = Path(__file__).with_name("first_prompts.json")
CASES = [(setup, native) for setup in ("default", "small", "selfcheck", "web") for native in (True, False)]
STRATEGY, GUIDANCE = "Read the failing code first.", "An earlier attempt edited the tests; do not."


class RecordingFakeModel:
    """FAKE model: records its first request and ends the attempt with a provider error."""

    name = "fake/recording"

    def __init__(self, supports_tools: bool) -> None:
        self.supports_tools = supports_tools
        self.first: dict[str, Any] | None = None

    def chat(self, messages: list[Message], tools: list[dict[str, Any]] | None = None, **params: Any) -> ModelReply:
        if self.first is None:
            self.first = {"messages": messages, "tools": tools, "params": params}
        raise ModelError("recorded")


class FakePage:
    """A FAKE browser environment: the real web tools, a fixed first page."""

    def __init__(self, task: Task, name: str, **options: Any) -> None:
        from agent_selfevolve.envs.web import WEB_TOOLS

        self.tools = WEB_TOOLS

    def tool_specs(self) -> list[dict[str, Any]]:
        return self.tools

    def reset(self) -> Observation:
        return Observation('URL: http://app.test/\nRootWebArea "Shop"\n  button "Buy" [id=e3]')

    def step(self, call: ToolCall) -> Observation:
        return Observation("")

    def outcome(self) -> dict[str, Any]:
        return {}

    def evaluate(self, outcome: dict[str, Any] | None = None) -> Evaluation:
        return Evaluation(False, 0.0, "fake")

    proxy_evaluate = evaluate

    def close(self) -> None:
        pass


def demo_task(root: Path) -> Task:
    """A one-file repository with a bug (the tests' demo task, at a fixed commit)."""
    repo = root / "demo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "README.md").write_text("# calc\n")
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n"
                                                  "    assert add(1, 1) == 2\n")
    env = {"GIT_AUTHOR_DATE": "2020-01-01T00:00:00", "GIT_COMMITTER_DATE": "2020-01-01T00:00:00"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=repo, check=True, env={**os.environ, **env})
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return Task(instance_id="demo__calc-1", repo="local/demo", repo_path=str(repo), base_commit=head.stdout.strip(),
                problem_statement="add() subtracts instead of adding", test_files=["tests/test_calc.py"])


def web_task() -> Task:
    return Task(instance_id="web__shop-1", repo="", base_commit="", problem_statement="Buy the cheapest item.", start_url="http://app.test/",
                kind="web")


def first_turn(setup: str, native: bool, root: Path) -> dict[str, Any]:
    """The first turn an attempt with the shipped set-up `setup` sends a FAKE model (native tool calls or not).

    At c50aa03 this read `run_attempt(task, model, spec, evaluate="none",
    **profiles.get_profile(setup).attempt_options("swe"))`, and web tasks took the web prompts in `run_attempt`."""
    from agent_selfevolve.attempt import AttemptSpec, run_attempt

    model = RecordingFakeModel(native)
    spec = AttemptSpec("x", attempt_id=f"capture-{setup}-{int(native)}", strategy=STRATEGY, guidance=GUIDANCE)
    if setup == "web":
        run_attempt(web_task(), model, spec, agent=setup, evaluate="none", env_factory=FakePage)
    else:
        run_attempt(demo_task(root), model, spec, agent=setup, evaluate="none")
    assert model.first is not None
    return model.first


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AGENT_SELFEVOLVE_CACHE"] = str(Path(tmp) / "cache")
        out = {}
        for setup, native in CASES:
            out[f"{setup}-{'native' if native else 'text'}"] = first_turn(setup, native, Path(tmp) / f"{setup}{native}")
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(out)} first turns to {OUT}")


if __name__ == "__main__":
    main()
