"""The task factory's projects and git side: project specs (`sandboxes/factory/projects.json`, a pinned sdist,
a local repository), one local repository per project, task files, splits by project, and the task source.

`<cache>/repos/factory__<project>` holds the project's pristine tree as branch `upstream` (an sdist unpacked, or a
local repository's commit exported) and one tag per task, `factory__<project>-<hash>`: a child of `upstream` whose
tree has the mutated file and lacks the hidden test files. Commits are written with a fixed author, committer and
date and a neutral message (`<project> <version>`, the same for every task), so the same inputs give the same
hashes on every machine, and the agent's one-commit checkout says nothing about the bug. The repository can be
rebuilt from the recipe and the task file alone: each base tree is upstream with `test_patch` and `patch` reversed.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from agent_selfevolve.infra import Dist, cache_root, data_dir, fetch_dist, file_sha256, git
from agent_selfevolve.sources.build import BundledError, build_atomically, dist_dir, has_commits, locked
from agent_selfevolve.sources.registry import TaskSource, register_task_source
from agent_selfevolve.tasks import Task, load_tasks

PREFIX = "factory/"
ID_PREFIX = "factory__"
AUTOLOAD_OFF = "PYTEST_DISABLE_PLUGIN_AUTOLOAD"
SPLIT_SEEDS = (0, 1)
HELD_OUT_FRACTION = 0.3


def project_of(instance_id: str) -> str | None:
    """`factory__toolz-6faf925eab` -> 'toolz'; None for a task the factory did not make."""
    return instance_id.removeprefix(ID_PREFIX).rsplit("-", 1)[0] if instance_id.startswith(ID_PREFIX) else None


class FactoryError(BundledError):
    """A factory project cannot be fetched, built or tested as its recipe says."""


@dataclass
class ProjectSpec:
    """Where a project's code comes from (a pinned sdist or a local git repository) and how its tests run."""

    name: str
    version: str = ""
    pip_name: str = ""
    file: str = ""
    sha256: str = ""
    root: str = ""
    repo: str = ""
    commit: str = ""
    tests: list[str] = field(default_factory=lambda: ["."])
    pytest_args: list[str] = field(default_factory=list)
    import_name: str = ""
    exclude: list[str] = field(default_factory=list)
    """Path prefixes never mutated (vendored code, docs, build scripts)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dist(self) -> Dist:
        return Dist(self.pip_name or self.name, self.version, self.file, self.sha256)

    def test_cmd(self) -> str:
        """The grader's command for this project's tasks: pytest -rA as by default, with the project's options and
        without the host's auto-loaded plugins (they cost seconds per run here and are not the project's)."""
        extra = "".join(f"{shlex.quote(a)} " for a in self.pytest_args)
        return f"{AUTOLOAD_OFF}=1 {{python}} -m pytest --no-header -rA --tb=no -p no:cacheprovider {extra}{{tests}}"


def known_projects() -> dict[str, dict[str, Any]]:
    """`sandboxes/factory/projects.json`: the pinned projects `selfevolve tasks make NAME` knows."""
    return json.loads((data_dir("sandboxes") / "factory" / "projects.json").read_text())


def resolve_spec(project: str | None, sdist: str | None = None, sha: str | None = None, repo: Path | None = None,
                 tests: list[str] | None = None, pytest_args: list[str] | None = None, cache_dir: Path | None = None
                 ) -> ProjectSpec:
    """A project from `projects.json`, a local repository (its HEAD), or `name==version` from PyPI (pinned: the
    sha256 given, or the one the first download has, recorded in the recipe)."""
    if repo is not None:
        repo = repo.resolve()
        commit = git("rev-parse", "HEAD", cwd=repo).strip()
        spec = ProjectSpec(name=project or repo.name, version=commit[:12], repo=str(repo), commit=commit)
    elif sdist:
        name, _, version = sdist.partition("==")
        if not version:
            raise FactoryError(f"--sdist needs name==version, got {sdist!r}")
        file = fetch_dist(Dist(name, version, sha256=sha or ""), dist_dir(cache_dir))  # checks `sha` if given
        spec = ProjectSpec(name=project or name.replace("-", "_"), version=version, pip_name=name, file=file.name,
                           sha256=sha or file_sha256(file), root=file.name.removesuffix(".tar.gz").removesuffix(".zip"))
    else:
        known = known_projects()
        if project not in known:
            raise FactoryError(f"unknown factory project {project!r}; known: {', '.join(sorted(known))} (or give "
                               "--sdist name==version or --repo PATH)")
        spec = ProjectSpec.from_dict({"name": project, **known[project]})
    if tests:
        spec.tests = tests
    if pytest_args:
        spec.pytest_args = pytest_args
    return spec


def factory_dir(name: str, cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "factory" / name


def repo_dir(name: str, cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "repos" / f"factory__{name}"


def tasks_dir(cache_dir: Path | None = None) -> Path:
    return cache_root(cache_dir) / "tasks" / "factory"


def task_file(name: str, cache_dir: Path | None = None) -> Path:
    return tasks_dir(cache_dir) / f"{name}.jsonl"


def read_recipe(name: str, cache_dir: Path | None = None) -> dict[str, Any] | None:
    path = factory_dir(name, cache_dir) / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _hermetic_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", **(extra or {})}


def unpack(spec: ProjectSpec, dest: Path, cache_dir: Path | None = None) -> None:
    """The project's files in `dest` (which must not exist): the sdist's `root` folder, or the repo's commit."""
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        if spec.repo:
            proc = subprocess.run(["git", "archive", "--format=tar", spec.commit], cwd=spec.repo,
                                  capture_output=True, env=_hermetic_env(), timeout=600)
            if proc.returncode:
                raise FactoryError(f"git archive {spec.commit} in {spec.repo}: {proc.stderr.decode().strip()}")
            with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
                tar.extractall(tmp / "src", filter="data")
            os.rename(tmp / "src", dest)
        else:
            sdist = fetch_dist(spec.dist(), dist_dir(cache_dir))
            if sdist.name.endswith(".zip"):
                with zipfile.ZipFile(sdist) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(sdist) as tar:
                    tar.extractall(tmp, filter="data")
            os.rename(tmp / spec.root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit_upstream(spec: ProjectSpec, repo: Path) -> str:
    """Commit everything in `repo` (freshly unpacked) as branch `upstream`; deterministic."""
    git("init", "--quiet", "--initial-branch=upstream", cwd=repo, hermetic=True)
    git("add", "--all", "--force", cwd=repo, hermetic=True)
    tree = git("write-tree", cwd=repo, hermetic=True).strip()
    commit = git("commit-tree", tree, "-m", message(spec), cwd=repo, hermetic=True).strip()
    git("update-ref", "refs/heads/upstream", commit, cwd=repo, hermetic=True)
    return commit


def message(spec: ProjectSpec) -> str:
    return f"{spec.name} {spec.version}".strip()


def commit_task(repo: Path, upstream: str, path: str, mutant: bytes, hidden: list[str], text: str) -> str:
    """A child of `upstream` with `path` replaced by `mutant` and the `hidden` test files removed."""
    env = {"GIT_INDEX_FILE": str(repo / ".git" / f"factory-index-{os.getpid()}")}
    try:
        git("read-tree", upstream, cwd=repo, env=env, hermetic=True)
        mode = git("ls-tree", upstream, "--", path, cwd=repo, hermetic=True).split()[0]
        blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=mutant, capture_output=True,
                              check=True, env=_hermetic_env()).stdout.decode().strip()
        git("update-index", "--cacheinfo", f"{mode},{blob},{path}", cwd=repo, env=env, hermetic=True)
        if hidden:
            git("update-index", "--force-remove", "--", *hidden, cwd=repo, env=env, hermetic=True)
        tree = git("write-tree", cwd=repo, env=env, hermetic=True).strip()
        return git("commit-tree", tree, "-p", upstream, "-m", text, cwd=repo, hermetic=True).strip()
    finally:
        Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)


