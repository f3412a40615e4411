"""Does the agent keep what the model can do? The direct answer vs the agent, same model, same tasks, one run.

    python bench/agent_vs_direct.py --tasks 100:116                          # embedded 0.5B, greedy
    python bench/agent_vs_direct.py --model local:qwen2.5-coder-1.5b --tasks 0:164 --arms direct,selfcheck
    python bench/agent_vs_direct.py --source factory:funcy:easy --tasks 0:10 # task-factory tasks of one project
    python bench/agent_vs_direct.py --model fake --tasks 0:2                 # dry run of the pipeline, no LLM

Tasks (`--source`): `humaneval` (default; `--tasks` slices its 164 problems, default 100:116) or
`factory:<project or all>[:<level>]`, the tasks `selfevolve tasks make <project>` built (`all`: every project made,
the projects taking turns so a slice mixes them),
of one difficulty level (easy, medium, hard) when given, in their task files' order; `--tasks` slices that list
(default: all of it).

Arms (`--arms`, default all): `direct` asks the model once, in one chat turn. On HumanEval it is asked to complete
the function in a python block (the prompt's imports and helper functions are kept when the reply leaves them out)
and the hidden tests grade the file. On a repository task (factory) the turn shows the issue text and the source
file(s) the gold patch edits, as they are at the base commit, and asks for the complete fixed function(s) in one
```python block; the reply is merged into those files as the agent's `python` tool merges definitions
(envs/definitions.py) and the task's hidden tests grade the patch. That is oracle localization, SWE-bench's
"oracle retrieval" setting: a favourable baseline, since finding the file is part of what the agent must do.
`direct:function` (repository tasks only) shows only the function or method around each edit instead of whole
files, which can overflow a small model's context: oracle localization down to the function. The gold patch only
says where to look; nothing else of it, nor the hidden tests, reaches the prompt.
`agent:<profile>` runs one attempt of the agent with that shipped set-up (`default`, `small`, `selfcheck` =
self-correction against the visible checks) on the same task as a repository, graded by the same hidden tests.
Every arm is greedy. Per task and arm: resolved, status, tokens, seconds; paired against each direct arm run:
both / only direct / only the arm, and the exact two-sided McNemar p. Ingredients, per agent arm: its first edit
graded alone (replayed on a fresh checkout), and what revising gained and lost against it.

Resumable: each (arm, task) outcome is one line of `<out>/agent_vs_direct-<tag>.jsonl` (a rerun skips those);
the table goes to stdout and `<out>/agent_vs_direct-<tag>.json`; the agent's trajectories to
`<out>/agent_vs_direct-<tag>.sqlite` (not committed: `selfevolve viz run` or the store API reads them). The default
tag is `<model>-<lo>-<hi>` on HumanEval, `<model>-factory-<project>[-<level>]-<lo>-<hi>` on factory tasks
(`...-all` without `--tasks`).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_vs_direct_repo import (  # noqa: E402
    CODE_BLOCK,
    DIRECT_SHOWN,
    factory_tasks,
    first_edit_patch,
    run_direct_repo,
    slice_of,
)

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt  # noqa: E402
from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.models.base import Model  # noqa: E402
from agent_selfevolve.setups import SHIPPED, get_setup  # noqa: E402
from agent_selfevolve.sources import locate_tasks  # noqa: E402
from agent_selfevolve.sources.humaneval import file_diff, humaneval_tasks, load_problems, stub_source  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIRECT_PROMPT = """Complete this Python function. Reply with the complete function in one ```python code block.

```python
{prompt}```"""
_BLOCK = CODE_BLOCK


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
    spec = AttemptSpec(task.instance_id, attempt_id=f"avd:{tag}:{profile}:{task.instance_id}")
    traj = run_attempt(task, model, spec, limits=Limits(max_steps=max_steps), select_with="proxy", store=store,
                       agent=profile)
    return {"resolved": traj.resolved, "status": traj.status, "tokens": traj.total_usage.total_tokens,
            "steps": len(traj.steps), "seconds": round(time.monotonic() - start, 2)}


def is_direct(arm: str) -> bool:
    return arm == "direct" or arm.startswith("direct:")


def table(rows: list[dict[str, Any]], arms: list[str], task_ids: list[str]) -> dict[str, Any]:
    """Per arm: resolved count, tokens and seconds per task, and the pairing against each direct arm run
    (`vs_direct`, `vs_direct:function`), on the tasks both have."""
    by = {(r["arm"], r["task_id"]): r for r in rows}
    out: dict[str, Any] = {}
    for arm in arms:
        done = [by[(arm, t)] for t in task_ids if (arm, t) in by]
        entry: dict[str, Any] = {
            "tasks": len(done), "resolved": sum(r["resolved"] for r in done),
            "tokens_per_task": round(sum(r["tokens"] for r in done) / max(1, len(done))),
            "seconds_per_task": round(sum(r["seconds"] for r in done) / max(1, len(done)), 1),
            "statuses": {s: sum(r["status"] == s for r in done) for s in sorted({r["status"] for r in done})}}
        for base in (b for b in arms if b != arm and (b == "direct" or is_direct(b) and not is_direct(arm))):
            # an agent arm against every direct arm; direct:function against direct
            paired = [t for t in task_ids if (arm, t) in by and (base, t) in by]
            if not paired:
                continue
            test = mcnemar({t: by[(base, t)]["resolved"] for t in paired},
                           {t: by[(arm, t)]["resolved"] for t in paired})
            entry[f"vs_{base}"] = {"paired": len(paired), "only_direct": test["lost"], "only_arm": test["gained"],
                                   "both": sum(by[(base, t)]["resolved"] and by[(arm, t)]["resolved"]
                                               for t in paired),
                                   "mcnemar_p": round(test["p_value"], 4),
                                   "one_sided_p": round(test["p_one_sided"], 4)}
        out[arm] = entry
    return out


def ingredients(rows: list[dict[str, Any]], arms: list[str], tasks: list[Task], store: TrajectoryStore, tag: str,
                cache: Path) -> dict[str, Any]:
    """What each part of a self-correcting set-up adds, from the stored attempts: the first edit graded alone
    (the set-up's first turn, no revision; replayed on a fresh checkout, any repository task), what revising gained
    and lost against it, and how many resolved attempts went through a resampled turn (a repeat asked again at a
    temperature)."""
    done = {(r["arm"], r["task_id"]): r for r in rows}
    seen = {(r["arm"], r["task_id"]): r for r in map(json.loads, cache.read_text().splitlines())} \
        if cache.exists() else {}
    out: dict[str, Any] = {}
    for arm in (a for a in arms if a.startswith("agent:")):
        profile = arm.split(":", 1)[1]
        for task in tasks:
            key = (arm, task.instance_id)
            if key in seen or key not in done:
                continue
            traj = store.get(f"avd:{tag}:{profile}:{task.instance_id}")
            if traj is None:
                continue
            patch = first_edit_patch(task, traj, profile)
            first = patch is not None and CodingEnvironment(task, f"avd-first-{task.instance_id}").evaluate(
                {"patch": patch}).resolved
            seen[key] = {"arm": arm, "task_id": task.instance_id, "first_edit_resolved": first,
                         "edits": sum((s.get("action") or {}).get("name") in ("python", "write_file")
                                      for s in traj.steps),
                         "resampled": any((s.get("usage") or {}).get("calls", 1) > 1 for s in traj.steps)}
            with open(cache, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(seen[key]) + "\n")
        keys = [(arm, t.instance_id) for t in tasks if (arm, t.instance_id) in seen]
        if not keys:
            continue
        final = {k[1]: bool(done[k]["resolved"]) for k in keys}
        first = {k[1]: bool(seen[k]["first_edit_resolved"]) for k in keys}
        revise = mcnemar(first, final)
        entry: dict[str, Any] = {"tasks": len(keys), "first_edit_resolved": sum(first.values()),
                                 "revision_gained": revise["gained"], "revision_lost": revise["lost"],
                                 "resolved_after_a_resample": sum(final[k[1]] and seen[k]["resampled"]
                                                                  for k in keys)}
        direct = {k[1]: bool(done[("direct", k[1])]["resolved"]) for k in keys if ("direct", k[1]) in done}
        if direct:
            test = mcnemar(direct, {t: first[t] for t in direct})
            entry["first_edit_vs_direct"] = {"only_direct": test["lost"], "only_first_edit": test["gained"],
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
    parser.add_argument("--source", default="humaneval",
                        help="humaneval | factory:<project or all>[:<level>] (tasks `selfevolve tasks make` built)")
    parser.add_argument("--tasks", default=None,
                        help="slice of the source's tasks, lo:hi (HumanEval default 100:116; factory: all)")
    parser.add_argument("--arms", default=",".join(["direct", *(f"agent:{p}" for p in SHIPPED if p != "web")]))
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true",
                        help="summarize what the log holds (a run still going, or stopped), run nothing")
    args = parser.parse_args(argv)
    humaneval = args.source == "humaneval"
    if not humaneval and args.source != "factory" and not args.source.startswith("factory:"):
        parser.error(f"--source {args.source}: humaneval or factory:<project or all>[:<level>]")
    args.tasks = args.tasks or ("100:116" if humaneval else ":")
    if humaneval:
        tasks = locate_tasks(slice_of(humaneval_tasks(), args.tasks))
        problems = {f"humaneval__{p['task_id'].split('/')[1]}": p for p in load_problems()}
    else:
        tasks, problems = factory_tasks(args.source, args.tasks), {}
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in arms:
        kind, _, variant = arm.partition(":")
        if kind == "direct" and variant and (humaneval or variant not in DIRECT_SHOWN):
            parser.error(f"--arms {arm}: a direct arm is `direct`, or on factory tasks `direct:function`")
        if kind != "direct" and not (kind == "agent" and variant):
            parser.error(f"--arms {arm}: direct, direct:function or agent:<set-up> ({', '.join(SHIPPED)})")
    span = args.tasks.replace(":", "-") if args.tasks != ":" else "all"
    tag = args.tag or "-".join([args.model.replace(":", "-"), *([] if humaneval else [args.source.replace(":", "-")]),
                                span])
    log = args.out / f"agent_vs_direct-{tag}.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["arm"], r["task_id"]) for r in rows}
    models: dict[str, Model] = {}

    def model_for(arm: str) -> Model:
        from agent_selfevolve.models import make_model

        options = {} if is_direct(arm) else get_setup(arm.split(":", 1)[1]).model_options(args.model)
        key = json.dumps(options, sort_keys=True)
        if key not in models:
            models[key] = fake_model() if args.model == "fake" else make_model(args.model, **options)
        return models[key]

    args.out.mkdir(parents=True, exist_ok=True)
    store = TrajectoryStore(args.out / f"agent_vs_direct-{tag}.sqlite")
    for i, task in enumerate(tasks):
        for arm in arms:
            if (arm, task.instance_id) in done or args.report_only:
                continue
            if not is_direct(arm):
                outcome = run_agent(task, arm.split(":", 1)[1], model_for(arm), args.max_steps, tag, store)
            elif humaneval:
                outcome = run_direct(task, problems[task.instance_id], model_for(arm))
            else:
                outcome = run_direct_repo(task, model_for(arm), arm.partition(":")[2] or "files")
            row = {"arm": arm, "task_id": task.instance_id, **outcome}
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"[{i + 1}/{len(tasks)}] {task.instance_id} {arm}: resolved={row['resolved']} "
                  f"({row['status']}, {row['tokens']} tokens, {row['seconds']} s)", flush=True)
    summary = {"model": args.model, "source": args.source, "tasks": args.tasks, "max_steps": args.max_steps,
               "arms": table(rows, arms, [t.instance_id for t in tasks]),
               "ingredients": ingredients(rows, arms, tasks, store, tag,
                                          args.out / f"agent_vs_direct-{tag}.ingredients.jsonl")}
    (args.out / f"agent_vs_direct-{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for arm, entry in summary["arms"].items():
        pairs = "".join(f"; vs {key[3:]}: only {key[3:]} {vs['only_direct']}, only arm {vs['only_arm']}, "
                        f"p={vs['mcnemar_p']}" for key, vs in entry.items() if key.startswith("vs_"))
        print(f"{arm:18s} {entry['resolved']}/{entry['tasks']}  {entry['tokens_per_task']} tokens/task  "
              f"{entry['seconds_per_task']} s/task{pairs}")
    for arm, entry in summary["ingredients"].items():
        vs = entry.get("first_edit_vs_direct", {})
        print(f"{arm}: first edit alone {entry['first_edit_resolved']}/{entry['tasks']} (vs direct: only direct "
              f"{vs.get('only_direct')}, only first edit {vs.get('only_first_edit')}); revising gained "
              f"{entry['revision_gained']}, lost {entry['revision_lost']}; resolved after a resample "
              f"{entry['resolved_after_a_resample']}")
    return summary


if __name__ == "__main__":
    main()
