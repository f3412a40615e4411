"""The evolution proof, repeated (issue #16, part 2), in session-sized units that resume on a fresh machine.

    python bench/evolve_proof.py --seed 0 --until-minutes 150 --progress runs/evolve-proof/progress-s0.jsonl
    python bench/evolve_proof.py --seed 1 --until-minutes 150     # the other split; rerun either until done
    python bench/evolve_proof.py --report                         # per seed and pooled; summary.json, evolve.png
    python bench/evolve_proof.py --seed 0 --kinds sft,dpo --until-minutes 150   # an ablation arm
    python bench/evolve_proof.py --seed 0 --kinds sft,dpo --at-episode 2        # ... at the last episode only
    python bench/evolve_proof.py --seed 0 --kinds sft,dpo --dpo-recipe rpo --at-episode 0   # DPO + NLL: 'sft+rpo'
    python bench/evolve_proof.py --seed 0 --rows-of mixed --at-episode 2        # SFT on the unsure tasks only
    python bench/evolve_proof.py --seed 0 --base-draws 2                        # the base again: the noise floor
    python bench/evolve_proof.py --dry-run                        # FAKE model + FAKE trainer, tiny split

Per seed s: a seeded split into training and held-out tasks (HumanEval repo tasks; factory tasks held out by
project, from `factory-train-s<s>` / `factory-held-out-s<s>`), frozen in `<out>/seed<s>/split.json` with the
options in `config.json` (later runs must agree with them). Units, in order: the base model on the held-out tasks;
then per episode k: best-of-N search on the training tasks by episode k-1's adapter (proxy selection; labels from
the training tasks' own tests) -> rows (SFT, recovery, DPO, all kept) -> LoRA on every episode's rows so far ->
the new adapter on the held-out tasks, paired with the base and with episode k-1 (exact McNemar). The held-out
split decides nothing (no gate), so its numbers carry no selection bias.

Everything under `<out>` is small and meant to be committed; adapters and SQLite stores stay in `--work`. A run
stops before `--until-minutes` (exit 3: more to do), and the same command continues: a task whose outcome is
committed is never run again, and an adapter this machine lacks is retrained from the committed rows after
checking their hash. Ablation arms (`--kinds`) train on the same search data; they differ only in row kinds.
`--rows-of mixed` keeps only the rows of tasks whose samples in that search both passed and failed (the arm
`<kinds>-mixed`): the successes the policy was not sure of, without the ones it writes anyway.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evolve_proof_core import (  # noqa: E402
    DPO_RECIPES,
    MIXED,
    ROW_KINDS,
    OutOfTime,
    Pools,
    ProofConfig,
    ProofError,
    append_record,
    check_code,
    load_split,
    plan,
    resolve_config,
)
from evolve_proof_report import format_report, unit_progress, write_report  # noqa: E402
from evolve_proof_units import Backend, Proof  # noqa: E402

from agent_selfevolve.tasks import Task  # noqa: E402

EXIT_MORE_TO_DO = 3
CONFIG_OPTIONS = ("episodes", "humaneval_held_out", "humaneval_train", "factory_held_out", "factory_train",
                  "samples_per_task", "temperature", "max_steps", "profile", "model", "init")


def _git_head() -> str:
    """The checkout's commit (code.json's default note), or 'unknown' outside a git checkout."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True)
    return f"commit {proc.stdout.strip()}" if proc.returncode == 0 else "unknown"


def arm_of(kinds: str, rows_of: str = "all", dpo_recipe: str = "dpo") -> str:
    chosen = {k.strip() for k in kinds.split(",") if k.strip()}
    if not chosen <= set(ROW_KINDS) or "sft" not in chosen:
        raise SystemExit(f"--kinds: 'sft' plus any of {', '.join(k for k in ROW_KINDS if k != 'sft')} (got {kinds!r})")
    if rows_of not in ("all", "mixed"):
        raise SystemExit(f"--rows-of: 'all' or 'mixed' (got {rows_of!r})")
    if dpo_recipe not in DPO_RECIPES or (dpo_recipe != "dpo" and "dpo" not in chosen):
        raise SystemExit(f"--dpo-recipe: one of {', '.join(DPO_RECIPES)}, and only with dpo in --kinds "
                         f"(got {dpo_recipe!r} with {kinds!r})")
    names = [dpo_recipe if k == "dpo" else k for k in ROW_KINDS if k in chosen]
    return "+".join(names) + (MIXED if rows_of == "mixed" else "")  # plan() names an arm ARMS lacks


