"""Does the agent keep what the model can do? The direct answer vs the agent, same model, same tasks, one run.

    python bench/agent_vs_direct.py --tasks 100:116                          # embedded 0.5B, greedy
    python bench/agent_vs_direct.py --model local:qwen2.5-coder-1.5b --tasks 0:164 --arms direct,selfcheck
    python bench/agent_vs_direct.py --model fake --tasks 0:2                 # dry run of the pipeline, no LLM

Arms (`--arms`, default all): `direct` asks the model once, in one chat turn, to complete the HumanEval function
in a python block (the prompt's imports and helper functions are kept when the reply leaves them out) and the
hidden tests grade the file; `agent:<profile>` runs one attempt of the agent with that shipped set-up
(`default`, `small`, `selfcheck` = self-correction against the visible checks) on the same task as a repository,
graded by the same hidden tests. Every arm is greedy. Per task and arm: resolved, status, tokens, seconds;
paired against `direct`: both / only direct / only the arm, and the exact two-sided McNemar p.

Resumable: each (arm, task) outcome is one line of `<out>/agent_vs_direct-<tag>.jsonl` (a rerun skips those);
the table goes to stdout and `<out>/agent_vs_direct-<tag>.json`; the agent's trajectories to
`<out>/agent_vs_direct-<tag>.sqlite` (not committed: `selfevolve viz run` or the store API reads them).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt  # noqa: E402
from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.humaneval import file_diff, humaneval_tasks, load_problems, stub_source  # noqa: E402
from agent_selfevolve.models.base import Model  # noqa: E402
from agent_selfevolve.profiles import PROFILES, get_profile  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIRECT_PROMPT = """Complete this Python function. Reply with the complete function in one ```python code block.

```python
{prompt}```"""
_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def program_from_reply(reply: str, prompt: str, entry_point: str) -> str | None:
    """The file a direct answer stands for: its first code block defining `entry_point`, plus the prompt's imports
    and helper functions that the block leaves out. None when no block defines the function."""
    code = next((b for b in _BLOCK.findall(reply) if re.search(rf"^\s*def {re.escape(entry_point)}\(", b, re.M)),
                None)
    if code is None:
        return None
    try:
        given = {n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)}
        head = ast.parse(prompt)
    except SyntaxError:
        return code
    kept = [ast.get_source_segment(prompt, n) or "" for n in head.body
            if isinstance(n, ast.Import | ast.ImportFrom)
            or (isinstance(n, ast.FunctionDef) and n.name != entry_point and n.name not in given)]
    return "\n".join([*kept, code]).strip() + "\n"


def run_direct(task: Task, problem: dict[str, Any], model: Model) -> dict[str, Any]:
    start = time.monotonic()
    reply = model.chat([{"role": "user", "content": DIRECT_PROMPT.format(prompt=problem["prompt"])}], None)
    text = reply.message.get("content") or ""
    program = program_from_reply(text, problem["prompt"], problem["entry_point"])
    resolved = False
    if program is not None:
        patch = file_diff("solution.py", stub_source(problem), program)
        resolved = CodingEnvironment(task, f"direct-{task.instance_id}").evaluate({"patch": patch}).resolved
    return {"resolved": resolved, "status": "answered" if program else "no_code_block",
            "tokens": reply.usage.total_tokens, "seconds": round(time.monotonic() - start, 2)}


def run_agent(task: Task, profile: str, model: Model, max_steps: int, tag: str,
              store: TrajectoryStore | None = None) -> dict[str, Any]:
    start = time.monotonic()
    options = get_profile(profile).attempt_options("swe")
    spec = AttemptSpec(task.instance_id, attempt_id=f"avd:{tag}:{profile}:{task.instance_id}")
    traj = run_attempt(task, model, spec, limits=Limits(max_steps=max_steps), select_with="proxy", store=store,
                       **options)
    return {"resolved": traj.resolved, "status": traj.status, "tokens": traj.total_usage.total_tokens,
            "steps": len(traj.steps), "seconds": round(time.monotonic() - start, 2)}


def table(rows: list[dict[str, Any]], arms: list[str], task_ids: list[str]) -> dict[str, Any]:
    """Per arm: resolved count, tokens and seconds per task, and the pairing against `direct`."""
    by = {(r["arm"], r["task_id"]): r for r in rows}
    out: dict[str, Any] = {}
    for arm in arms:
        done = [by[(arm, t)] for t in task_ids if (arm, t) in by]
        entry: dict[str, Any] = {
            "tasks": len(done), "resolved": sum(r["resolved"] for r in done),
            "tokens_per_task": round(sum(r["tokens"] for r in done) / max(1, len(done))),
            "seconds_per_task": round(sum(r["seconds"] for r in done) / max(1, len(done)), 1),
            "statuses": {s: sum(r["status"] == s for r in done) for s in sorted({r["status"] for r in done})}}
        paired = [t for t in task_ids if (arm, t) in by and ("direct", t) in by]
        if arm != "direct" and paired:
            test = mcnemar({t: by[("direct", t)]["resolved"] for t in paired},
                           {t: by[(arm, t)]["resolved"] for t in paired})
            entry["vs_direct"] = {"paired": len(paired), "only_direct": test["lost"], "only_arm": test["gained"],
                                  "both": sum(by[("direct", t)]["resolved"] and by[(arm, t)]["resolved"]
                                              for t in paired),
                                  "mcnemar_p": round(test["p_value"], 4)}
        out[arm] = entry
    return out


def fake_model() -> Model:
    """`--model fake`: no LLM. Answers every prompt with a function that returns None (a valid, wrong answer)."""
    from agent_selfevolve.models.fake import ScriptedFakeModel

    def respond(messages: list[dict[str, Any]]) -> str:
        first = str(messages[-1].get("content") or "")
        name = re.search(r"def (\w+)\(", first)
        if len(messages) == 1:  # the direct prompt
            return f"```python\ndef {name.group(1) if name else 'f'}(*args):\n    return None\n```"
        return "```submit\n```"

    return ScriptedFakeModel(respond, name="fake/avd", supports_tools=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local", help="local[:key] | openai:<m> | ... | fake (a dry run)")
    parser.add_argument("--tasks", default="100:116", help="slice of HumanEval's 164 problems")
    parser.add_argument("--arms", default=",".join(["direct", *(f"agent:{p}" for p in PROFILES)]))
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lo, _, hi = args.tasks.partition(":")
    tasks = humaneval_tasks()[int(lo or 0):int(hi) if hi else None]
    problems = {f"humaneval__{p['task_id'].split('/')[1]}": p for p in load_problems()}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    tag = args.tag or f"{args.model.replace(':', '-')}-{args.tasks.replace(':', '-')}"
    log = args.out / f"agent_vs_direct-{tag}.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["arm"], r["task_id"]) for r in rows}
    models: dict[str, Model] = {}

    def model_for(arm: str) -> Model:
        from agent_selfevolve.models import make_model

        options = {} if arm == "direct" else get_profile(arm.split(":", 1)[1]).model_options(args.model)
        key = json.dumps(options, sort_keys=True)
        if key not in models:
            models[key] = fake_model() if args.model == "fake" else make_model(args.model, **options)
        return models[key]

    args.out.mkdir(parents=True, exist_ok=True)
    store = TrajectoryStore(args.out / f"agent_vs_direct-{tag}.sqlite")
    for i, task in enumerate(tasks):
        for arm in arms:
            if (arm, task.instance_id) in done:
                continue
            outcome = run_direct(task, problems[task.instance_id], model_for(arm)) if arm == "direct" else \
                run_agent(task, arm.split(":", 1)[1], model_for(arm), args.max_steps, tag, store)
            row = {"arm": arm, "task_id": task.instance_id, **outcome}
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"[{i + 1}/{len(tasks)}] {task.instance_id} {arm}: resolved={row['resolved']} "
                  f"({row['status']}, {row['tokens']} tokens, {row['seconds']} s)", flush=True)
    summary = {"model": args.model, "tasks": args.tasks, "max_steps": args.max_steps,
               "arms": table(rows, arms, [t.instance_id for t in tasks])}
    (args.out / f"agent_vs_direct-{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for arm, entry in summary["arms"].items():
        vs = entry.get("vs_direct")
        pair = f"; vs direct: only direct {vs['only_direct']}, only arm {vs['only_arm']}, p={vs['mcnemar_p']}" \
            if vs else ""
        print(f"{arm:18s} {entry['resolved']}/{entry['tasks']}  {entry['tokens_per_task']} tokens/task  "
              f"{entry['seconds_per_task']} s/task{pair}")
    return summary


if __name__ == "__main__":
    main()
