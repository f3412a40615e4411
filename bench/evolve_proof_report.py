"""The evolution proof's report: per seed and pooled over seeds, from the committed results alone.

Pooling: the paired McNemar over seeds uses every seed's pairs together (task ids prefixed by the seed, since
each seed has its own held-out split), so two seeds of 128 held-out tasks give one test on 256 pairs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from evolve_proof_core import (
    ROW_KINDS,
    SEARCH_ARM,
    Unit,
    acting_training,
    held_out_ids,
    plain_dpo_arm,
    read_records,
    train_ids,
    unit_dir,
    unit_done,
)

from agent_selfevolve.evolve import mcnemar
from agent_selfevolve.fileio import save_figure_atomic, write_json_atomic
from agent_selfevolve.sources.factory_repo import project_of

SUITES = ("humaneval", "factory")


def _suite(task_id: str) -> str:
    return "factory" if project_of(task_id.split(":", 1)[-1]) else "humaneval"


def seed_dirs(root: Path) -> dict[int, Path]:
    return {int(p.name[4:]): p for p in sorted(root.glob("seed*")) if p.name[4:].isdigit() and p.is_dir()}


def outcomes(seed_dir: Path, unit: Unit) -> dict[str, bool] | None:
    if not unit_done(seed_dir, unit):
        return None
    return {r["task_id"]: r["resolved"] for r in read_records(unit_dir(seed_dir, unit) / "outcomes.jsonl")}


def endings(seed_dir: Path, unit: Unit, suite: str | None = None) -> dict[str, int]:
    """How the unit's attempts ended (submitted, step_limit, format_errors, ...), over one suite's tasks if given:
    an adapter that repeats itself or stops submitting shows here before it shows in the success rate."""
    records = read_records(unit_dir(seed_dir, unit) / "outcomes.jsonl")
    return dict(sorted(Counter(r.get("status", "?") for r in records
                               if suite is None or _suite(r["task_id"]) == suite).items()))


def endings_by_suite(seed_dir: Path, unit: Unit) -> dict[str, dict[str, int]]:
    return {suite: endings(seed_dir, unit, suite) for suite in SUITES}


def rows_by_suite(seed_dir: Path) -> dict[str, dict[str, int]]:
    """Training rows of each kind per suite, over the finished searches: a pool that is nearly all one suite
    teaches that suite's first move (HumanEval's: write the function at once) to the other."""
    out: dict[str, dict[str, int]] = {}
    for k in episodes_of(seed_dir):
        folder = unit_dir(seed_dir, Unit("search", k))
        if not (folder / "summary.json").exists():
            continue
        for kind in ROW_KINDS:
            for row in read_records(folder / f"rows-{kind}.jsonl"):
                suite = _suite(str((row.get("meta") or {}).get("task_id", "")))
                out.setdefault(kind, {}).setdefault(suite, 0)
                out[kind][suite] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in out.items()}


def adapter_provenance(seed_dir: Path) -> list[dict[str, Any]]:
    """Units whose tasks did not all run on the weights first trained: a fresh machine re-derives a lost adapter
    from the committed rows, and `rederived.jsonl` says whether it got the same weights. A task record names its
    adapter (`adapter`); older records are placed by their session."""
    out = []
    consumers = [(Unit("search", k), SEARCH_ARM, k - 1) for k in episodes_of(seed_dir) if k > 0]
    consumers += [(Unit("eval", k, arm), arm, k) for arm in arms_of(seed_dir) for k in episodes_of(seed_dir)]
    for unit, arm, k in consumers:
        folder = unit_dir(seed_dir, unit)
        records = read_records(folder / ("tasks.jsonl" if unit.kind == "search" else "outcomes.jsonl"))
        try:
            acting = acting_training(seed_dir, arm, k) if records else None
        except FileNotFoundError:  # results without their training records: nothing to place the tasks on
            continue
        if acting is None:
            continue
        episode, train = acting
        rederived = read_records(unit_dir(seed_dir, Unit("train", episode, arm)) / "rederived.jsonl")
        by_session = {r["session"]: r["adapter_hash"] for r in rederived}
        same = {train["adapter_hash"]} | {r["adapter_hash"] for r in rederived if r.get("same_weights")}
        counts = Counter(r.get("adapter") or by_session.get(r.get("session", ""), train["adapter_hash"])
                         for r in records)
        others = {h: n for h, n in counts.items() if h not in same}
        if others:
            label = f"ep{unit.episode} search" if unit.kind == "search" else f"{unit.arm} ep{unit.episode} eval"
            out.append({"unit": label, "adapter_of": f"{arm} ep{episode}",
                        "first": train["adapter_hash"], "tasks": len(records),
                        "on_first": sum(n for h, n in counts.items() if h in same), "on_other": others})
    return out


def arms_of(seed_dir: Path) -> list[str]:
    return sorted({p.parent.name for p in seed_dir.glob("ep*/*/summary.json") if p.parent.name != "search"})


def draws_of(seed_dir: Path) -> list[int]:
    """The base's extra evaluations (`--base-draws`) that finished."""
    return sorted(int(p.parent.name.removeprefix("base-draw")) for p in seed_dir.glob("base-draw*/summary.json")
                  if p.parent.name.removeprefix("base-draw").isdigit())


