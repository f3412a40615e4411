"""The evolution proof's plan and data: its config, the frozen train / held-out split, the units of work, and the
small result files that make it resumable on a fresh machine (see bench/evolve_proof.py for the run itself).

Everything under `<out>/seed<s>/` is meant to be committed: config.json and split.json (written once, checked
on every later run), per-task outcome JSONL that grows as tasks finish, the dataset rows each search produced,
and one summary per finished unit. Adapters and SQLite stores live under the work folder and are never committed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.infra import file_sha256
from agent_selfevolve.sources.factory_repo import project_of
from agent_selfevolve.tasks import Task
from agent_selfevolve.train.dataset import ROW_KINDS as ROW_KINDS  # the dataset's own, for the proof's modules

SEARCH_ARM = "sft"
"""The arm whose adapters do the searching: every arm trains on the same search data (an ablation arm differs
from it only in the kinds of rows it trains on)."""
ARMS = {"sft": ("sft",), "sft+recovery": ("sft", "recovery"), "sft+dpo": ("sft", "dpo"),
        "sft+recovery+dpo": ("sft", "recovery", "dpo"), "sft+rationalized": ("sft", "rationalized")}
DPO_RECIPES: dict[str, dict[str, Any]] = {"dpo": {}, "rpo": {"dpo_sft_weight": 1.0, "epochs": 1}}
"""How an arm's DPO stage trains (TrainConfig overrides for that stage), named in the arm where 'dpo' would be
('sft+rpo'): 'dpo' as the proof's train config says; 'rpo' adds the chosen reply's mean NLL to the loss (RPO, Pang
et al. 2024) and runs one epoch. Plain DPO on seed 0's 67 pairs drove its loss from 0.70 to 1e-7 in two epochs."""
MIXED = "-mixed"
"""Suffix of an arm that trains only on rows of tasks whose samples in that search had mixed outcomes (a success
beside a failure): the successes the policy was not sure of. Rows of tasks every sample solved are what the policy
writes anyway (seed 0's base wrote them at a perplexity of 1.06), and training on them mostly sharpens it."""


def _as_plain_dpo(arm: str) -> str:
    """`arm` without its -mixed suffix, its DPO stage named plain 'dpo' whatever the recipe ('sft+rpo' -> 'sft+dpo')."""
    return "+".join("dpo" if part in DPO_RECIPES else part for part in arm.removesuffix(MIXED).split("+"))


def arm_kinds(arm: str) -> tuple[str, ...]:
    """The row kinds an arm trains on ('sft+dpo-mixed': sft and dpo, of mixed tasks only; 'sft+rpo': sft and dpo)."""
    kinds = ARMS.get(_as_plain_dpo(arm))
    if kinds is None:
        raise ProofError(f"unknown arm {arm!r}: one of {', '.join(ARMS)}, each optionally ending in {MIXED!r}")
    return kinds


def arm_dpo_overrides(arm: str) -> dict[str, Any]:
    """The DPO stage's TrainConfig overrides of an arm ({} for plain DPO or an arm without DPO)."""
    arm_kinds(arm)  # an unknown arm fails here, by name
    return next((dict(DPO_RECIPES[part]) for part in arm.removesuffix(MIXED).split("+") if part in DPO_RECIPES), {})


def plain_dpo_arm(arm: str) -> str | None:
    """The arm that differs from `arm` only by training its DPO stage as plain DPO ('sft+rpo' -> 'sft+dpo'), or
    None where `arm` has no other recipe: the pair that says what the recipe itself changed."""
    plain = _as_plain_dpo(arm)
    if plain == arm.removesuffix(MIXED):  # no recipe other than plain DPO
        return None
    return plain + (MIXED if arm.endswith(MIXED) else "")


def mixed_tasks(records: Iterable[dict[str, Any]]) -> set[str]:
    """Tasks of one search (its tasks.jsonl records) whose samples both passed and failed the training tests."""
    return {r["task_id"] for r in records if len(set(r.get("attempts") or [])) > 1}


