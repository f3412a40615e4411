"""How often the first observation's "code the issue names" (envs/localize.py) holds the definition a factory
task's fix edits, per project and level: the ceiling on what a model that never explores can fix.

The gold patch is read here, by the measurement only, to find the edited definition; the localization itself sees
the issue text and the checkout's non-test Python files, as the environment does.

    python bench/localization_recall.py --levels easy,medium,hard --chars 4000 --names 1

With `--outcomes` (a bench/agent_vs_direct.py log), it also splits an arm's resolved tasks by whether their edited
definition was shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_vs_direct_repo import LEVELS, edited_definitions, factory_tasks  # noqa: E402

from agent_selfevolve.envs.grading import is_test_file  # noqa: E402
from agent_selfevolve.envs.localize import MAX_NAMES, named_definitions  # noqa: E402
from agent_selfevolve.envs.worktree import git  # noqa: E402
from agent_selfevolve.sources.factory_repo import project_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def split_outcomes(log: Path, arm: str, localized: dict[str, bool]) -> dict[str, list[int]]:
    """{"shown": [resolved, tasks], "not_shown": [...]} for `arm`'s rows of an agent_vs_direct log."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    split: dict[str, list[int]] = {"shown": [0, 0], "not_shown": [0, 0]}
    for row in rows:
        if row["arm"] == arm and row["task_id"] in localized:
            cell = split["shown" if localized[row["task_id"]] else "not_shown"]
            cell[0] += bool(row["resolved"])
            cell[1] += 1
    print(f"{arm} in {log.name}: resolved {split['shown'][0]}/{split['shown'][1]} where the edited definition was "
          f"shown, {split['not_shown'][0]}/{split['not_shown'][1]} where it was not")
    return split


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--chars", type=int, default=4000, help="the set-up's named_chars")
    parser.add_argument("--names", type=int, default=MAX_NAMES, help="how many of the issue's names to show")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--outcomes", type=Path, default=None, help="an agent_vs_direct-*.jsonl to split by")
    parser.add_argument("--arm", default="agent:selfcheck", help="the arm of --outcomes")
    args = parser.parse_args(argv)
    sources: dict[tuple[str, str], dict[str, str]] = {}
    summary: dict[str, object] = {"chars": args.chars, "names": args.names, "levels": {}}
    localized: dict[str, bool] = {}
    for level in args.levels.split(","):
        found, total = Counter[str](), Counter[str]()
        for task in factory_tasks(f"factory:all:{level}", ":"):
            key = (str(task.repo_path), task.base_commit)
            if key not in sources:
                names = git("ls-tree", "-r", "--name-only", task.base_commit, cwd=task.repo_path).splitlines()
                sources[key] = {f: git("show", f"{task.base_commit}:{f}", cwd=task.repo_path) for f in names
                                if f.endswith(".py") and not is_test_file(f)}
            files = sources[key]
            target = next(iter(edited_definitions(task.patch, files)), None)  # around the fix's first edit
            shown = named_definitions(task.problem_statement, files, args.chars, args.names)
            project = project_of(task.instance_id) or ""
            total[project] += 1
            shown_target = bool(target) and any(
                s.path == target.path and s.start <= target.start and target.end <= s.end for s in shown)
            found[project] += shown_target
            localized[task.instance_id] = shown_target
        entry = {"tasks": sum(total.values()), "found": sum(found.values()),
                 "projects": {p: [found[p], total[p]] for p in sorted(total)}}
        summary["levels"][level] = entry  # type: ignore[index]
        print(f"{level:7s} the edited definition is shown for {entry['found']}/{entry['tasks']} tasks: "
              + ", ".join(f"{p} {found[p]}/{total[p]}" for p in sorted(total)), flush=True)
    if args.outcomes:
        summary["outcomes"] = split_outcomes(args.outcomes, args.arm, localized)
        return summary  # a split of one run, not a new recall table
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"localization_recall-{args.chars}-{args.names}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