def real_pools(config: ProofConfig) -> Pools:
    from agent_selfevolve.sources import resolve_tasks
    from agent_selfevolve.sources.humaneval import humaneval_tasks

    factory = config.factory_held_out + config.factory_train > 0
    return Pools(humaneval=humaneval_tasks() if config.humaneval_held_out + config.humaneval_train else [],
                 factory_train=resolve_tasks(f"factory-train-s{config.seed}", locate=False) if factory else [],
                 factory_held=resolve_tasks(f"factory-held-out-s{config.seed}", locate=False) if factory else [])


def real_backend(config: ProofConfig, work: Path, threads: int | None, train_threads: int = 1) -> Backend:
    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.serving import llama_cpp_policy
    from agent_selfevolve.setups import get_setup
    from agent_selfevolve.train import AdapterRegistry, hf_base_from_gguf, train_sft_then_dpo

    base_dir = hf_base_from_gguf(ensure_gguf(config.model))
    registry = AdapterRegistry(work / "registry")
    policy = llama_cpp_policy(config.model, registry, base_dir, n_threads=threads,
                              **get_setup(config.profile).model_options("local"))
    return Backend(policy=policy, train=train_sft_then_dpo, base_hf_dir=Path(base_dir), registry=registry,
                   label=f"llama.cpp {config.model} + LoRA", train_runtime={"threads": train_threads})


def fake_backend(tasks: list[Task], work: Path) -> Backend:
    from evolve_proof_fake import FakeTrainer, fake_policy

    from agent_selfevolve.train import AdapterRegistry

    return Backend(policy=fake_policy(tasks), train=FakeTrainer(), base_hf_dir=work,
                   registry=AdapterRegistry(work / "registry"), label="FAKE model + FAKE trainer (dry run)")


def default_backend(args: argparse.Namespace, config: ProofConfig, split: dict[str, Any], tasks: dict[str, Task],
                    work: Path) -> Backend:
    return fake_backend(list(tasks.values()), work) if args.dry_run else real_backend(config, work, args.threads,
                                                                                          args.train_threads)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in CONFIG_OPTIONS}
    if args.factory_levels is not None:
        given["factory_levels"] = args.factory_levels.split(",")
    train = {k: getattr(args, k) for k in ("rank", "lr", "epochs") if getattr(args, k) is not None}
    if train:
        default = ProofConfig(seed=0).train
        given["train"] = {**default, **train, **({"alpha": 2 * train["rank"]} if "rank" in train else {})}
    return given


