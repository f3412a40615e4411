"""Does training on its own successes narrow what the policy samples when it revises?

    python bench/revision_diversity.py --store runs/evolve-proof/seed1/runs.sqlite \
        --store runs/evolve-proof/seed0/runs.sqlite --held-out-of bench/results/evolve-proof/seed0/split.json \
        --registry runs/evolve-proof/seed0/registry --ref proof-s0-sft@1 --prompts 16 --samples 4
    python bench/revision_diversity.py ... --suite factory --prompts 12     # the factory projects held out

The `selfcheck` agent revises a failed answer by sampling (T=0.8) in a fresh context: the first turn again with the
failed check after it. An adapter trained on the policy's own successes may make those samples more alike, and a
revision that keeps writing the same code runs out of steps. This asks both policies, the base and the adapter,
the same revision prompts: the first fresh revision of held-out attempts of one suite (`--suite`: HumanEval repo
tasks, or factory tasks of projects held out of training) recorded in the given stores (tasks the adapter never
trained on: `--held-out-of` is its seed's split), one prompt per task, the first store that has one winning. Each
policy samples `--samples` replies per prompt with the same seeds.

Per policy: the share of samples whose function passes the task's hidden tests (DIAGNOSTIC, nothing selects on it:
a HumanEval reply is graded as a direct answer, its function with the prompt's imports, as `agent_vs_direct.py`
grades; a factory reply goes through the agent's own `python` tool on a fresh checkout, which merges its definitions
into the file that holds them), prompts with at least one passing sample, distinct functions per prompt (docstrings
and formatting ignored), samples that give back the failed answer the revision was asked to fix (factory: also
those that give back the code the task started with, which the tool refuses to write), and the mean
log-probability per sampled token. Paired by prompt: where the adapter has fewer, equal or more distinct functions
than the base.

Resumable: the prompts chosen are kept in `<out>/<name>-prompts.json` (a rerun asks the same ones), each (policy,
prompt) is one line of `<out>/<name>.jsonl`; the summary goes to `<out>/<name>.json`. `<name>` is the ref with `-`
for `@`, and `-factory` after it for the factory suite. HumanEval prompts come in task order, factory prompts one
held-out project at a time in turn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_vs_direct import program_from_reply  # noqa: E402

from agent_selfevolve import action_format  # noqa: E402
from agent_selfevolve.envs.base import ToolCall  # noqa: E402
from agent_selfevolve.envs.coding import CodingEnvironment  # noqa: E402
from agent_selfevolve.envs.definitions import code_only  # noqa: E402
from agent_selfevolve.envs.tools import ActionFormatError  # noqa: E402
from agent_selfevolve.evolve import mcnemar  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.models.base import Message, Model, prompt_messages  # noqa: E402
from agent_selfevolve.setups import get_setup  # noqa: E402
from agent_selfevolve.sources import locate_tasks, resolve_tasks  # noqa: E402
from agent_selfevolve.sources.factory_repo import project_of  # noqa: E402
from agent_selfevolve.sources.humaneval import file_diff, humaneval_tasks, load_problems, stub_source  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.train.shown import shown_segments  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "revision-diversity"
POLICIES = ("base", "adapter")


SUITES = ("humaneval", "factory")


def _in_order(prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """HumanEval by task number; factory tasks one project at a time in turn (by id within a project), so that a
    few prompts already span the held-out projects."""
    ids = sorted(p["task_id"] for p in prompts)
    if all(t.split("__")[1].isdigit() for t in ids):
        ids.sort(key=lambda t: int(t.split("__")[1]))
    else:
        turn: dict[str, int] = {}
        rank = {}
        for t in ids:
            project = project_of(t) or t
            rank[t] = (turn.get(project, 0), project, t)
            turn[project] = turn.get(project, 0) + 1
        ids.sort(key=rank.__getitem__)
    by_id = {p["task_id"]: p for p in prompts}
    return [by_id[t] for t in ids]


def revision_prompts(stores: list[Path], held_out: set[str], limit: int,
                     suite: str = "humaneval") -> list[dict[str, Any]]:
    """The first fresh revision context of each held-out attempt of `suite`, one per task (the earlier store wins),
    with the answer it was asked to revise (the reply of the turn before it)."""
    found: dict[str, dict[str, Any]] = {}
    for path in stores:
        store = TrajectoryStore(path)
        try:
            for traj in store.attempts():
                if traj.task_id in found or traj.task_id not in held_out or not traj.task_id.startswith(f"{suite}__"):
                    continue
                segments = shown_segments(traj)
                fresh = next((k for k, seg in enumerate(segments) if seg.fresh and k > 0), None)
                if fresh is None or not segments[fresh - 1].replies:
                    continue
                seg, before = segments[fresh], segments[fresh - 1]
                found[traj.task_id] = {
                    "task_id": traj.task_id, "attempt_id": traj.attempt_id,
                    "messages": prompt_messages(seg.messages[:seg.replies[0]]),
                    "failed_reply": before.messages[before.replies[-1]].get("content") or ""}
        finally:
            store.close()
    ordered = _in_order(list(found.values()))
    return ordered[:limit]


def function_key(program: str | None) -> str:
    """The same key for programs that differ only in docstrings, comments and layout (the `python` tool's own
    test for "the same code", `envs.definitions.code_only`)."""
    if program is None:
        return "no-code"
    try:
        return hashlib.sha256(code_only(program).encode()).hexdigest()[:12]
    except SyntaxError:
        return "syntax:" + hashlib.sha256(program.strip().encode()).hexdigest()[:12]


def grade(task: Task, problem: dict[str, Any], reply: str) -> tuple[str, bool]:
    """(function key, passes the hidden tests) of a reply graded as a direct answer."""
    program = program_from_reply(reply, problem["prompt"], problem["entry_point"])
    if program is None:
        return function_key(None), False
    patch = file_diff("solution.py", stub_source(problem), program)
    resolved = CodingEnvironment(task, f"diversity-{task.instance_id}").evaluate({"patch": patch}).resolved
    return function_key(program), resolved


def python_code(reply: str, specs: list[dict[str, Any]]) -> str | None:
    """The code of the reply's `python` action, parsed as the agent parses it (None: no such action)."""
    try:
        calls = action_format.of_state(False).parse({"role": "assistant", "content": reply}, specs)
    except ActionFormatError:
        return None
    code = calls[0].arguments.get("code") if len(calls) == 1 and calls[0].name == "python" else None
    return code if isinstance(code, str) else None