def episodes_of(seed_dir: Path) -> list[int]:
    return sorted(int(p.name[2:]) for p in seed_dir.glob("ep*") if p.name[2:].isdigit())


def _rate(pairs: dict[str, bool]) -> dict[str, Any]:
    n = len(pairs)
    return {"n": n, "resolved": sum(pairs.values()), "success": sum(pairs.values()) / n if n else None}


def _by_suite(pairs: dict[str, bool]) -> dict[str, dict[str, Any]]:
    return {suite: _rate(part) for suite in SUITES if (part := {t: v for t, v in pairs.items() if _suite(t) == suite})}


def _paired(before: dict[str, bool], after: dict[str, bool]) -> dict[str, Any]:
    keys = [k for k in after if k in before]
    return {"before": _rate({k: before[k] for k in keys}), "after": _rate({k: after[k] for k in keys}),
            "mcnemar": mcnemar({k: before[k] for k in keys}, {k: after[k] for k in keys})}


def build_report(root: Path) -> dict[str, Any]:
    """Per seed: base, each arm's episodes (success by suite, McNemar vs base and vs the previous episode), the
    searches' data (rows of each kind: DPO pairs and recovery rows for the ablation); pooled over seeds."""
    seeds: dict[int, Any] = {}
    pooled_pairs: dict[str, dict[int, dict[str, dict[str, bool]]]] = {}
    for seed, folder in seed_dirs(root).items():
        base = outcomes(folder, Unit("eval"))
        entry: dict[str, Any] = {"base": _rate(base) if base is not None else None, "arms": {}, "searches": [],
                                 "base_endings": endings(folder, Unit("eval")) if base is not None else None,
                                 "base_endings_by_suite": endings_by_suite(folder, Unit("eval")) if base is not None
                                 else None, "base_by_suite": _by_suite(base) if base is not None else None}
        entry["base_draws"] = [
            {"draw": d, **_rate(drawn), "vs_base": mcnemar(base, drawn) if base is not None else None}
            for d in draws_of(folder) if (drawn := outcomes(folder, Unit("eval", draw=d))) is not None]
        for k in episodes_of(folder):
            path = unit_dir(folder, Unit("search", k)) / "summary.json"
            if path.exists():
                s = json.loads(path.read_text())
                entry["searches"].append({key: s.get(key) for key in (
                    "episode", "n", "resolved", "pass_at_n", "attempts", "attempts_resolved", "tasks_with_both",
                    "rows", "tokens", "seconds", "samples_per_task", "temperature")})
        for arm in arms_of(folder):
            rows = []
            prev = base
            for k in episodes_of(folder):
                after = outcomes(folder, Unit("eval", k, arm))
                if after is None:  # not run yet, or an ablation arm run at a later episode only (--at-episode)
                    prev = None
                    continue
                summary = json.loads((unit_dir(folder, Unit("eval", k, arm)) / "summary.json").read_text())
                rows.append({"episode": k, **_rate(after), "by_suite": _by_suite(after),
                             "endings": endings(folder, Unit("eval", k, arm)),
                             "endings_by_suite": endings_by_suite(folder, Unit("eval", k, arm)),
                             "vs_base": mcnemar(base, after) if base is not None else None,
                             "vs_previous": mcnemar(prev, after) if prev is not None else None,
                             "tokens": summary.get("tokens"), "seconds": summary.get("seconds")})
                if base is not None:
                    pooled_pairs.setdefault(arm, {}).setdefault(k, {})[seed] = after
                prev = after
            entry["arms"][arm] = rows
        entry["data"] = {kind: sum((s.get("rows") or {}).get(kind, 0) for s in entry["searches"])
                         for kind in ROW_KINDS}
        entry["data_by_suite"] = rows_by_suite(folder)
        entry["adapter_provenance"] = adapter_provenance(folder)
        seeds[seed] = entry
    pooled: dict[str, list[dict[str, Any]]] = {}
    afters: dict[tuple[str, int], dict[str, bool]] = {}
    for arm, by_episode in sorted(pooled_pairs.items()):
        for k, by_seed in sorted(by_episode.items()):
            before: dict[str, bool] = {}
            after: dict[str, bool] = {}
            prev: dict[str, bool] = {}
            has_previous = True
            for seed, out in by_seed.items():
                folder = seed_dirs(root)[seed]
                base = outcomes(folder, Unit("eval")) or {}
                last = base if k == 0 else outcomes(folder, Unit("eval", k - 1, arm)) or {}
                before.update({f"s{seed}:{t}": v for t, v in base.items()})
                prev.update({f"s{seed}:{t}": v for t, v in last.items()})
                has_previous = has_previous and bool(last)
                after.update({f"s{seed}:{t}": v for t, v in out.items()})
            row = {"episode": k, "seeds": sorted(by_seed), **_paired(before, after),
                   "vs_previous": _paired(prev, after)["mcnemar"] if has_previous else None, "by_suite": {}}
            for suite in SUITES:
                keys = [t for t in after if _suite(t) == suite]
                if keys:
                    row["by_suite"][suite] = _paired({t: before[t] for t in keys if t in before},
                                                     {t: after[t] for t in keys})
            pooled.setdefault(arm, []).append(row)
            afters[(arm, k)] = after
    for arm, rows in pooled.items():  # the ablation: each arm against SFT alone, same episode, same pairs
        for row in rows:
            after = afters[(arm, row["episode"])]
            sft = afters.get(("sft", row["episode"]))
            row["vs_sft"] = _paired(sft, after)["mcnemar"] if sft and arm != "sft" else None
            plain = plain_dpo_arm(arm)
            dpo = afters.get((plain, row["episode"])) if plain else None
            row["vs_plain_dpo"] = {"arm": plain, **_paired(dpo, after)["mcnemar"]} if dpo else None
    return {"seeds": seeds, "pooled": pooled}


