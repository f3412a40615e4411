"""Find the CPython X.Y a test environment asks for: pyenv versions, uv-managed Pythons, `pythonX.Y` on PATH.

SWE-bench pins a Python per (repo, version) (3.5-3.11); pytest 5 does not start on 3.11, django 3.0 needs <= 3.8
for some tests. A missing version is reported with the command that installs it, never silently replaced by
another one: grading on the wrong Python marks instances valid or invalid for the wrong reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

PYENV_ROOT_ENV = "PYENV_ROOT"
UV_PYTHON_DIR_ENV = "UV_PYTHON_INSTALL_DIR"


class MissingInterpreter(RuntimeError):
    """The requested Python is not installed here; the message names it and how to install it."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name)[:3])


def pyenv_root() -> Path:
    return Path(os.environ.get(PYENV_ROOT_ENV) or Path.home() / ".pyenv")


def uv_python_dir() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(os.environ.get(UV_PYTHON_DIR_ENV) or Path(data) / "uv" / "python")


def candidates(version: str) -> list[Path]:
    """Where X.Y may live, best first: pyenv's and uv's installs (newest patch first), then PATH."""
    found: list[Path] = []
    exact = re.compile(rf"^{re.escape(version)}\.\d+$")  # 3.9.18, not 3.9-dev nor 3.9.18t (free-threaded)
    versions = pyenv_root() / "versions"
    if versions.is_dir():
        for d in sorted((d for d in versions.iterdir() if exact.match(d.name)), key=lambda d: _version_key(d.name),
                        reverse=True):
            found.append(d / "bin" / f"python{version}")
    uv_dir = uv_python_dir()
    if uv_dir.is_dir():
        uv_exact = re.compile(rf"^cpython-{re.escape(version)}\.\d+-")
        for d in sorted((d for d in uv_dir.iterdir() if uv_exact.match(d.name)),
                        key=lambda d: _version_key(d.name), reverse=True):
            found.append(d / "bin" / f"python{version}")
    on_path = shutil.which(f"python{version}")
    if on_path:
        found.append(Path(on_path))
    return found


@functools.lru_cache(maxsize=64)
def _probe(path: str, version: str) -> str | None:
    """The real executable behind `path` (a pyenv shim resolves to the version it selects) when it runs and is
    CPython `version`; else None."""
    code = "import sys, platform; print(platform.python_implementation(), '%d.%d' % sys.version_info[:2], " \
           "sys.executable)"
    try:
        proc = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYENV_VERSION": ""} if "shims" in path else None)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = proc.stdout.split(maxsplit=2)
    if proc.returncode != 0 or len(parts) != 3 or parts[0] != "CPython" or parts[1] != version:
        return None
    return parts[2].strip()


def find_python(version: str) -> Path | None:
    """The executable of CPython `version` ("3.9"), or None when it is not installed here."""
    if not re.fullmatch(r"\d+\.\d+", version):
        raise ValueError(f"expected a Python version as X.Y, got {version!r}")
    for path in candidates(version):
        if path.exists() and (real := _probe(str(path), version)):
            return Path(real)
    return None


def require_python(version: str) -> Path:
    """`find_python`, or MissingInterpreter saying which version is missing and how to get it."""
    found = find_python(version)
    if found is None:
        raise MissingInterpreter(
            f"Python {version} is not installed here: install it with `pyenv install {version}` or `uv python "
            f"install {version}` (looked in {pyenv_root() / 'versions'}, {uv_python_dir()}, python{version} on PATH)")
    return found