def grade_in_repo(task: Task, reply: str) -> tuple[str, bool, bool]:
    """(function key, passes the hidden tests, gives back the task's original code) of a factory reply, written by
    the agent's `python` tool on a fresh checkout (the `selfcheck` set-up's environment) and graded there."""
    env = CodingEnvironment(task, f"diversity-{task.instance_id}", **get_setup("selfcheck").env_options())
    try:
        code = python_code(reply, env.tool_specs())
        if code is None:
            return function_key(None), False, False
        env.reset()
        obs = env.step(ToolCall("python", {"code": code}))
        original = bool(obs.info.get("unchanged"))
        return function_key(code), not obs.error and env.evaluate().resolved, original
    finally:
        env.close()


def sample(model: Model, messages: list[Message], n: int, temperature: float) -> list[dict[str, Any]]:
    """`n` replies, seeds 1..n, sent together so the batch engine decodes them side by side."""
    fmt = action_format.of_state(False)
    shown = fmt.render_history(messages)

    def one(seed: int) -> dict[str, Any]:
        reply = model.chat(shown, None, temperature=temperature, seed=seed, stop=list(fmt.stop))
        lps = reply.logprobs or []
        return {"seed": seed, "text": reply.message.get("content") or "", "tokens": len(lps),
                "logprob_sum": float(sum(lps))}

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(1, n + 1)))


def summarize(lines: list[dict[str, Any]], prompts: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(row["policy"], row["task_id"]): row for row in lines}
    common = [p["task_id"] for p in prompts if all((pol, p["task_id"]) in by for pol in POLICIES)]
    out: dict[str, Any] = {"prompts": len(common), "policies": {}}
    for pol in POLICIES:
        rows = [by[(pol, t)] for t in common]
        samples = [s for r in rows for s in r["samples"]]
        tokens = sum(s["tokens"] for s in samples)
        out["policies"][pol] = {
            "samples": len(samples),
            "pass_rate": sum(s["resolved"] for s in samples) / max(len(samples), 1),
            "prompts_with_a_pass": sum(any(s["resolved"] for s in r["samples"]) for r in rows),
            "distinct_per_prompt": sum(len({s["key"] for s in r["samples"]}) for r in rows) / max(len(rows), 1),
            "gave_back_failed_answer": sum(s["key"] == r["failed_key"] for r in rows for s in r["samples"]),
            **({"gave_back_original_code": sum(bool(s["original"]) for s in samples)}
               if any("original" in s for s in samples) else {}),
            "mean_logprob_per_token": (sum(s["logprob_sum"] for s in samples) / tokens) if tokens else None,
            "tokens_per_sample": tokens / max(len(samples), 1)}
    fewer = same = more = 0
    for t in common:
        d = [len({s["key"] for s in by[(pol, t)]["samples"]}) for pol in POLICIES]
        fewer, same, more = fewer + (d[1] < d[0]), same + (d[1] == d[0]), more + (d[1] > d[0])
    out["adapter_distinct_vs_base"] = {"fewer": fewer, "same": same, "more": more}
    hit = {pol: {t: any(s["resolved"] for s in by[(pol, t)]["samples"]) for t in common} for pol in POLICIES}
    out["pass_at_k_base_to_adapter"] = mcnemar(hit["base"], hit["adapter"])
    return out


