"""Bundled SWE-style tasks: real sdists, real git, real pytest. Only the first run needs the registry (pip)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_selfevolve.infra import Dist, PackageDataError, cache_root, fetch_dist
from agent_selfevolve.sources import bundled
from agent_selfevolve.sources.build import BundledError, dist_dir
from agent_selfevolve.sources.bundled import bundled_repo, bundled_task_file, bundled_tasks
from agent_selfevolve.sources.check import validate_task

# Captured before conftest's autouse fixture points AGENT_SELFEVOLVE_CACHE at a fresh tmp dir for every test.
SDIST_STORE = cache_root()


def seed(cache: Path, *projects: str) -> Path:
    """A cache whose sdists/ holds the projects' pinned files (downloaded once into the real cache)."""
    (cache / "sdists").mkdir(parents=True, exist_ok=True)
    for project in projects:
        src = fetch_dist(Dist.of(bundled.recipe(project)), dist_dir(SDIST_STORE))
        if not (cache / "sdists" / src.name).exists():
            shutil.copy2(src, cache / "sdists" / src.name)
    return cache


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = seed(tmp_path_factory.mktemp("bundled-cache"), "toolz", "boltons")
    for project in ("toolz", "boltons"):
        bundled_repo(project, cache)
    return cache


def test_task_file_is_complete() -> None:
    tasks = bundled_tasks()
    projects = {t.repo for t in tasks}
    assert bundled_task_file() == Path(__file__).resolve().parents[1] / "sandboxes" / "swe" / "tasks.jsonl"
    assert len(tasks) >= 10 and len(projects) >= 6
    for t in tasks:
        project = t.repo.removeprefix("bundled/")
        assert re.fullmatch(rf"bundled__{project}-\d+", t.instance_id)
        assert re.fullmatch(r"[0-9a-f]{40}", t.base_commit)
        assert (bundled.SWE_DIR / project / f"bug-{t.instance_id.rsplit('-', 1)[1]}.diff").is_file()
        assert t.patch.startswith("diff --git a/") and "new file mode" in t.test_patch
        new_file = re.search(r"^\+\+\+ b/(\S+)", t.test_patch, re.M)[1]
        assert new_file in t.test_files and any(f.startswith(new_file + "::") for f in t.FAIL_TO_PASS)
        assert 5 <= len(t.PASS_TO_PASS) <= 20 and not set(t.PASS_TO_PASS) & set(t.FAIL_TO_PASS)
        assert {f.split("::")[0] for f in t.FAIL_TO_PASS + t.PASS_TO_PASS} <= set(t.test_files)
        assert t.version == bundled.recipe(project)["version"]


def test_build_gives_the_pinned_hashes(built: Path) -> None:
    repo = built / "repos" / "bundled__toolz"
    git = ["git", "-C", str(repo)]
    assert (repo / ".git").is_dir() and (repo / "toolz" / "dicttoolz.py").is_file()
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert head == bundled.recipe("toolz")["upstream_commit"]
    for task in bundled_tasks("toolz"):
        tag = subprocess.run([*git, "rev-parse", f"{task.instance_id}^{{commit}}"], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert tag == task.base_commit
    assert not subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout
    assert bundled_repo("toolz", built) == repo  # already built: reused, not rebuilt


@pytest.mark.parametrize("instance_id", ["bundled__toolz-2", "bundled__boltons-1"])
def test_task_validates(built: Path, instance_id: str) -> None:
    task = next(t for t in bundled_tasks() if t.instance_id == instance_id)
    check = validate_task(task, built, timeout=120)
    assert check.ok, check.problems
    assert check.counts["f2p_fail_base"] == len(task.FAIL_TO_PASS)
    assert check.counts["pass_gold"] == len(task.FAIL_TO_PASS) + len(task.PASS_TO_PASS)


def test_tampered_bug_diff_fails_clearly_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    swe = tmp_path / "swe"
    shutil.copytree(bundled.SWE_DIR, swe)
    diff = swe / "toolz" / "bug-2.diff"
    text = diff.read_text().replace("-                continue\n", "-                continue\n+                pass\n")
    diff.write_text(re.sub(r"^(@@ -\d+,\d+ \+\d+,)(\d+)", lambda m: f"{m[1]}{int(m[2]) + 1}", text, flags=re.M))
    monkeypatch.setattr(bundled, "SWE_DIR", swe)
    cache = seed(tmp_path / "cache", "toolz")
    with pytest.raises(BundledError, match=r"bundled__toolz-2: applying bug-2.diff gives commit [0-9a-f]{40}, but "
                                           r"tasks.jsonl says base_commit"):
        bundled_repo("toolz", cache)
    assert os.listdir(cache / "repos") == []  # no repo, no temp dir


def test_unknown_project_and_missing_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BundledError, match="no bundled project 'nope'"):
        bundled_repo("nope", tmp_path)
    empty = tmp_path / "no-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(PackageDataError, match="registry .*is needed once"):
        fetch_dist(Dist.of(bundled.recipe("toolz")), dist_dir(tmp_path / "fresh"))
    assert not list((tmp_path / "fresh" / "sdists").iterdir())


def test_recipes_match_task_projects() -> None:
    projects = {t.repo.removeprefix("bundled/") for t in bundled_tasks()}
    on_disk = {p.parent.name for p in bundled.SWE_DIR.glob("*/recipe.json")}
    assert projects == on_disk
    for project in projects:
        spec = json.loads((bundled.SWE_DIR / project / "recipe.json").read_text())
        assert {"name", "version", "file", "sha256", "root", "upstream_commit"} <= spec.keys()
