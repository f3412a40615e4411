"""The web proof on BrowserGym's MiniWoB++, in resumable, session-sized chunks: sweep -> compare -> evolve.

    python bench/web_proof.py sweep   --model local --until-minutes 50 --progress /tmp/wp.json --threads 2
    python bench/web_proof.py compare --model local --budget 12000 --until-minutes 50
    python bench/web_proof.py evolve  --model local:qwen2.5-coder-1.5b --dry-run     # the split, nothing run
    python bench/web_proof.py sweep   --model local --report-only                      # the table of what is logged
    python bench/web_proof.py sweep   --model local:qwen2.5-coder-1.5b --report-only --against local   # paired

Stage 1, `sweep`: one greedy attempt (temperature 0) per (task type, seed) over `TASK_TYPES` x seeds 0-2, each
outcome (reward, resolved, steps, tokens, seconds) one row of `bench/results/web-proof/<model>/sweep.jsonl`. It
sorts the types into always / never / mixed for the model.
Stage 2, `compare`: best_of_n vs se_agent vs hgm, each with the same per-task token budget (`--budget`), on every
seed of the types the sweep found mixed (`--classes never`: those greedy never solved; `--classes
always,mixed,never`: all), one row per (strategy, task) in
`compare-b<budget>-<selection>.jsonl` (one log for every class; a table of other classes than mixed is
`...-<classes>.json`, e.g. `compare-b12000-tests-never.json`); the table pairs
strategies per task: resolved with Wilson intervals, the difference with a cluster bootstrap over task types,
McNemar's exact p. Selection: MiniWoB's page reward is BrowserGym's own verdict, so by default (`--select-with
tests`) the search chooses with the same reward that grades it: an ORACLE figure, labelled so, as in
bench/search_compare.py. `--select-with proxy` chooses without it (stopped with an answer: 1, stopped: 0.5), a held-
out figure, and so does `--select-with judge` (the model scores each attempt from the first page and its actions,
each with the element it named; its calls count against the budget).
Stage 3, `evolve`: task types shuffled with `--split-seed`, cut into train / gate / final
test types (every seed of a type in one split; by default each of the model's sweep classes always / mixed /
never is cut in proportion, `--no-stratify` to cut at random), run through `agent_selfevolve.evolve` (search on
train -> LoRA -> gate -> final); the paired result is base vs final policy on the final test types, and beside it
the trained candidate against the base when the gate did not promote it (labelled so).

Every stage resumes: rows already logged are skipped (an infrastructure error is retried under a new attempt id),
searches and attempts keep fixed ids in `<dir>/runs.sqlite` and its checkpoints. `--until-minutes` starts no new
unit after that time (the unit running finishes; evolve stops at its next event, or pauses its LoRA training with
the state saved, and resumes on the next run).
Results are written atomically; `--progress FILE` is rewritten after every unit.

Why these 45 types (of BrowserGym's 125): single-page tasks whose goal and state are in the accessibility tree and
that our actions (click, fill, select_option, press, scroll) can complete. Left out: tasks that need mouse
coordinates or dragging (drag-*, draw-*, bisect-angle, circle-center, right-angle, grid-coordinate, find-midpoint,
click-pie, daily-calendar, use-slider*, use-colorwheel*, resize-textarea, highlight-text*), whose state is only
visual (SVG/canvas/colour: ascending-numbers, count-shape, count-sides, identify-shape, visual-addition,
click-shape, click-color, click-shades, number-checkboxes, tic-tac-toe, hot-cold, text-transform), that need
timing or text selection (stock-market, copy-paste-2, text-editor, click-scroll-list), and near-duplicates
(`-transfer`; the `-nodelay` variant is kept where one exists, since animation delay only costs steps). Every
kept type was checked to reset with its goal and element ids in the observation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from strategy_runs import check_strategies, compare_log, coverage, fill_attempt_tokens, model_key  # noqa: E402
from strategy_runs import compare as run_strategies  # noqa: E402
from web_proof_stats import (  # noqa: E402
    GREEDY,
    INFRA,
    Deadline,
    append_row,
    compare_table,
    greedy_rows,
    held_out_table,
    latest,
    plot_compare,
    print_compare,
    read_rows,
    sweep_summary,
    type_classes,
    wilson,
    write_progress,
)

from agent_selfevolve.agent import Limits  # noqa: E402
from agent_selfevolve.attempt import AttemptSpec, run_attempt  # noqa: E402
from agent_selfevolve.fileio import write_json_atomic  # noqa: E402
from agent_selfevolve.models.base import Model  # noqa: E402
from agent_selfevolve.store import TrajectoryStore  # noqa: E402
from agent_selfevolve.tasks import Task  # noqa: E402
from agent_selfevolve.trajectory import Trajectory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "web-proof"
TASK_TYPES: tuple[str, ...] = (
    "click-test", "click-test-2", "click-button", "click-button-sequence", "click-link", "click-dialog",
    "click-dialog-2", "click-checkboxes", "click-checkboxes-soft", "click-option", "click-tab", "click-tab-2-easy",
    "click-collapsible-nodelay", "click-collapsible-2-nodelay", "click-menu", "click-widget", "focus-text",
    "focus-text-2", "enter-text", "enter-text-2", "enter-text-dynamic", "enter-password", "enter-date", "enter-time",
    "login-user", "login-user-popup", "choose-list", "choose-date-easy", "use-autocomplete-nodelay", "use-spinner",
    "find-word", "read-table", "simple-arithmetic", "simple-algebra", "odd-or-even", "guess-number", "navigate-tree",
    "search-engine", "social-media", "email-inbox", "phone-book", "form-sequence", "copy-paste", "sign-agreement",
    "unicode-test")
SEEDS = (0, 1, 2)
STRATEGIES = ("best_of_n", "se_agent", "hgm")
CLASSES = ("always", "mixed", "never")
"""What the sweep calls a type by its greedy outcomes over the seeds."""
RUN_PREFIX = "web-proof"
"""Search run ids: `<prefix>:<strategy>:<task>:b<budget>:<selection>` (strategy_runs.run_id_of)."""
SWEEP_RUN = "web-proof:sweep"
MAX_TRIES = 3
"""Attempts per task when the sandbox or harness breaks (a crash is retried under a new attempt id, then left)."""
PROFILE = "small"
"""The embedded models' set-up: its text action format is the model options; a web task runs the `web` set-up."""