Grader = Callable[[str, str], dict[str, Any]]
"""(task id, reply) -> the sample's `key`, `resolved` (and, for factory tasks, `original`)."""


def graders(suite: str, wanted: set[str]) -> tuple[Grader, Callable[[str, str], str]]:
    """How a suite's replies are graded, and the key of the failed answer a prompt asked to revise."""
    if suite == "humaneval":
        problems = {f"humaneval__{p['task_id'].split('/')[1]}": p for p in load_problems()}
        tasks = {t.instance_id: t for t in locate_tasks([t for t in humaneval_tasks() if t.instance_id in wanted])}

        def grade_direct(task_id: str, reply: str) -> dict[str, Any]:
            key, resolved = grade(tasks[task_id], problems[task_id], reply)
            return {"key": key, "resolved": resolved}

        def failed_direct(task_id: str, reply: str) -> str:
            problem = problems[task_id]
            return function_key(program_from_reply(reply, problem["prompt"], problem["entry_point"]))
        return grade_direct, failed_direct
    tasks = {t.instance_id: t for t in resolve_tasks(suite, ids=sorted(wanted))}

    def grade_tool(task_id: str, reply: str) -> dict[str, Any]:
        key, resolved, original = grade_in_repo(tasks[task_id], reply)
        return {"key": key, "resolved": resolved, "original": original}

    specs = CodingEnvironment(next(iter(tasks.values())), "diversity-specs",  # the set-up's tools, one task's as any
                              **get_setup("selfcheck").env_options()).tool_specs()

    def failed_tool(task_id: str, reply: str) -> str:
        return function_key(python_code(reply, specs))
    return grade_tool, failed_tool


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, action="append", required=True, help="run store(s) to take prompts from")
    parser.add_argument("--held-out-of", type=Path, required=True, help="the adapter's seed split.json")
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="adapter version, name@N")
    parser.add_argument("--suite", choices=SUITES, default="humaneval")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.8, help="the selfcheck set-up's revise_temperature")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    held_out = set(json.loads(args.held_out_of.read_text())[args.suite]["held_out"])
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.ref.replace("@", "-") + ("" if args.suite == "humaneval" else f"-{args.suite}")
    chosen = args.out / f"{name}-prompts.json"  # a rerun asks the same prompts
    prompts = (json.loads(chosen.read_text()) if chosen.exists()
               else revision_prompts(args.store, held_out, args.prompts, args.suite))
    write_json_atomic(chosen, prompts)
    if not prompts:
        raise SystemExit(f"no held-out {args.suite} attempt with a fresh revision in the given stores")
    grade_reply, failed_key = graders(args.suite, {p["task_id"] for p in prompts})
    for p in prompts:
        p["failed_key"] = failed_key(p["task_id"], p["failed_reply"])

    from agent_selfevolve.models.llama_cpp import LlamaCppModel
    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy
    from agent_selfevolve.train import AdapterRegistry, hf_base_from_gguf

    log = args.out / f"{name}.jsonl"
    lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    done = {(row["policy"], row["task_id"]) for row in lines}
    options = {"tool_mode": "text", "max_tokens": 768, "n_threads": args.threads, "slots": args.samples}
    for policy in POLICIES:
        todo = [p for p in prompts if (policy, p["task_id"]) not in done]
        if not todo:
            continue
        if policy == "base":
            model: Model = LlamaCppModel(args.model, **options)
        else:
            registry = AdapterRegistry(args.registry)
            model = llama_cpp_policy(args.model, registry, hf_base_from_gguf(ensure_gguf(args.model)),
                                     **options)(registry.get(args.ref))
        try:
            for k, p in enumerate(todo, 1):
                samples = sample(model, p["messages"], args.samples, args.temperature)
                for s in samples:
                    s.update(grade_reply(p["task_id"], s.pop("text")))
                row = {"policy": policy, "task_id": p["task_id"], "attempt_id": p["attempt_id"],
                       "failed_key": p["failed_key"], "samples": samples}
                lines.append(row)
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"[{policy} {k}/{len(todo)}] {p['task_id']}: {sum(s['resolved'] for s in samples)}/"
                      f"{len(samples)} pass, {len({s['key'] for s in samples})} distinct", flush=True)
        finally:
            getattr(model, "close", lambda: None)()
    result = {"ref": args.ref, "suite": args.suite, "samples_per_prompt": args.samples, "temperature": args.temperature,
              "stores": [str(s) for s in args.store], **summarize(lines, prompts)}
    write_json_atomic(args.out / f"{name}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "stores"}, indent=2))
    return result


if __name__ == "__main__":
    main()