def run_seed(args: argparse.Namespace, command: str, pools_of: Any = real_pools, backend_of: Any = None) -> int:
    """Run the plan of `--seed` for the arm `--kinds` until done or out of time; returns the exit code.
    `pools_of(config)` and `backend_of(args, config, split, tasks, work)` are for tests (FAKE tasks and model)."""
    started = time.time()
    deadline = started + 60 * args.until_minutes if args.until_minutes is not None else None
    seed_dir = args.out / f"seed{args.seed}"
    config = resolve_config(seed_dir, args.seed, given_options(args))
    check_code(seed_dir, args.code_note or _git_head(), args.allow_code_change)
    arm = arm_of(args.kinds, args.rows_of, args.dpo_recipe)
    units = plan(config, arm, args.at_episode, args.base_draws)  # a bad option fails before any model loads
    split, tasks = load_split(seed_dir, config, pools_of(config))
    if pools_of is real_pools:
        from agent_selfevolve.sources import locate_tasks

        tasks = {t.instance_id: t for t in locate_tasks(list(tasks.values()))}
    work = args.work / f"seed{args.seed}"
    backend = (backend_of or default_backend)(args, config, split, tasks, work)
    proof = Proof(config, split, tasks, seed_dir, work, backend, deadline=deadline, progress=args.progress,
                  command=command, concurrency=args.concurrency)
    append_record(seed_dir / "sessions.jsonl", {"session": proof.session, "event": "start", "command": command,
                                                "arm": arm, "at_episode": args.at_episode,
                                                "until_minutes": args.until_minutes,
                                                "backend": backend.label,
                                                "at": datetime.now(UTC).isoformat()})
    stopped = None
    try:
        for unit in units:
            proof.run_unit(unit)
    except OutOfTime as exc:
        stopped = str(exc)
    append_record(seed_dir / "sessions.jsonl", {"session": proof.session, "event": "end", "stopped": stopped,
                                                "seconds": round(time.time() - started, 1),
                                                "at": datetime.now(UTC).isoformat()})
    print(f"\nseed {args.seed}, arm {arm} ({config.episodes} episodes, held-out "
          f"{config.humaneval_held_out} HumanEval + {config.factory_held_out} factory):")
    for unit in units:
        print(f"  {unit.name:28} {unit_progress(seed_dir, unit, split)}")
    report = write_report(args.out, command)
    print("\n" + format_report(report))
    if stopped:
        print(f"\nstopped before the time limit: {stopped}. Rerun the same command to continue.")
        return EXIT_MORE_TO_DO
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="split seed (0 or 1 with factory tasks)")
    parser.add_argument("--until-minutes", type=float, default=None, help="stop cleanly before this much time")
    parser.add_argument("--progress", type=Path, default=None, help="append one JSON line per finished task here")
    parser.add_argument("--report", action="store_true", help="only print and write the pooled report")
    parser.add_argument("--kinds", default="sft", help="row kinds of the arm: sft | sft,recovery | sft,dpo | "
                        "sft,rationalized | ...")
    parser.add_argument("--rows-of", default="all", help="all | mixed: train only on rows of tasks whose samples "
                        "had mixed outcomes in their search (an arm of its own, e.g. 'sft-mixed')")
    parser.add_argument("--dpo-recipe", default="dpo", help="how the arm's DPO stage trains: dpo (the train config "
                        "as is) | rpo (plus the chosen reply's NLL, one epoch; the arm 'sft+rpo')")
    parser.add_argument("--base-draws", type=int, default=1, help="evaluate the base this many times, each with its "
                        "own revision seeds: how many held-out tasks flip between two draws of one policy")
    parser.add_argument("--at-episode", type=int, default=None,
                        help="an ablation arm (--kinds other than sft) trained and evaluated at this episode only")
    parser.add_argument("--out", type=Path, default=None, help="results to commit (default bench/results/evolve-proof)")
    parser.add_argument("--work", type=Path, default=None, help="stores and adapters (default runs/evolve-proof)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="torch threads for LoRA (1: with 2 shared cores, 2 threads ran 6-9x slower a step)")
    parser.add_argument("--concurrency", type=int, default=2, help="search attempts at once")
    parser.add_argument("--allow-code-change", action="store_true",
                        help="go on although the agent's code differs from the seed's code.json (recorded there)")
    parser.add_argument("--code-note", default=None,
                        help="what code.json says the code is (default: the checkout's commit)")
    parser.add_argument("--dry-run", action="store_true", help="FAKE model and trainer on a tiny split")
    for name, kind in (("episodes", int), ("humaneval-held-out", int), ("humaneval-train", int),
                       ("factory-held-out", int), ("factory-train", int), ("factory-levels", str),
                       ("samples-per-task", int), ("temperature", float), ("max-steps", int), ("profile", str),
                       ("model", str), ("init", str), ("rank", int), ("lr", float), ("epochs", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="fixed in config.json on the first run")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python bench/evolve_proof.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if not args.dry_run:
        args.out, args.work = args.out or Path("bench/results/evolve-proof"), args.work or Path("runs/evolve-proof")
    if args.report:
        if args.out is None:
            parser.error("--report --dry-run needs --out (the dry run's results folder)")
        report = write_report(args.out, command)
        print(format_report(report))
        print(f"\nwrote {args.out / 'summary.json'} and {args.out / 'evolve.png'}")
        return 0
    if args.dry_run and args.seed is None:
        args.seed = 0
    if args.seed is None:
        parser.error("--seed is required (or --report)")
    if args.dry_run:
        root = Path("runs/evolve-proof-dry") / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        args.out, args.work = args.out or root / "results", args.work or root / "work"
        dry = {"episodes": 2, "humaneval_held_out": 3, "humaneval_train": 2, "samples_per_task": 2,
               "temperature": 1.0, "max_steps": 4, "factory_held_out": 0, "factory_train": 0}
        for key, value in dry.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        print(f"dry run: FAKE model and FAKE trainer, results in {args.out}")
    try:
        return run_seed(args, command)
    except ProofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
