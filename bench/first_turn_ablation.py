"""Why does the agent's first answer lose to the direct one? Vary only the first turn, grade only the first code.

    python bench/first_turn_ablation.py --tasks 0:40          # embedded 0.5B, greedy

Every variant asks the same model (greedy) once; the first ```python block of the reply is merged into the task's
file exactly as the agent's `python` tool does (`envs/definitions.py`) and graded by the hidden tests. So a
difference between variants is a difference of the first prompt alone, with no tool, check or step budget in play:

- `direct`      one user turn: "Complete this Python function" + the function (what `agent_vs_direct` asks);
- `setup`       the shipped `selfcheck` set-up's first turn: its system prompt, the task, the repository's
                orientation and code preview, the other actions in one line and the question last;
- `no_system`   the same user turn without a system message (the chat template's default one);
- `no_preview`  the set-up's turn without the orientation and code preview (the issue text alone shows the code).

Resumable (`<out>/first_turn-<tag>.jsonl`, one line per variant and task); a table with paired McNemar against
`direct` goes to stdout and `<out>/first_turn-<tag>.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.envs.definitions import DefinitionError, merge_definitions  # noqa: E402
from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.models.base import Model  # noqa: E402
from agent_selfevolve.setups import get_setup  # noqa: E402
from agent_selfevolve.sources import locate_tasks  # noqa: E402
from agent_selfevolve.sources.humaneval import file_diff, humaneval_tasks, load_problems, stub_source  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIRECT_PROMPT = """Complete this Python function. Reply with the complete function in one ```python code block.

```python
{prompt}```"""
VARIANTS = ("direct", "setup", "no_system", "no_preview")
_PY_BLOCK = re.compile(r"```(?:python|py)\s*\n(.*?)```", re.S)


def first_turn(variant: str, task: Task, problem: dict[str, Any]) -> list[dict[str, str]]:
    """The first messages of `variant` for one task."""
    if variant == "direct":
        return [{"role": "user", "content": DIRECT_PROMPT.format(prompt=problem["prompt"])}]
    setup = get_setup("selfcheck")
    env = CodingEnvironment(task, f"first-turn-{task.instance_id}", **setup.env_options())
    try:
        orientation = env.reset().text
    finally:
        env.close()
    if variant == "no_preview":
        orientation = ""
    user = setup.task_template.format(problem=task.problem_statement, orientation=orientation, strategy="",
                                      guidance="")
    if variant == "no_system":
        return [{"role": "user", "content": user}]
    return [{"role": "system", "content": setup.system_prompt}, {"role": "user", "content": user}]


def grade_first_code(task: Task, problem: dict[str, Any], reply: str) -> tuple[bool, str]:
    """Merge the reply's first python block as the agent's `python` tool would, and run the hidden tests."""
    blocks = _PY_BLOCK.findall(reply)
    if not blocks:
        return False, "no_python_block"
    stub = stub_source(problem)
    try:
        merged = merge_definitions(blocks[0], {"solution.py": stub})
    except DefinitionError:
        return False, "not_mergeable"
    patch = file_diff("solution.py", stub, merged.text)
    return CodingEnvironment(task, f"first-turn-grade-{task.instance_id}").evaluate({"patch": patch}).resolved, "code"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local", help="local[:key] | openai:<m> | ...")
    parser.add_argument("--tasks", default="0:40", help="slice of HumanEval's 164 problems")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from agent_selfevolve.models import make_model

    lo, _, hi = args.tasks.partition(":")
    tasks = locate_tasks(humaneval_tasks()[int(lo or 0):int(hi) if hi else None])
    problems = {f"humaneval__{p['task_id'].split('/')[1]}": p for p in load_problems()}
    variants = [v for v in args.variants.split(",") if v]
    tag = args.tag or f"{args.model.replace(':', '-')}-{args.tasks.replace(':', '-')}"
    log = args.out / f"first_turn-{tag}.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    done = {(r["variant"], r["task_id"]) for r in rows}
    model: Model = make_model(args.model, **get_setup("selfcheck").model_options(args.model))
    args.out.mkdir(parents=True, exist_ok=True)
    for i, task in enumerate(tasks):
        for variant in variants:
            if (variant, task.instance_id) in done:
                continue
            problem = problems[task.instance_id]
            start = time.monotonic()
            reply = model.chat(first_turn(variant, task, problem), None)
            resolved, how = grade_first_code(task, problem, reply.message.get("content") or "")
            row = {"variant": variant, "task_id": task.instance_id, "resolved": resolved, "how": how,
                   "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens,
                   "seconds": round(time.monotonic() - start, 2)}
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"[{i + 1}/{len(tasks)}] {task.instance_id} {variant}: {resolved} ({how})", flush=True)
    ids = [t.instance_id for t in tasks]
    by = {(r["variant"], r["task_id"]): r for r in rows}
    summary: dict[str, Any] = {"model": args.model, "tasks": args.tasks, "variants": {}}
    for variant in variants:
        got = {t: by[(variant, t)]["resolved"] for t in ids if (variant, t) in by}
        entry: dict[str, Any] = {"tasks": len(got), "resolved": sum(got.values()),
                                 "prompt_tokens": round(sum(by[(variant, t)]["prompt_tokens"] for t in got)
                                                        / max(1, len(got)))}
        base = {t: by[("direct", t)]["resolved"] for t in got if ("direct", t) in by}
        if variant != "direct" and base:
            test = mcnemar(base, {t: got[t] for t in base})
            entry["vs_direct"] = {"only_direct": test["lost"], "only_variant": test["gained"],
                                  "mcnemar_p": round(test["p_value"], 4)}
        summary["variants"][variant] = entry
        vs = entry.get("vs_direct")
        print(f"{variant:10s} {entry['resolved']}/{entry['tasks']}  prompt {entry['prompt_tokens']} tokens"
              + (f"  vs direct: only direct {vs['only_direct']}, only this {vs['only_variant']}, "
                 f"p={vs['mcnemar_p']}" if vs else ""))
    (args.out / f"first_turn-{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