def diff(repo: Path, old: str, new: str, paths: list[str]) -> str:
    return git("diff", "--no-color", "--no-ext-diff", "--no-renames", old, new, "--", *paths, cwd=repo,
               hermetic=True)


def tag(repo: Path, name: str, commit: str) -> None:
    git("tag", "--force", name, commit, cwd=repo, hermetic=True)


def _rebuild(spec: ProjectSpec, upstream: str, tasks: list[Task], repo: Path, cache_dir: Path | None) -> None:
    unpack(spec, repo, cache_dir)
    got = commit_upstream(spec, repo)
    if got != upstream:
        raise FactoryError(f"{spec.name}: the unpacked source gives commit {got}, the recipe says {upstream}")
    env = {"GIT_INDEX_FILE": str(repo / ".git" / "rebuild-index")}
    for task in tasks:
        git("read-tree", upstream, cwd=repo, env=env, hermetic=True)
        for patch in (task.test_patch, task.patch):
            if patch:
                git("apply", "--cached", "-R", "-", cwd=repo, env=env, input=patch, hermetic=True)
        tree = git("write-tree", cwd=repo, env=env, hermetic=True).strip()
        commit = git("commit-tree", tree, "-p", upstream, "-m", message(spec), cwd=repo, hermetic=True).strip()
        if commit != task.base_commit:
            raise FactoryError(f"{task.instance_id}: rebuilding gives {commit}, the task says {task.base_commit}")
        tag(repo, task.instance_id, commit)


