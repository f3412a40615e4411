"""`--tasks quickstart`: the first command's tasks, a few minutes of work where the embedded 0.5B succeeds sometimes.

Eight HumanEval repo tasks the 0.5B solves some of the time (picked from `bench/agent_vs_direct.py` runs, both
solved and unsolved ones) and two bundled SWE-style bugs, which are beyond the 0.5B (it has solved none of the 12
in the runs measured so far): the quick start shows both what works and what does not. `--tasks bundled` runs all
twelve. The tasks keep their repositories (`bundled/humaneval`, `bundled/<project>`), which their own sources build.
"""

from __future__ import annotations

from pathlib import Path

from agent_selfevolve.fileio import write_text_atomic
from agent_selfevolve.infra import cache_root
from agent_selfevolve.sources.bundled import bundled_task_file
from agent_selfevolve.sources.humaneval import humaneval_task_file
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import load_tasks

HUMANEVAL_IDS = ["humaneval__0", "humaneval__1", "humaneval__9", "humaneval__11", "humaneval__12", "humaneval__26",
                 "humaneval__33", "humaneval__39"]
BUNDLED_IDS = ["bundled__inflection-1", "bundled__toolz-1"]
"""Hard on purpose: the 0.5B has not solved a bundled task; a stronger model (`--model openai:...`) does."""


def quickstart_task_file(cache_dir: Path | None = None) -> Path:
    """`<cache>/tasks/quickstart-v2.jsonl`, written from the HumanEval and bundled task files on first use (v2: the
    HumanEval tasks carry `test_timeout_s`)."""
    path = cache_root(cache_dir) / "tasks" / "quickstart-v2.jsonl"
    if path.exists():
        return path
    chosen = []
    for ids, source in ((HUMANEVAL_IDS, humaneval_task_file(cache_dir)), (BUNDLED_IDS, bundled_task_file())):
        by_id = {t.instance_id: t for t in load_tasks(source)}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"quickstart: {', '.join(missing)} not in {source}")
        chosen += [by_id[i] for i in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(t.model_dump_json(exclude_defaults=True) + "\n" for t in chosen))


register_task_source(TaskSource(
    "quickstart", quickstart_task_file,
    "the first command's tasks: 8 HumanEval repo tasks and 2 bundled SWE-style bugs (hard for the 0.5B)"))
