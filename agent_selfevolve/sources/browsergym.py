"""`--tasks browsergym-miniwob`: BrowserGym's MiniWoB suite (125 tasks x seeds 0-2) as web tasks.

The file is written once per installed BrowserGym version from its own task registry; each record is just the
`browsergym` spec, so the environment (`envs/browsergym_env.py`) runs BrowserGym's env and takes its reward.
Pick tasks with `--pattern 'click-(button|link)\\.'` or `--slice`.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from agent_selfevolve.browsergym_tasks import INSTALL_HINT, miniwob_task_names
from agent_selfevolve.infra import cache_root
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import TaskFileError

SEEDS = (0, 1, 2)


def miniwob_task_file(cache_dir: Path | None = None) -> Path:
    """`<cache>/tasks/browsergym-miniwob-<version>.jsonl`, written on first use."""
    try:
        version = metadata.version("browsergym-miniwob")
    except metadata.PackageNotFoundError:
        raise TaskFileError("browsergym-miniwob", INSTALL_HINT) from None
    path = cache_root(cache_dir) / "tasks" / f"browsergym-miniwob-{version}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"instance_id": f"browsergym.miniwob.{name}.{seed}",
                 "browsergym": {"task": f"miniwob.{name}", "seed": seed}}
                for name in miniwob_task_names() for seed in SEEDS]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(path)
    return path


register_task_source(TaskSource("browsergym-miniwob", miniwob_task_file,
                                "BrowserGym's MiniWoB++ suite (browsergym-miniwob), seeds 0-2, graded by BrowserGym"))