def factory_repo(name: str, cache_dir: Path | None = None) -> Path:
    """The project's repository with every task of its task file, rebuilt (atomically) when something is missing."""
    final = repo_dir(name, cache_dir)
    recipe = read_recipe(name, cache_dir)
    if recipe is None:
        raise FactoryError(f"no factory project {name!r} in {factory_dir(name, cache_dir)}: run "
                           f"`selfevolve tasks make {name}` first")
    tasks = load_tasks(task_file(name, cache_dir)) if task_file(name, cache_dir).is_file() else []
    with locked(final.name, cache_dir):
        if not has_commits(final, [recipe["upstream"], *(t.base_commit for t in tasks)]):
            spec = ProjectSpec.from_dict(recipe["spec"])
            build_atomically(final, lambda tmp: _rebuild(spec, recipe["upstream"], tasks, tmp, cache_dir))
    return final


def task_lines(tasks: list[Task]) -> str:
    """A task file's text: one task per line, defaults left out."""
    return "".join(json.dumps(t.model_dump(exclude_defaults=True)) + "\n" for t in tasks)


def write_tasks(name: str, tasks: list[Task], cache_dir: Path | None = None) -> Path:
    return write_text_atomic(task_file(name, cache_dir), task_lines(tasks))


BUNDLE_FORMAT = "agent-selfevolve factory bundle 1"


def bundle_path(name: str, folder: Path) -> Path:
    return folder / f"{name}.json.xz"


def write_bundle(name: str, folder: Path, cache_dir: Path | None = None) -> Path:
    """`<folder>/<name>.json.xz`: the project's recipe and task file, all another machine needs to have the same
    tasks without re-running the factory (hours for a slow test suite). Byte-identical for the same tasks."""
    recipe = read_recipe(name, cache_dir)
    if recipe is None or not task_file(name, cache_dir).is_file():
        raise FactoryError(f"no factory tasks of {name!r} on this machine: run `selfevolve tasks make {name}` first")
    tasks = [json.loads(line) for line in task_file(name, cache_dir).read_text().splitlines() if line.strip()]
    data = json.dumps({"format": BUNDLE_FORMAT, "project": name, "recipe": recipe, "tasks": tasks},
                      indent=0).encode()
    return write_bytes_atomic(bundle_path(name, folder), lzma.compress(data, preset=9))  # xz: tasks repeat test files


def read_bundle(path: Path) -> tuple[str, dict[str, Any], list[Task]]:
    """(project, recipe, tasks) of a bundle, checked: a bad bundle fails here naming the file and the field."""
    try:
        data = json.loads(lzma.decompress(path.read_bytes()))
    except (OSError, lzma.LZMAError, ValueError) as exc:
        raise FactoryError(f"{path}: not a factory bundle (xz-compressed JSON): {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise FactoryError(f"{path}: 'format' is not {BUNDLE_FORMAT!r}")
    name, recipe = data.get("project"), data.get("recipe")
    if not isinstance(name, str) or not name:
        raise FactoryError(f"{path}: 'project' must be a project name")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("spec"), dict) or not recipe.get("upstream"):
        raise FactoryError(f"{path}: 'recipe' needs 'spec' and 'upstream'")
    tasks: list[Task] = []
    for i, row in enumerate(data.get("tasks") or []):
        try:
            task = Task.model_validate(row)
        except ValueError as exc:
            raise FactoryError(f"{path}: tasks[{i}] is not a task: {exc}") from None
        if project_of(task.instance_id) != name or task.repo != f"{PREFIX}{name}":
            raise FactoryError(f"{path}: tasks[{i}] ({task.instance_id}) is not a task of {name!r}")
        tasks.append(task)
    if not tasks:
        raise FactoryError(f"{path}: 'tasks' is empty")
    return name, recipe, tasks