def _cell(rate: dict[str, Any] | None) -> str:
    if not rate or not rate.get("n"):
        return "-"
    return f"{rate['resolved']}/{rate['n']} {100 * rate['success']:.1f}%"


def _test(m: dict[str, Any] | None) -> str:
    return "-" if not m else f"+{m['gained']} -{m['lost']} p={m['p_value']:.3g} (1-sided {m['p_one_sided']:.3g})"


def _endings(counts: dict[str, int]) -> str:
    return " ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def format_report(report: dict[str, Any]) -> str:
    seeds = sorted(report["seeds"])
    head = f"{'arm':16} {'episode':8} " + " ".join(f"{'seed ' + str(s):16}" for s in seeds) + \
        f" {'pooled':16} {'humaneval':16} {'factory':16} {'vs base (pooled)':40} vs previous / vs sft"
    lines = [head, "-" * len(head)]
    base_cells = " ".join(f"{_cell(report['seeds'][s]['base']):16}" for s in seeds)
    lines.append(f"{'(all)':16} {'base':8} {base_cells}")
    based = [s for s in seeds if report["seeds"][s]["base"]]
    for arm, rows in report["pooled"].items():
        for row in rows:
            k = row["episode"]
            short = "" if row["seeds"] == based else " s" + ",".join(str(x) for x in row["seeds"])  # not all seeds
            per_seed = []
            for s in seeds:
                match = [r for r in report["seeds"][s]["arms"].get(arm, []) if r["episode"] == k]
                per_seed.append(f"{_cell(match[0] if match else None):16}")
            suites = [f"{_cell(row['by_suite'].get(x, {}).get('after')):16}" for x in ("humaneval", "factory")]
            lines.append(f"{arm:16} {'ep' + str(k):8} {' '.join(per_seed)} {_cell(row['after']) + short:16} "
                         f"{' '.join(suites)} {_test(row['mcnemar']):40} {_test(row['vs_previous'])}"
                         + (f" / {_test(row['vs_sft'])}" if row.get("vs_sft") else "")
                         + (f" / vs {row['vs_plain_dpo']['arm']} {_test(row['vs_plain_dpo'])}"
                            if row.get("vs_plain_dpo") else ""))
    for s in seeds:
        for d in report["seeds"][s].get("base_draws") or []:
            lines.append(f"seed {s} base again, revision seeds +{d['draw']} (the noise floor): {_cell(d)}; "
                         f"vs the base {_test(d['vs_base'])}")
    for s in seeds:
        entry = report["seeds"][s]
        if entry.get("base_endings"):
            lines.append(f"seed {s} attempts ended as: base {_endings(entry['base_endings'])}" + "".join(
                f"; {arm} ep{r['episode']} {_endings(r.get('endings') or {})}"
                for arm, rows in entry["arms"].items() for r in rows))
            for suite in SUITES:
                lines.append(f"  {suite}: base {_endings(entry['base_endings_by_suite'][suite])}" + "".join(
                    f"; {arm} ep{r['episode']} {_endings(r['endings_by_suite'][suite])}"
                    for arm, rows in entry["arms"].items() for r in rows))
    for s in seeds:
        data = report["seeds"][s]["data"]
        searches = report["seeds"][s]["searches"]
        if searches:
            lines.append(f"seed {s} search data: " + ", ".join(
                f"ep{x['episode']} pass@n {x['pass_at_n']}/{x['n']} ({x['attempts_resolved']}/{x['attempts']} "
                f"attempts, {x['tasks_with_both']} tasks with both)" for x in searches) +
                f"; rows sft {data['sft']}, recovery {data['recovery']}, DPO pairs {data['dpo']}, rationalized "
                f"{data['rationalized']}")
            by_suite = report["seeds"][s].get("data_by_suite") or {}
            if by_suite:
                lines.append(f"seed {s} rows by suite: " + "; ".join(
                    f"{kind} " + ", ".join(f"{suite} {n}" for suite, n in counts.items())
                    for kind, counts in by_suite.items()))
    for s in seeds:
        for p in report["seeds"][s].get("adapter_provenance") or []:
            other = ", ".join(f"{n} on {h[:12]}" for h, n in p["on_other"].items())
            lines.append(f"seed {s} {p['unit']}: {p['on_first']} of {p['tasks']} tasks on {p['adapter_of']}'s adapter "
                         f"as first trained ({p['first'][:12]}), {other} (re-derived on another machine: other "
                         "weights from the same rows)")
    return "\n".join(lines)


