"""Subprocess entry points the chaos run kills: one search of a strategy, or one evolve episode, on bundled tasks.

Both use a scripted FAKE model (it replays the task's gold patch through the bash tool; it does not think), so
what is measured is the harness, not a model. Rerunning the same command resumes the same run.

    python bench/chaos_worker.py search STRATEGY TASKS.json OUT_DIR
    python bench/chaos_worker.py evolve TASKS.json OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.models.fake import Reply, ScriptedFakeModel, bash, tool_call  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

LATENCY_S = 0.25
OPTIONS: dict[str, dict[str, Any]] = {
    "best_of_n": {"n": 4, "max_concurrency": 2},
    "se_agent": {"pool_size": 2, "generations": 2, "elites": 2, "revisions": 1, "recombinations": 1,
                 "max_concurrency": 2},
    "hgm": {"max_evals": 4, "max_concurrency": 2},
    "mcts": {"max_iterations": 3, "children": 2, "step_chunk": 2, "stop_at_success": False, "max_concurrency": 2},
}
OPERATOR_REPLY = json.dumps({"quality": 6, "diagnosis": "it read the code before editing", "strategy": "read, fix",
                             "guidance": "apply the fix, then submit", "value": 50, "explanation": "on track",
                             "failure_points": [], "temperature": 0.5})


def agent_script(task: Task) -> list[Reply]:
    """Look, apply the task's gold patch, run nothing else, submit: four steps."""
    return [bash("ls", "Look first."), bash("git apply <<'PATCH_EOF'\n" + task.patch + "PATCH_EOF\n"),
            bash("git status --short"), tool_call("submit", {})]


def fake_model(tasks: list[Task]) -> ScriptedFakeModel:
    """FAKE model for every prompt a search makes: operator prompts (no tools offered) get a JSON plan, agent
    prompts the script of the task whose problem statement they show."""
    from agent_selfevolve.search.hgm import DIAGNOSIS_SYSTEM
    from agent_selfevolve.search.operators import operator_kind

    def respond(messages: list[dict[str, Any]]) -> Reply:
        system = next((str(m.get("content")) for m in messages if m.get("role") == "system"), "")
        if operator_kind(messages) or system == DIAGNOSIS_SYSTEM:
            return OPERATOR_REPLY
        prompt = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
        task = next((t for t in tasks if t.problem_statement[:200] in prompt), tasks[0])
        script = agent_script(task)
        turn = sum(m.get("role") == "assistant" for m in messages)
        return script[min(turn, len(script) - 1)]

    return ScriptedFakeModel(respond, latency_s=LATENCY_S)


def run_search(strategy: str, tasks: list[Task], out: Path) -> None:
    from agent_selfevolve.agent import Limits
    from agent_selfevolve.search import strategies
    from agent_selfevolve.search.common import SearchContext
    from agent_selfevolve.store import TrajectoryStore

    task = tasks[0]
    store = TrajectoryStore(out / "store.sqlite")
    ctx = SearchContext(task=task, model=fake_model(tasks), store=store, limits=Limits(max_steps=6),
                        select_with="proxy")
    result = strategies()[strategy](ctx, run_id=f"chaos-{strategy}", **OPTIONS[strategy])
    write_json_atomic(out / "result.json", result.to_dict())


def run_evolve(tasks: list[Task], out: Path) -> None:
    """One episode: best-of-2 on two training tasks, LoRA (spawned process) on a tiny random model, a gate of two."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import FAST, _tiny_model

    from agent_selfevolve.evolve import EvolveConfig, EvolveContext, evolve
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.train import AdapterRegistry

    tiny = out / "tiny"
    if not (tiny / "config.json").exists():
        _tiny_model(out / "tiny.tmp", seed=0)
        (out / "tiny.tmp").rename(tiny)
    copies = [t.model_copy(update={"instance_id": f"{split}-{i}"}) for split in ("train", "gate")
              for i, t in enumerate(tasks[:2])]
    model = fake_model(tasks)
    config = EvolveConfig(episodes=1, strategy="best_of_n", strategy_options={"n": 2, "max_concurrency": 2},
                          limits={"max_steps": 6}, train={**FAST, "epochs": 1, "grad_accum": 1, "max_length": 1024})
    ctx = EvolveContext(train_tasks=copies[:2], held_out=copies[2:], store=TrajectoryStore(out / "store.sqlite"),
                        registry=AdapterRegistry(out / "registry"), base_hf_dir=tiny, policy=lambda version: model,
                        out_dir=out / "evolve", config=config)
    summary = evolve(ctx, run_id="chaos-evolve")
    write_json_atomic(out / "result.json", summary)


def main(argv: list[str]) -> None:
    if argv[0] == "search":
        tasks = [Task.model_validate(r) for r in json.loads(Path(argv[2]).read_text())]
        run_search(argv[1], tasks, Path(argv[3]))
    elif argv[0] == "evolve":
        tasks = [Task.model_validate(r) for r in json.loads(Path(argv[1]).read_text())]
        run_evolve(tasks, Path(argv[2]))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}: search or evolve")


if __name__ == "__main__":
    main(sys.argv[1:])