def install_bundle(path: Path, cache_dir: Path | None = None, replace: bool = False) -> tuple[str, int]:
    """Install a bundle's tasks in the cache after rebuilding the project's repository from the pinned source and
    checking every task's commit hash. A project already made with other tasks is left alone unless `replace`.
    Returns (project, number of tasks)."""
    name, recipe, tasks = read_bundle(path)
    existing = task_file(name, cache_dir)
    if existing.is_file() and not replace:
        if existing.read_text() == task_lines(tasks) and read_recipe(name, cache_dir) == recipe:
            return name, len(tasks)
        raise FactoryError(f"{name}: this machine already has other factory tasks of it ({existing}); "
                           "pass --replace to install the bundle's instead")
    spec, repo = ProjectSpec.from_dict(recipe["spec"]), repo_dir(name, cache_dir)
    with locked(repo.name, cache_dir):  # factory_repo's lock: no reader sees a half-installed project
        build_atomically(repo, lambda tmp: _rebuild(spec, recipe["upstream"], tasks, tmp, cache_dir))
        write_json_atomic(factory_dir(name, cache_dir) / "recipe.json", recipe)
        write_tasks(name, tasks, cache_dir)  # last: a project counts as made once its task file exists
    return name, len(tasks)


def projects_made(cache_dir: Path | None = None) -> list[str]:
    folder = tasks_dir(cache_dir)
    return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []


def split_projects(projects: list[str], seed: int, held_out_fraction: float = HELD_OUT_FRACTION
                   ) -> tuple[list[str], list[str]]:
    """(train, held_out) projects: ranked by a seeded hash, the first ~30% held out (at least one when there are
    two or more), so a model is measured on code it never trained on. Depends only on the seed and the names."""
    ranked = sorted(projects, key=lambda p: hashlib.sha256(f"factory-split:{seed}:{p}".encode()).hexdigest())
    k = max(1, round(len(ranked) * held_out_fraction)) if len(ranked) > 1 else 0
    return sorted(ranked[k:]), sorted(ranked[:k])


def split_task_file(seed: int, part: str, cache_dir: Path | None = None) -> Path:
    """`<cache>/tasks/factory-splits/s<seed>-<part>.jsonl`: the tasks of that part's projects, rewritten per call."""
    train, held_out = split_projects(projects_made(cache_dir), seed)
    chosen = train if part == "train" else held_out
    lines = [line for p in chosen for line in task_file(p, cache_dir).read_text().splitlines() if line.strip()]
    return write_text_atomic(cache_root(cache_dir) / "tasks" / "factory-splits" / f"s{seed}-{part}.jsonl",
                             "".join(line + "\n" for line in lines))


def _all_tasks_dir() -> Path:
    tasks_dir().mkdir(parents=True, exist_ok=True)
    return tasks_dir()


def register_project(name: str) -> None:
    """`--tasks factory:<name>`: one project's tasks."""
    register_task_source(TaskSource(f"factory:{name}", lambda: task_file(name),
                                    f"factory tasks of {name} (selfevolve tasks make)"), replace=True)


register_task_source(TaskSource(
    "factory", _all_tasks_dir, "tasks made by `selfevolve tasks make` from real projects' test suites",
    owns=lambda repo: repo.startswith(PREFIX),
    locate=lambda repo, cache_dir: factory_repo(repo.removeprefix(PREFIX), cache_dir)))
for _seed in SPLIT_SEEDS:
    for _part in ("train", "held-out"):
        register_task_source(TaskSource(
            f"factory-{_part}-s{_seed}", lambda s=_seed, p=_part: split_task_file(s, p),
            f"factory tasks of the {_part} projects of split seed {_seed}"))
for _name in projects_made():
    register_project(_name)