def curves(report: dict[str, Any], suite: str | None) -> list[tuple[str, str, list[int], list[float]]]:
    """The lines of one panel of evolve.png as (label, style, x, y); x 0 is the base, x k + 1 episode k.

    A pooled line runs only while its episodes hold the same seeds as its first: one base point cannot stand for
    two seeds at episode 0 and one seed at episode 1 (seed 1's lower base would make seed 0's later episodes look
    like gains). Each seed's own line, dotted, shows every episode it has."""
    lines = []
    for arm, rows in report["pooled"].items():
        same_seeds = rows[:next((i for i, r in enumerate(rows) if r["seeds"] != rows[0]["seeds"]), len(rows))]
        pick = [(r["episode"], r if suite is None else r["by_suite"].get(suite)) for r in same_seeds]
        pick = [(k, r) for k, r in pick if r and r["after"]["n"]]
        if pick:
            seeds = ",".join(str(x) for x in rows[0]["seeds"])
            lines.append((f"{arm} pooled (seeds {seeds})", "o-", [0] + [k + 1 for k, _ in pick],
                          [pick[0][1]["before"]["success"]] + [r["after"]["success"] for _, r in pick]))
    for seed, entry in report["seeds"].items():
        base = entry["base"] if suite is None else (entry.get("base_by_suite") or {}).get(suite)
        if not base:
            continue
        for arm, rows in entry["arms"].items():
            rates = [(r["episode"], r if suite is None else (r.get("by_suite") or {}).get(suite)) for r in rows]
            rates = [(k, r) for k, r in rates if r and r["n"]]
            if rates:
                lines.append((f"{arm} seed {seed}", ":", [0] + [k + 1 for k, _ in rates],
                              [base["success"]] + [r["success"] for _, r in rates]))
    return lines


def plot(report: dict[str, Any], out: Path) -> Path | None:
    """Held-out success by episode (`curves`); one panel for all tasks and one per suite."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [("all", None), *((s, s) for s in SUITES)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), sharey=True)
    for ax, (title, suite) in zip(axes, panels, strict=True):
        for label, style, xs, ys in curves(report, suite):
            ax.plot(xs, ys, style, alpha=1.0 if style == "o-" else 0.6, label=label)
        ax.set_title(title)
        last = max((r["episode"] for rows in report["pooled"].values() for r in rows), default=0)
        ax.set_xticks(range(last + 2), ["base", *(f"ep{k}" for k in range(last + 1))])
        ax.set_xlabel("policy (episode's adapter)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("held-out success")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure_atomic(fig, out)


def write_report(root: Path, command: str) -> dict[str, Any]:
    report = {**build_report(root), "command": command}
    write_json_atomic(root / "summary.json", report)
    plot(report, root / "evolve.png")
    return report


def unit_progress(seed_dir: Path, unit: Unit, split: dict[str, Any]) -> str:
    """'done', 'partial 12/128' or 'pending', for the table printed after every run."""
    if unit_done(seed_dir, unit):
        return "done"
    if unit.kind == "train":
        return "pending"
    name = "tasks.jsonl" if unit.kind == "search" else "outcomes.jsonl"
    n = len(read_records(unit_dir(seed_dir, unit) / name))
    total = len(train_ids(split) if unit.kind == "search" else held_out_ids(split))
    return f"partial {n}/{total}" if n else "pending"