class ProofError(RuntimeError):
    """The committed results and this run disagree (changed config, tampered rows, a task that moved splits)."""


class OutOfTime(Exception):
    """The next piece of work would not finish before --until-minutes: stop cleanly, resume later."""


@dataclass
class ProofConfig:
    """Everything that decides a seed's numbers; written to seed<s>/config.json on the first run and compared
    on every later one (runtime options such as threads are not here)."""

    seed: int
    episodes: int = 3
    humaneval_held_out: int = 64
    humaneval_train: int = 100
    factory_held_out: int = 64
    factory_train: int = 100
    factory_levels: list[str] = field(default_factory=lambda: ["easy", "medium", "hard"])
    samples_per_task: int = 1
    """Best-of-N attempts per training task and episode; more at a higher temperature give siblings with mixed
    outcomes, which DPO pairs and recovery rows need."""
    temperature: float = 0.8
    max_steps: int = 6
    profile: str = "selfcheck"
    model: str = "qwen2.5-coder-0.5b"
    init: str = "base"
    """'base': each episode's LoRA starts from the base model on the rows of every episode so far (STaR's
    choice; a lost adapter is re-derived by one training). 'previous': it continues the previous episode's
    adapter (evolve.py's choice; re-deriving episode k retrains 0..k)."""
    train: dict[str, Any] = field(default_factory=lambda: {"rank": 16, "alpha": 32, "lr": 2e-4, "epochs": 2,
                                                           "max_length": 4096})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProofConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_config(seed_dir: Path, seed: int, given: dict[str, Any]) -> ProofConfig:
    """The seed's committed config, checked against the options given now (None: not given); written on the
    first run. A different value for a committed option is an error: it would mix two experiments."""
    path = seed_dir / "config.json"
    given = {k: v for k, v in given.items() if v is not None}
    if path.exists():
        config = ProofConfig.from_dict(json.loads(path.read_text()))
        clash = {k: (getattr(config, k), v) for k, v in given.items() if getattr(config, k) != v}
        if clash:
            raise ProofError(f"{path} was started with other options: " + ", ".join(
                f"{k}={old!r} (given {new!r})" for k, (old, new) in clash.items()) + "; drop them to resume, or "
                "use another --out for another experiment")
        return config
    config = ProofConfig(seed=seed, **given)
    if config.init not in ("base", "previous"):
        raise ProofError(f"init must be 'base' or 'previous', not {config.init!r}")
    write_json_atomic(path, config.to_dict())
    return config


# -- the code -----------------------------------------------------------------------------------------------------

TREE_FILE = "AGENT_TREE.json"
"""At a checkout's root: the recipe bench/agent_tree.py built it from (base commit + later files), for code.json."""