def type_of_id(task_id: str) -> str:
    """browsergym.miniwob.<type>.<seed> -> <type>."""
    return task_id.split(".")[2]


def task_type(task: Task) -> str:
    return type_of_id(task.instance_id)


def tasks_for(types: list[str], seeds: list[int]) -> list[Task]:
    from agent_selfevolve.browsergym_tasks import browsergym_miniwob_tasks

    return browsergym_miniwob_tasks(types, seeds=seeds)


# -- stage 1 -------------------------------------------------------------------------------------------------------
def sweep_row(task: Task, traj: Trajectory, model: str, max_steps: int) -> dict[str, Any]:
    usage = traj.total_usage
    spec = (task.model_extra or {})["browsergym"]
    return {"task_id": task.instance_id, "type": task_type(task), "seed": spec["seed"], "model": model,
            "attempt_id": traj.attempt_id, "status": traj.status, "resolved": traj.resolved, "reward": traj.reward,
            "steps": len(traj.steps), "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens, "tokens": usage.total_tokens,
            "seconds": round(traj.elapsed_s, 2), "max_steps": max_steps,
            "error": traj.exit_message[:300] if traj.status in INFRA else ""}


def sweep(tasks: list[Task], model: Model, out: Path, *, max_steps: int = 6, deadline: Deadline | None = None,
          progress: Path | None = None, agent: str = PROFILE,
          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One greedy attempt per task not yet in `out/sweep.jsonl`; returns every row of the log."""
    path, deadline = out / "sweep.jsonl", deadline or Deadline(None)
    rows = read_rows(path)
    store = TrajectoryStore(out / "runs.sqlite")
    seconds: list[float] = []
    todo = {t.instance_id for t in pending_sweep(tasks, rows)}
    for i, task in enumerate(tasks):
        if task.instance_id not in todo:
            continue
        mine = [r for r in rows if r["task_id"] == task.instance_id]
        if deadline.expired():
            write_progress(progress, "sweep", _done(rows, tasks), len(tasks), deadline.elapsed(), seconds, None,
                           "until-minutes reached")
            log(f"stopped: --until-minutes reached; {len(tasks) - _done(rows, tasks)} attempts left")
            break
        retry = f":retry{len(mine)}" if mine else ""  # an errored attempt is stored: a retry needs its own id
        spec = AttemptSpec(task.instance_id, attempt_id=f"{SWEEP_RUN}:{task.instance_id}{retry}", run_id=SWEEP_RUN,
                           operator="eval", model_params={"temperature": 0.0})
        traj = run_attempt(task, model, spec, limits=Limits(max_steps=max_steps), store=store, agent=agent,
                           select_with="tests")
        row = sweep_row(task, traj, model.name, max_steps)
        append_row(path, row)
        rows.append(row)
        seconds.append(row["seconds"])
        write_progress(progress, "sweep", _done(rows, tasks), len(tasks), deadline.elapsed(), seconds, row)
        log(f"[{i + 1}/{len(tasks)}] {task.instance_id}: reward {row['reward']} ({row['status']}, {row['steps']} "
            f"steps, {row['tokens']} tokens, {row['seconds']} s)")
    return rows


def pending_sweep(tasks: list[Task], rows: list[dict[str, Any]]) -> list[Task]:
    """Tasks with no logged verdict: never run, or crashed fewer than MAX_TRIES times."""
    out = []
    for task in tasks:
        mine = [r for r in rows if r["task_id"] == task.instance_id]
        if not mine or (mine[-1]["status"] in INFRA and len(mine) < MAX_TRIES):
            out.append(task)
    return out


def _done(rows: list[dict[str, Any]], tasks: list[Task]) -> int:
    last = latest(rows, lambda r: r["task_id"])
    return sum(1 for t in tasks if t.instance_id in last and last[t.instance_id]["status"] not in INFRA)


def sweep_report(rows: list[dict[str, Any]], types: list[str], seeds: list[int], total: int) -> dict[str, Any]:
    classes = type_classes(rows, seeds)
    summary = sweep_summary(rows)
    left = total - summary["graded"]
    return {"summary": summary, "classes": {t: classes.get(t, "not run") for t in types},
            "mixed": [t for t in types if classes.get(t) == "mixed"], "attempts_planned": total,
            "hours_left_at_this_rate": round(left * (summary["seconds_per_attempt"] or 0) / 3600, 2)}


def paired_sweeps(rows: list[dict[str, Any]], other: list[dict[str, Any]], other_model: str) -> dict[str, Any]:
    """This sweep against another model's on the tasks both graded (infrastructure errors left out): each
    one's resolved count and McNemar's exact test (gained: solved here, not there)."""
    from agent_selfevolve.evolve import mcnemar

    mine, theirs = ({k: r["resolved"] for k, r in latest(rs, lambda r: r["task_id"]).items()
                     if r["status"] not in INFRA} for rs in (rows, other))
    keys = sorted(set(mine) & set(theirs))
    return {"model": other_model, "tasks": len(keys), "resolved": sum(mine[k] for k in keys),
            "other_resolved": sum(theirs[k] for k in keys),
            "mcnemar": mcnemar({k: theirs[k] for k in keys}, {k: mine[k] for k in keys})}


def print_sweep(rows: list[dict[str, Any]], report: dict[str, Any], seeds: list[int]) -> None:
    last = latest(rows, lambda r: r["task_id"])
    print(f"{'type':28s} " + " ".join(f"s{s:<5d}" for s in seeds) + "  class")
    for name, cls in report["classes"].items():
        cells = []
        for s in seeds:
            r = last.get(f"browsergym.miniwob.{name}.{s}")
            cells.append("  .   " if r is None else "ERR   " if r["status"] in INFRA else
                         f"{'OK' if r['resolved'] else '--'}{r['steps']:>2d}s ")
        print(f"{name:28s} " + " ".join(cells) + f"  {cls}")
    s = report["summary"]
    print(f"\nresolved {s['resolved']}/{s['graded']} (95% CI {s['resolved_ci95']}), errors {s['errors']}; per attempt "
          f"{s['seconds_per_attempt']} s, {s['tokens_per_attempt']} tokens, {s['steps_per_attempt']} steps; "
          f"mixed types: {len(report['mixed'])}; {report['hours_left_at_this_rate']} h left at this rate")
    if vs := report.get("against"):
        m = vs["mcnemar"]
        print(f"against {vs['model']} on the {vs['tasks']} tasks both graded: {vs['resolved']} vs "
              f"{vs['other_resolved']}, +{m['gained']} -{m['lost']}, McNemar exact p = {m['p_value']:.3g}")


# -- stage 2 -------------------------------------------------------------------------------------------------------
def swept_seeds(sweep_rows: list[dict[str, Any]], fallback: list[int]) -> list[int]:
    """The seeds a type's class is judged over: every seed the sweep ran, whatever seeds a later stage runs (a
    compare on seed 0 of the never-solved types must not call a type 'never' for failing seed 0 alone)."""
    return sorted({int(r["seed"]) for r in sweep_rows}) or fallback


def compare_types(sweep_rows: list[dict[str, Any]], types: list[str], seeds: list[int],
                  classes: Collection[str] = ("mixed",)) -> list[str]:
    """The types to compare on: by default those the greedy sweep found neither always nor never right over its
    seeds; `classes` picks others (`never`: can sampling find what greedy never did?). A type still incomplete in
    the sweep is not chosen."""
    found = type_classes(sweep_rows, swept_seeds(sweep_rows, seeds))
    return [t for t in types if found.get(t) in classes]


def table_name(budget: int, select_with: str, classes: Collection[str]) -> str:
    """A compare table's file stem. The log is shared by every class run at one budget and selection; each class set
    gets its own table, so a run on the always or never types cannot overwrite the mixed types' table."""
    chosen = [c for c in CLASSES if c in set(classes)]
    return f"compare-b{budget}-{select_with}" + ("" if chosen == ["mixed"] else "-" + "+".join(chosen))


