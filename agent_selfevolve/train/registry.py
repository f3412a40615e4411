"""The adapter registry: immutable, versioned LoRA adapters `name@N` with their lineage, on disk + SQLite.

Each version records what it is (adapter files + their hash), what it was trained from (base model id and hash,
parent adapter, data hashes, config) and how training went (metrics). Versions are never overwritten: files are
made read-only and a new registration always gets N+1.

Consistency under crashes: files are copied into a staging directory first; then, inside one SQLite write
transaction, the staging directory is renamed to `adapters/<name>/<N>` and the index row inserted. A crash
before the commit leaves at most an unindexed directory, which the next registration of that version replaces
and `check()` reports; the index never points at missing or half-written files.

A name is bound to the base model of its first version: registering (or exporting against) a different base is
refused, because a LoRA delta applied to the wrong weights produces a silently broken model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_json_atomic
from agent_selfevolve.infra import Dist, PackageDataError, cache_root, fetch_dist, pid_alive
from agent_selfevolve.train._subprocess import spawn
from agent_selfevolve.train.base_model import base_model_identity, file_sha256

SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
  name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, adapter_hash TEXT NOT NULL,
  base_model_id TEXT NOT NULL, base_model_hash TEXT NOT NULL, parent TEXT, data_hashes TEXT NOT NULL,
  config TEXT NOT NULL, metrics TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (name, version));
"""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_SDIST = Dist("llama-cpp-python", LLAMA_CPP_VERSION, f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz",
                       "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
"""Its vendored llama.cpp has convert_lora_to_gguf.py (the sha256 is PyPI's)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RegistryError(ValueError):
    """A bad reference, a missing adapter, or an inconsistent registration."""


class BaseModelMismatchError(RegistryError):
    """The adapter, its parent, or the base given for export come from a different base model."""


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: int
    path: Path
    adapter_hash: str
    base_model_id: str
    base_model_hash: str
    parent: str | None = None
    data_hashes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'policy@3' -> ('policy', 3); 'policy' or 'policy@latest' -> ('policy', None)."""
    name, _, ver = ref.partition("@")
    if not NAME_RE.match(name) or (ver and ver != "latest" and not ver.isdigit()):
        raise RegistryError(f"bad adapter reference '{ref}': use name@N, e.g. policy@3")
    return name, int(ver) if ver and ver != "latest" else None


SET_VALUED = ("target_modules", "exclude_modules")
"""adapter_config.json fields peft keeps as Python sets: it writes them in an order that varies with the
process's string hashing (PYTHONHASHSEED), so the same training gave another adapter hash in every process."""


def canonicalize_config(adapter_dir: Path) -> None:
    """Sort the set-valued lists of adapter_config.json in place (peft reads them back as sets either way)."""
    path = adapter_dir / ADAPTER_FILES[0]
    data = json.loads(path.read_text())
    for key in SET_VALUED:
        if isinstance(data.get(key), list) and all(isinstance(x, str) for x in data[key]):
            data[key] = sorted(data[key])
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def adapter_hash(adapter_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        h.update(name.encode())
        h.update(file_sha256(adapter_dir / name).encode())
    return h.hexdigest()


def _readonly(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


class AdapterRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)
        (self.root / ".staging").mkdir(exist_ok=True)
        self._conn = sqlite3.connect(str(self.root / "index.sqlite"), timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- reading ----------------------------------------------------------------------------------------------
    def _row(self, r: tuple[Any, ...]) -> AdapterVersion:
        return AdapterVersion(r[0], r[1], self.root / r[2], r[3], r[4], r[5], r[6], json.loads(r[7]),
                              json.loads(r[8]), json.loads(r[9]), r[10])

    _COLS = ("name, version, path, adapter_hash, base_model_id, base_model_hash, parent, data_hashes, config, "
             "metrics, created_at")

    def versions(self, name: str) -> list[AdapterVersion]:
        rows = self._conn.execute(f"SELECT {self._COLS} FROM adapters WHERE name=? ORDER BY version", (name,))
        return [self._row(r) for r in rows]

    def names(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT name FROM adapters ORDER BY name")]

    def latest(self, name: str) -> AdapterVersion | None:
        r = self._conn.execute(f"SELECT {self._COLS} FROM adapters WHERE name=? ORDER BY version DESC LIMIT 1",
                               (name,)).fetchone()
        return self._row(r) if r else None

    def get(self, ref: str) -> AdapterVersion:
        name, ver = parse_ref(ref)
        if ver is None:
            found = self.latest(name)
        else:
            r = self._conn.execute(f"SELECT {self._COLS} FROM adapters WHERE name=? AND version=?",
                                   (name, ver)).fetchone()
            found = self._row(r) if r else None
        if found is None:
            raise RegistryError(f"no adapter '{ref}' in {self.root}")
        return found

    def lineage(self, ref: str) -> list[AdapterVersion]:
        """This version, its parent, the parent's parent... (newest first)."""
        chain: list[AdapterVersion] = []
        cur: str | None = ref
        while cur is not None:
            v = self.get(cur)
            if any(c.ref == v.ref for c in chain):
                raise RegistryError(f"lineage cycle at {v.ref}")
            chain.append(v)
            cur = v.parent
        return chain

    # -- writing ----------------------------------------------------------------------------------------------
    def staging_path(self, name: str = "run") -> Path:
        """A fresh path under the registry to train into (so killed runs leave debris only in .staging)."""
        return self.root / ".staging" / f"{name}-{uuid.uuid4().hex[:8]}"

    def resume_path(self, key: str) -> Path:
        """Where a training known by `key` keeps its resumable state (`train_sft_then_dpo(resume_dir=...)`): the
        same key finds it again after a kill or a pause; remove it once the adapter is registered."""
        return self.root / ".resume" / re.sub(r"[^A-Za-z0-9_.-]", "-", key)

    def register(self, name: str, adapter_dir: str | Path, *, base_model: dict[str, str] | None = None,
                 parent: str | None = None, data_hashes: Iterable[str] = (), config: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None) -> AdapterVersion:
        """Copy a peft adapter directory in as `name@N+1`. base_model/config/metrics default to the
        `train_metrics.json` our trainer writes next to the adapter."""
        if not NAME_RE.match(name):
            raise RegistryError(f"bad adapter name '{name}'")
        src = Path(adapter_dir)
        missing = [f for f in ADAPTER_FILES if not (src / f).exists()]
        if missing:
            raise RegistryError(f"{src} is not a peft adapter directory (missing {', '.join(missing)})")
        trained = json.loads((src / "train_metrics.json").read_text()) if (src / "train_metrics.json").exists() \
            else {}
        base = base_model or trained.get("base_model")
        if not base or not base.get("hash"):
            raise RegistryError("base_model {'id', 'hash'} is required (not found in train_metrics.json)")
        if trained.get("base_model") and trained["base_model"].get("hash") != base["hash"]:
            raise BaseModelMismatchError(f"{src} was trained on base {trained['base_model']}, not {base}")
        self._check_base(name, parent, base)
        hashes = list(data_hashes) or ([trained["data_hash"]] if trained.get("data_hash") else [])
        config = config if config is not None else trained.get("config", {})
        metrics = metrics if metrics is not None else {k: v for k, v in trained.items()
                                                       if k not in ("config", "base_model", "adapter_dir")}
        stage = self.root / ".staging" / f"reg-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, stage)
            canonicalize_config(stage)
            digest = adapter_hash(stage)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = 1 + (self._conn.execute("SELECT MAX(version) FROM adapters WHERE name=?",
                                                  (name,)).fetchone()[0] or 0)
                rel = Path("adapters") / name / str(version)
                entry = AdapterVersion(name, version, self.root / rel, digest, str(base.get("id", "")),
                                       str(base["hash"]), parent, hashes, config, metrics, time.time())
                write_json_atomic(stage / "registry.json", {**asdict(entry), "path": str(rel)})
                _readonly(stage)
                final = self.root / rel
                if final.exists():  # an orphan from a crash between rename and commit
                    shutil.rmtree(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stage, final)
                try:
                    self._conn.execute(
                        "INSERT INTO adapters VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (name, version, str(rel), digest, entry.base_model_id, entry.base_model_hash, parent,
                         json.dumps(hashes), json.dumps(config, default=str), json.dumps(metrics, default=str),
                         entry.created_at))
                    self._conn.execute("COMMIT")
                except BaseException:
                    shutil.rmtree(final, ignore_errors=True)
                    raise
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return entry

    def _check_base(self, name: str, parent: str | None, base: dict[str, str]) -> None:
        first = self._conn.execute("SELECT base_model_id, base_model_hash FROM adapters WHERE name=? "
                                   "ORDER BY version LIMIT 1", (name,)).fetchone()
        if first and first[1] != base["hash"]:
            raise BaseModelMismatchError(f"'{name}' adapters are for base {first[0]} ({first[1][:12]}); this one is "
                                         f"for {base.get('id')} ({base['hash'][:12]}). Use a new name.")
        if parent is not None:
            p = self.get(parent)
            if p.base_model_hash != base["hash"]:
                raise BaseModelMismatchError(f"parent {parent} is for base {p.base_model_id} "
                                             f"({p.base_model_hash[:12]}), not {base.get('id')}")

    def check_base(self, ref: str, base_hf_dir: str | Path) -> AdapterVersion:
        """The entry, if `base_hf_dir` is the base it was trained on; BaseModelMismatchError otherwise."""
        v = self.get(ref)
        ident = base_model_identity(base_hf_dir)
        if ident["hash"] != v.base_model_hash:
            raise BaseModelMismatchError(f"{ref} was trained on {v.base_model_id} ({v.base_model_hash[:12]}); "
                                         f"{base_hf_dir} is {ident['id']} ({ident['hash'][:12]})")
        return v

    # -- upkeep -----------------------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems, if any: indexed versions with missing or altered files, unindexed version directories."""
        problems = []
        indexed = set()
        for name in self.names():
            for v in self.versions(name):
                indexed.add(v.path.resolve())
                if not all((v.path / f).exists() for f in ADAPTER_FILES):
                    problems.append(f"{v.ref}: files missing under {v.path}")
                elif adapter_hash(v.path) != v.adapter_hash:
                    problems.append(f"{v.ref}: files changed since registration")
        for d in (self.root / "adapters").glob("*/*"):
            if d.is_dir() and d.resolve() not in indexed:
                problems.append(f"unindexed directory {d}")
        return problems

    def clean_staging(self, min_age_s: float = 3600.0) -> int:
        """Remove debris of killed runs from .staging: entries whose owner process is gone, or, without an
        owner.pid, older than `min_age_s`. Returns how many were removed."""
        n = 0
        for d in (self.root / ".staging").iterdir():
            owner = next(iter(d.glob("**/owner.pid")), None) if d.is_dir() else None
            text = owner.read_text().strip() if owner else ""
            if text.isdigit() and pid_alive(int(text)):
                continue
            if not text and time.time() - d.stat().st_mtime < min_age_s:
                continue
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
            n += 1
        return n

    # -- export -----------------------------------------------------------------------------------------------
    def export_peft(self, ref: str, out_dir: str | Path) -> Path:
        """A writable copy of the adapter as a plain peft directory (PeftModel.from_pretrained reads it)."""
        v = self.get(ref)
        out = Path(out_dir)
        if out.exists():
            _raise_exists(out)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(v.path, tmp)
            for p in tmp.rglob("*"):
                if p.is_file():
                    p.chmod(0o644)
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def export_gguf(self, ref: str, base_hf_dir: str | Path, out_path: str | Path, outtype: str = "f16",
                    cache_dir: str | Path | None = None) -> Path:
        """A GGUF LoRA for llama.cpp (`Llama(lora_path=...)`), via llama.cpp's own convert_lora_to_gguf.py."""
        v = self.check_base(ref, base_hf_dir)
        script = llama_cpp_convert_script(cache_dir)
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        proc = subprocess.run([sys.executable, str(script), "--base", str(base_hf_dir), "--outtype", outtype,
                               "--outfile", str(tmp), str(v.path)], capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            raise RegistryError(f"convert_lora_to_gguf failed for {ref}:\n{proc.stderr[-3000:]}")
        os.replace(tmp, out)
        return out

    def export_merged(self, ref: str, base_hf_dir: str | Path, out_dir: str | Path, in_process: bool = False) -> Path:
        """Base + adapter merged into plain weights (merge_and_unload), saved with the tokenizer."""
        v = self.check_base(ref, base_hf_dir)
        out = Path(out_dir)
        if out.exists():
            _raise_exists(out)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        args = {"base_dir": str(base_hf_dir), "adapter_dir": str(v.path), "out_dir": str(tmp), "ref": v.ref}
        try:
            if in_process:
                _merge(**args)
            else:
                spawn("agent_selfevolve.train.registry:_merge", args, tmp.with_suffix(".result.json")).wait()
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.with_suffix(".result.json").unlink(missing_ok=True)
        return out


def _raise_exists(path: Path) -> None:
    raise FileExistsError(f"{path} exists; export to a new path")


def _merge(base_dir: str, adapter_dir: str, out_dir: str, ref: str) -> dict[str, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    write_json_atomic(Path(out_dir) / "merged.json", {"adapter": ref, "base": base_model_identity(base_dir)})
    return {"ok": True}


def _find_sdist(cache: Path) -> Path:
    for cand in (os.environ.get("AGENT_SELFEVOLVE_LLAMA_CPP_SDIST"), Path("/tmp/llsrc") / LLAMA_CPP_SDIST.file):
        if cand and Path(cand).exists():
            return Path(cand)
    try:
        return fetch_dist(LLAMA_CPP_SDIST, cache)
    except PackageDataError as exc:
        raise RegistryError(f"cannot find the llama-cpp-python {LLAMA_CPP_VERSION} sdist (set "
                            f"AGENT_SELFEVOLVE_LLAMA_CPP_SDIST): {exc}") from exc


def llama_cpp_convert_script(cache_dir: str | Path | None = None) -> Path:
    """convert_lora_to_gguf.py with its sibling packages, extracted once from the sdist into a cache dir."""
    cache = Path(cache_dir) if cache_dir else cache_root() / "llama-cpp-convert"
    dest = cache / LLAMA_CPP_VERSION
    script = dest / "convert_lora_to_gguf.py"
    if script.exists():
        return script
    cache.mkdir(parents=True, exist_ok=True)
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "gguf-py/", "conversion/")
    tmp = cache / f".{LLAMA_CPP_VERSION}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tarfile.open(_find_sdist(cache)) as tar:
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else ""
                if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                    m.name = rel
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links/paths out of tmp
                        tar.extract(m, tmp, filter="data")
                    else:
                        tar.extract(m, tmp)
        os.rename(tmp, dest)
    except OSError:
        if not script.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return script