def code_fingerprint(tree: Path | None = None) -> str:
    """sha256 over the agent's code: the package's files and its `tools/` bundles, as imported (or of the checkout
    `tree`). Episodes are paired against the base model's evaluation, so a change in how an attempt runs would
    count as a gain (or a loss)."""
    import agent_selfevolve
    from agent_selfevolve.infra import data_dir

    roots = (tree / "agent_selfevolve", tree / "tools") if tree is not None else \
        (Path(agent_selfevolve.__file__).parent, data_dir("tools"))
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                           and p.suffix not in (".pyc", ".pyo")):
            digest.update(f"{root.name}/{path.relative_to(root)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def check_code(seed_dir: Path, note: str, allow_change: bool = False, checkout: Path | None = None) -> None:
    """`code.json` holds the fingerprint the seed runs with (written by its first run); a run whose code differs
    stops here, naming what to run instead, unless `allow_change` (then the change is recorded beside the old)."""
    path, now = seed_dir / "code.json", code_fingerprint()
    record = json.loads(path.read_text()) if path.exists() else None
    tree_file = (checkout or Path(__file__).resolve().parents[1]) / TREE_FILE
    tree = {"tree": json.loads(tree_file.read_text())} if tree_file.exists() else {}
    if record is None or (allow_change and record["fingerprint"] != now):
        history = (record or {}).get("history", []) + ([{k: record[k] for k in ("fingerprint", "note", "tree")
                                                         if k in record}] if record else [])
        write_json_atomic(path, {"fingerprint": now, "note": note, **tree, "history": history})
    elif record["fingerprint"] != now:
        raise ProofError(f"the agent's code differs from the one {seed_dir.name} runs with ({path}: {record['note']})"
                         ": a gain would mix training with the change. Run this seed on that code (`python "
                         f"bench/agent_tree.py --seed {seed_dir.name.removeprefix('seed')} DIR`, then run from DIR), "
                         "or pass --allow-code-change to record the change and go on")
    elif tree and "tree" not in record:  # the recipe of the code it already runs on, recorded once
        write_json_atomic(path, {**record, **tree})


# -- the split ----------------------------------------------------------------------------------------------------

@dataclass
class Pools:
    """Where a split's tasks come from: HumanEval repo tasks, and factory tasks of the train and held-out
    projects of the factory's own split seed (`factory-train-s<seed>` / `factory-held-out-s<seed>`)."""

    humaneval: list[Task]
    factory_train: list[Task]
    factory_held: list[Task]

    def by_id(self) -> dict[str, Task]:
        return {t.instance_id: t for t in [*self.humaneval, *self.factory_train, *self.factory_held]}


def make_split(config: ProofConfig, pools: Pools) -> dict[str, Any]:
    """Seeded, disjoint train / held-out task ids per suite. Factory tasks are held out by project: the held-out
    tasks come only from the held-out projects, the training tasks only from the others."""
    rng = random.Random(f"evolve-proof:{config.seed}")
    he = sorted(t.instance_id for t in pools.humaneval)
    rng.shuffle(he)
    n_he = config.humaneval_held_out + config.humaneval_train
    if n_he > len(he):
        raise ProofError(f"{n_he} HumanEval tasks asked for, {len(he)} exist")
    levels = set(config.factory_levels)

    def pick(tasks: list[Task], n: int, what: str) -> list[str]:
        ids = sorted(t.instance_id for t in tasks if getattr(t, "difficulty", None) in levels)
        if n > len(ids):
            raise ProofError(f"{n} factory {what} tasks asked for ({'/'.join(sorted(levels))}), {len(ids)} exist: "
                             "make more with `selfevolve tasks make PROJECT`")
        rng.shuffle(ids)
        return sorted(ids[:n])

    held_projects = sorted({project_of(t.instance_id) or "" for t in pools.factory_held})
    split = {"seed": config.seed,
             "humaneval": {"held_out": he[:config.humaneval_held_out],
                           "train": he[config.humaneval_held_out:n_he]},
             "factory": {"held_out": pick(pools.factory_held, config.factory_held_out, "held-out"),
                         "train": pick(pools.factory_train, config.factory_train, "training"),
                         "held_out_projects": held_projects if config.factory_held_out else [],
                         "train_projects": sorted({project_of(t.instance_id) or ""
                                                   for t in pools.factory_train}) if config.factory_train else []}}
    check_split(split)
    return split


def held_out_ids(split: dict[str, Any]) -> list[str]:
    return [*split["humaneval"]["held_out"], *split["factory"]["held_out"]]


def train_ids(split: dict[str, Any]) -> list[str]:
    return [*split["humaneval"]["train"], *split["factory"]["train"]]


def check_split(split: dict[str, Any]) -> None:
    held, train = set(held_out_ids(split)), set(train_ids(split))
    if held & train:
        raise ProofError(f"tasks both held out and trained on: {sorted(held & train)[:5]}")
    leaked = {project_of(t) for t in train} & set(split["factory"]["held_out_projects"])
    if leaked:
        raise ProofError(f"training tasks from held-out factory projects: {sorted(p for p in leaked if p)}")


def load_split(seed_dir: Path, config: ProofConfig, pools: Pools) -> tuple[dict[str, Any], dict[str, Task]]:
    """The committed split (made and written on the first run) and its tasks by id. Tasks are found by id, so a
    project made later (which moves the factory's own project split) does not move a committed task."""
    path = seed_dir / "split.json"
    if path.exists():
        split = json.loads(path.read_text())
        check_split(split)
    else:
        split = make_split(config, pools)
        write_json_atomic(path, split)
    known = pools.by_id()
    wanted = [*held_out_ids(split), *train_ids(split)]
    missing = [i for i in wanted if i not in known]
    if missing:
        projects = sorted({project_of(i) or "humaneval" for i in missing})
        raise ProofError(f"{len(missing)} tasks of {path} are not on this machine ({', '.join(missing[:4])}...); "
                         "install them first: selfevolve tasks install " + " ".join(
                             f"bench/results/factory-tasks/{p}.json.xz" for p in projects if p != "humaneval")
                         + " (or `selfevolve tasks make PROJECT --seed 0`)")
    return split, {i: known[i] for i in wanted}


# -- units --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    kind: str
    """'eval', 'search' or 'train'."""
    episode: int | None = None
    """None: the base model's held-out evaluation."""
    arm: str | None = None
    draw: int = 0
    """The base's evaluation again with revision seeds offset by `draw` (an A/A test of one attempt's luck: the
    first turn is greedy, revisions are sampled); 0 is the evaluation every episode is paired with."""

    @property
    def base_label(self) -> str:
        """The base evaluation's folder and run label: 'base', or 'base-draw<d>' for another draw."""
        return "base" + (f"-draw{self.draw}" if self.draw else "")

    @property
    def name(self) -> str:
        if self.episode is None:
            return "base-eval" + (f"-draw{self.draw}" if self.draw else "")
        return f"search-ep{self.episode}" if self.kind == "search" else f"{self.kind}-ep{self.episode}[{self.arm}]"


def plan(config: ProofConfig, arm: str, at_episode: int | None = None, base_draws: int = 1) -> list[Unit]:
    """Base eval, then per episode: search (by the search arm's previous adapter), train, eval. An ablation arm
    also needs the search arm's previous adapter trained before it can search.

    `at_episode` (ablation arms only): train and evaluate the arm at that episode alone. With init 'base' each
    episode's adapter is trained from the base on every row so far, so the arm's earlier adapters are never
    inputs, and skipping them saves two thirds of an arm's cost over three episodes.

    `base_draws` > 1: the base is evaluated that many times, each draw with its own revision seeds, to show how
    many held-out tasks flip between two draws of one policy (episodes are paired with draw 0 only)."""
    if base_draws < 1:
        raise ProofError(f"base_draws must be at least 1, not {base_draws}")
    if at_episode is not None:
        if arm == SEARCH_ARM:
            raise ProofError(f"at_episode is for ablation arms; the search arm '{SEARCH_ARM}' needs every episode")
        if config.init != "base":
            raise ProofError(f"at_episode needs init 'base' (this seed's is {config.init!r}: each adapter "
                             "continues the previous one, so the arm needs every episode)")
        if not 0 <= at_episode < config.episodes:
            raise ProofError(f"at_episode {at_episode} is not one of this seed's episodes 0..{config.episodes - 1}")
    last = config.episodes - 1 if at_episode is None else at_episode
    units = [Unit("eval", draw=d) for d in range(base_draws)]
    for k in range(last + 1):
        if k > 0 and arm != SEARCH_ARM:
            units.append(Unit("train", k - 1, SEARCH_ARM))
        units.append(Unit("search", k))
        if at_episode is None or k == at_episode:
            units += [Unit("train", k, arm), Unit("eval", k, arm)]
    return units


def unit_dir(seed_dir: Path, unit: Unit) -> Path:
    if unit.episode is None:
        return seed_dir / unit.base_label
    return seed_dir / f"ep{unit.episode}" / ("search" if unit.kind == "search" else unit.arm or "")


def unit_done(seed_dir: Path, unit: Unit) -> bool:
    return (unit_dir(seed_dir, unit) / ("train.json" if unit.kind == "train" else "summary.json")).exists()


# -- records ------------------------------------------------------------------------------------------------------

def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a torn last line (a kill mid-append) is ignored, as if that task had not finished."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(rest.strip() for rest in lines[i + 1:]):
                raise ProofError(f"{path}:{i + 1}: not JSON (and not the last line)") from None
    return out


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One finished task, appended and fsynced; a torn tail from an earlier kill is cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fh.seek(0, 2)
        if fh.tell():
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                fh.truncate(cut)
        fh.seek(0, 2)
        fh.write((json.dumps(record, sort_keys=True, default=str) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows_sha256(path: Path) -> str:
    """sha256 of a rows file's decoded text: the digest every search summary and train hash recorded, so it stays
    (the bytes' digest, `infra.file_sha256`, differs for a file with CRLF line ends)."""
    return sha256_text(path.read_text(encoding="utf-8"))


def weights_hash(adapter_dir: Path) -> str:
    """sha256 of an adapter's weights file alone: what 'the same adapter' means across machines and installs."""
    return file_sha256(adapter_dir / "adapter_model.safetensors")


def acting_training(seed_dir: Path, arm: str, k: int) -> tuple[int, dict[str, Any]] | None:
    """(episode, train.json) of the adapter that acts for `arm` at episode k: a skipped training (no rows) leaves
    the one before; None when none was trained (the base acts)."""
    while k >= 0:
        info = json.loads((unit_dir(seed_dir, Unit("train", k, arm)) / "train.json").read_text())
        if not info.get("skipped"):
            return k, info
        k -= 1
    return None


def same_weights(adapter_dir: Path, recorded_adapter_hash: str) -> bool:
    """Whether `adapter_dir` holds the weights of the adapter whose registry hash was recorded (train.json written
    before weights were hashed alone). That hash also covers adapter_config.json, whose `target_modules` peft
    writes from a set, in an order that changes with each process's string hashing: the weights are the same when
    some order of that list gives the recorded hash back (7 modules: 5,040 hashes of a small file)."""
    weights = weights_hash(adapter_dir)

    def registry_hash(config_text: str) -> str:  # registry.adapter_hash's formula, on a config given as text
        # (the proof's pinned agent has no such function to call; the module-order test checks the two agree)
        h = hashlib.sha256()
        for name, digest in (("adapter_config.json", sha256_text(config_text)), ("adapter_model.safetensors",
                                                                                  weights)):
            h.update(name.encode())
            h.update(digest.encode())
        return h.hexdigest()

    raw = (adapter_dir / "adapter_config.json").read_text()
    if registry_hash(raw) == recorded_adapter_hash:
        return True
    data = json.loads(raw)
    modules = data.get("target_modules")
    if not isinstance(modules, list) or len(modules) > 8 or json.dumps(data, indent=2, sort_keys=True) != raw:
        return False  # not peft's layout, or too many orders: only the exact hash counts
    return any(registry_hash(json.dumps({**data, "target_modules": list(order)}, indent=2, sort_keys=True))
               == recorded_adapter_hash for order in itertools.permutations(modules))


def check_rows(rows: Iterable[dict[str, Any]], split: dict[str, Any], where: str) -> None:
    """Every training row must come from a training task: never a held-out task, never a held-out project."""
    held, train = set(held_out_ids(split)), set(train_ids(split))
    projects = set(split["factory"]["held_out_projects"])
    for i, row in enumerate(rows):
        task_id = (row.get("meta") or {}).get("task_id")
        if task_id in held or project_of(str(task_id)) in projects or task_id not in train:
            raise ProofError(f"{where}: row {i} comes from task {task_id!r}, which is not a training task")