def compare(tasks: list[Task], model: Model, out: Path, **options: Any) -> list[dict[str, Any]]:
    """strategy_runs.compare with MiniWoB task types as the clusters and the web proof's run ids."""
    options.setdefault("agent", PROFILE)
    return run_strategies(tasks, model, out, cluster_of=task_type, run_prefix=RUN_PREFIX, **options)


# -- stage 3 -------------------------------------------------------------------------------------------------------
def split_types(types: list[str], seed: int, n_gate: int, n_final: int,
                classes: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Task types shuffled with `seed` and cut into final test, gate and train (the rest): a held-out type's
    page and instruction template are never trained on. With `classes` (type -> the base sweep's 'always' /
    'mixed' / 'never'), each class is cut in proportion (largest remainder), so the final split has the whole
    set's mix of difficulty: an unstratified cut can hold almost only never-solved types, and then a paired
    test has no discordant pairs to see."""
    if n_gate < 1 or n_final < 1 or n_gate + n_final >= len(types):
        raise ValueError(f"{len(types)} types cannot give {n_gate} gate and {n_final} final types and a train split")
    rng = random.Random(seed)
    if classes is None:
        order = sorted(types)
        rng.shuffle(order)
        return {"final": order[:n_final], "gate": order[n_final:n_final + n_gate], "train": order[n_final + n_gate:]}
    if missing := sorted(t for t in types if t not in classes):
        raise ValueError(f"no sweep class for types {missing}: finish the sweep first, or split unstratified")
    groups: dict[str, list[str]] = {}
    for t in sorted(types):
        groups.setdefault(classes[t], []).append(t)
    for name in sorted(groups):
        rng.shuffle(groups[name])
    split: dict[str, list[str]] = {"final": [], "gate": [], "train": []}
    for part, want in (("final", n_final), ("gate", n_gate)):
        left = {name: g for name, g in groups.items() if g}
        total = sum(len(g) for g in left.values())
        quota = {name: want * len(g) / total for name, g in left.items()}
        take = {name: int(q) for name, q in quota.items()}
        room = [n for n in left if take[n] < len(left[n])]
        for name in sorted(room, key=lambda n: (take[n] - quota[n], n))[:want - sum(take.values())]:
            take[name] += 1
        for name, k in take.items():
            split[part] += groups[name][:k]
            groups[name] = groups[name][k:]
    split["train"] = [t for name in sorted(groups) for t in groups[name]]
    return split


def evolve_held_out(store: TrajectoryStore, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """The base and the evolved policy on the gate types (the first episode's candidate, before the gate decided)
    and on the final types, per task from the run's store; both splits hold types never trained on."""
    from agent_selfevolve.evolve import eval_run_id

    def outcomes(eval_run: str) -> dict[str, bool]:
        return {t.task_id: t.resolved for t in store.attempts(run_id=eval_run)}

    splits = {}
    if episodes := summary.get("episodes"):
        first = episodes[0]
        splits["gate"] = (outcomes(eval_run_id(run_id, "gate", first["policy_before"], first["episode"])),
                          outcomes(eval_run_id(run_id, "gate", first["candidate"], first["episode"])))
    if final := summary.get("final_test"):  # a candidate the gate kept out is still the one measured here
        label = (final.get("candidate") or {}).get("policy") or final["policy"]
        splits["final"] = (outcomes(eval_run_id(run_id, "final", "base")),
                           outcomes(eval_run_id(run_id, "final", label)))
    return held_out_table(splits, type_of_id)


def run_evolve(args: argparse.Namespace, out: Path, deadline: Deadline) -> dict[str, Any] | None:
    """A thin wrapper of bench/evolve.py's set-up for web tasks. Needs: torch + transformers + peft (LoRA training,
    CPU works but takes hours), the model's HF weights (rebuilt from the GGUF by `hf_base_from_gguf`) and
    llama.cpp's GGUF-LoRA export for the policy. The training search selects by the proxy (evolve.SELECT_WITH);
    its SFT labels come from BrowserGym's reward on the training types only."""
    from agent_selfevolve.evolve import EvolveConfig, EvolveContext, evolve

    seeds = [int(s) for s in args.seeds.split(",")]
    sweep_rows = read_rows(out / "sweep.jsonl")
    classes = None
    if args.stratify:
        classes = {t: c for t, c in type_classes(sweep_rows, swept_seeds(sweep_rows, seeds)).items()
                   if c != "incomplete"}
    split = split_types(list(args.types), args.split_seed, args.gate_types, args.final_types, classes)
    plan = {name: [t.instance_id for t in tasks_for(types, seeds)] for name, types in split.items()}
    greedy = latest(sweep_rows, lambda r: r["task_id"])  # the base's one greedy attempt per task, if swept
    print(json.dumps({"split_seed": args.split_seed, "stratified": classes is not None, "types": split,
                      "tasks": {k: len(v) for k, v in plan.items()},
                      "sweep_solved": {k: sum(bool((greedy.get(i) or {}).get("resolved")) for i in v)
                                       for k, v in plan.items()}}))
    if args.dry_run:
        return None
    run_id = f"web-proof:evolve:s{args.split_seed}:n{args.n}"
    if args.report_only:  # the finished run's summary; its held-out outcomes read again from the store
        summary = json.loads((out / "evolve-result.json").read_text())["summary"]
        return write_evolve_result(out, split, summary, TrajectoryStore(out / "runs.sqlite"), run_id)
    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy
    from agent_selfevolve.setups import get_setup
    from agent_selfevolve.train import AdapterRegistry, TrainingPaused, hf_base_from_gguf

    key = model_key(args.model)
    base_dir = hf_base_from_gguf(ensure_gguf(key))
    registry = AdapterRegistry(out / "evolve" / "registry")
    policy = llama_cpp_policy(key, registry, base_dir, n_threads=args.threads,
                              **get_setup(PROFILE).model_options("local"))
    config = EvolveConfig(episodes=1, final_candidate=True,
                          strategy="best_of_n", strategy_options={"n": args.n, "temperature": 0.8},
                          limits={"max_steps": args.max_steps}, profile=PROFILE,
                          train={"rank": 16, "alpha": 32, "lr": 1e-4, "epochs": 2, "max_length": 4096,
                                 "threads": args.threads})

    class OutOfTime(Exception):
        pass

    seen: dict[str, int] = {}

    def on_event(event: dict[str, Any]) -> None:
        print(json.dumps(event, default=str)[:160], flush=True)
        kind = f"{event.get('event')}:{event.get('split', '')}".rstrip(":")
        seen[kind] = seen.get(kind, 0) + 1
        if args.progress:  # where the run stands: events of this invocation by kind, and the last one
            write_json_atomic(args.progress, {"stage": "evolve", "tasks": {k: len(v) for k, v in plan.items()},
                                              "events_this_run": seen, "elapsed_s": round(deadline.elapsed(), 1),
                                              "last": event, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if deadline.expired():
            raise OutOfTime

    ctx = EvolveContext(train_tasks=tasks_for(split["train"], seeds), held_out=tasks_for(split["gate"], seeds),
                        final_test=tasks_for(split["final"], seeds), store=TrajectoryStore(out / "runs.sqlite"),
                        registry=registry, base_hf_dir=base_dir, policy=policy, out_dir=out / "evolve",
                        config=config, on_event=on_event, train_stop_at=deadline.wall_clock_end())
    try:
        summary = evolve(ctx, run_id=run_id)
    except (OutOfTime, TrainingPaused):
        print("stopped: --until-minutes reached; rerun the same command to resume")
        return None
    return write_evolve_result(out, split, summary, ctx.store, run_id)


def write_evolve_result(out: Path, split: dict[str, list[str]], summary: dict[str, Any], store: TrajectoryStore,
                        run_id: str) -> dict[str, Any]:
    final = summary.get("final_test") or {}
    outcomes = final.get("outcomes") or {}
    cis = {side: wilson(sum(v.values()), len(v)) for side, v in outcomes.items()}
    held_out = evolve_held_out(store, run_id, summary)
    write_json_atomic(out / "evolve-result.json", {"split": split, "final_ci95": cis, "held_out": held_out,
                                                   "summary": summary})
    for name, row in held_out.items():
        print(f"{name:7} base {row['base']}/{row['n']} -> {row['after']}/{row['n']}  +{row['a_only']} "
              f"-{row['b_only']} McNemar p = {row['mcnemar_p']:.3g}; types up {row['types_up']}, down "
              f"{row['types_down']}; gain {row['diff']:+.3f}, by type CI {row['diff_ci95']}")
    print(f"final test types {split['final']}: base {final.get('base')} {cis.get('base')} -> {final.get('policy')} "
          f"{final.get('final')} {cis.get('final')} (paired, McNemar: {final.get('paired')})")
    if candidate := final.get("candidate"):
        print(f"the candidate the gate did not promote, {candidate['policy']}: {candidate['final']} "
              f"{cis.get('candidate')} (paired with the base, McNemar: {candidate['paired']})")
    return summary


# -- command line --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sweep", "compare", "evolve"])
    parser.add_argument("--model", default="local", help="local[:qwen2.5-coder-1.5b]")
    parser.add_argument("--types", type=lambda s: s.split(","), default=list(TASK_TYPES),
                        help="comma-separated MiniWoB task types (default: the 45 of TASK_TYPES)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--until-minutes", type=float, default=None)
    parser.add_argument("--progress", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: free cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="print the table of the log; run nothing")
    parser.add_argument("--against", default=None,
                        help="sweep: pair with this model's sweep on the same tasks (McNemar), e.g. local")
    parser.add_argument("--budget", type=int, default=12_000, help="compare: tokens per task per strategy")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--select-with", choices=["tests", "proxy", "judge"], default="tests",
                        help="compare: tests = the page reward chooses (ORACLE); proxy or judge (the model reads "
                             "the first page and its actions, each with the element it named) = held-out")
    parser.add_argument("--pool-size", type=int, default=2, help="SE-Agent's initial pool")
    parser.add_argument("--classes", type=lambda s: s.split(","), default=["mixed"],
                        help="compare: the sweep classes to run, from always,mixed,never (default mixed)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--gate-types", type=int, default=10)
    parser.add_argument("--final-types", type=int, default=10)
    parser.add_argument("--n", type=int, default=4, help="evolve: best-of-N attempts per training task")
    parser.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=True,
                        help="evolve: cut each of the model's sweep classes (always/mixed/never) in proportion")
    parser.add_argument("--dry-run", action="store_true", help="evolve: print the split, run nothing")
    args = parser.parse_args(argv)
    out = args.out / model_key(args.model)
    seeds = [int(s) for s in args.seeds.split(",")]
    deadline = Deadline(args.until_minutes)
    if args.stage == "evolve":
        run_evolve(args, out, deadline)
        return
    sweep_rows = read_rows(out / "sweep.jsonl")
    if args.stage == "sweep":
        tasks = tasks_for(list(args.types), seeds)
        if not args.report_only and pending_sweep(tasks, sweep_rows):  # the model loads only for work left
            model = _model(args.model, args.threads)
            sweep_rows = sweep(tasks, model, out, max_steps=args.max_steps, deadline=deadline, progress=args.progress)
        ids = {t.instance_id for t in tasks}
        shown = [r for r in sweep_rows if r["task_id"] in ids]  # this invocation's types and seeds
        report = sweep_report(shown, list(args.types), seeds, len(tasks))
        if args.against:
            report["against"] = paired_sweeps(shown, read_rows(args.out / model_key(args.against) / "sweep.jsonl"),
                                              args.against)
        write_json_atomic(out / "sweep.json", {"model": args.model, "seeds": seeds, **report})
        print_sweep(shown, report, seeds)
        return
    if bad := set(args.classes) - set(CLASSES):
        parser.error(f"--classes: {', '.join(sorted(bad))} is not one of {', '.join(CLASSES)}")
    chosen = compare_types(sweep_rows, list(args.types), seeds, args.classes)
    strategies = args.strategies.split(",")
    try:
        check_strategies(strategies)
    except ValueError as e:
        parser.error(f"--strategies: {e}")
    print(f"comparing on {len(chosen)} types x {len(seeds)} seeds: {', '.join(chosen) or '(none: run the sweep)'}")
    logged = {(r["strategy"], r["task_id"]) for r in read_rows(compare_log(out, args.budget, args.select_with))}
    tasks = tasks_for(chosen, seeds) if chosen else []
    if not args.report_only and any((s, t.instance_id) not in logged for t in tasks for s in strategies):
        compare(tasks, _model(args.model, args.threads), out, strategies=strategies, budget=args.budget,
                select_with=args.select_with, max_steps=args.max_steps, pool_size=args.pool_size, deadline=deadline,
                progress=args.progress)
    fill_attempt_tokens(out, args.budget, args.select_with, RUN_PREFIX)  # rows logged before they carried it
    ids = {t.instance_id for t in tasks}  # the chosen types' rows only: one log may hold other classes' runs
    rows = [r for r in read_rows(compare_log(out, args.budget, args.select_with)) if r["task_id"] in ids]
    if not rows:
        print("nothing logged for these tasks yet: no table written")
        return
    table = {**compare_table(rows + greedy_rows(sweep_rows, ids), [*strategies, GREEDY]),
             "searches": coverage(rows, tasks, strategies)}
    name = table_name(args.budget, args.select_with, args.classes)
    write_json_atomic(out / f"{name}.json", {"model": args.model, "budget_tokens_per_task": args.budget,
                                             "select_with": args.select_with, "oracle": args.select_with == "tests",
                                             "types": chosen, "seeds": seeds, **table})
    plot_compare(table, out / f"{name}.png", f"MiniWoB, {model_key(args.model)}, {args.budget:,} tokens/task, "
                 f"{'ORACLE' if args.select_with == 'tests' else args.select_with} selection")
    print_compare(table, args.budget, args.select_with)


def _model(spec: str, threads: int | None) -> Model:
    from agent_selfevolve.models import make_model
    from agent_selfevolve.setups import get_setup

    options = get_setup(PROFILE).model_options(spec)  # text action format for the embedded models
    if threads and spec.startswith("local"):
        options["n_threads"] = threads
    return make_model(spec, **options)


if __name__ == "__main__":
    main()
