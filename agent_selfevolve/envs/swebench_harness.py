"""SWE-bench's own per-(repo, version) environment specs, test directives and log parsers, read from its wheel.

The official `swebench` package keeps, for every Python repository and version, the Python to use, the packages
and pins, pre-install and install commands and the test command (`MAP_REPO_VERSION_TO_SPECS`), how a test patch
becomes test arguments (`get_test_directives`: django's dotted labels, file paths otherwise) and one log parser
per repository (`MAP_REPO_TO_PARSER`). We grade with those, not with copies: the pinned wheel is downloaded once
without its dependencies (docker, datasets, ...) and only its pure modules are executed, in private module
objects that never enter `sys.modules`. Their imports of `swebench.*` resolve inside the wheel; the three
modules that would pull in network or Docker code are replaced by stand-ins that refuse to be used.

Pinned to 4.1.0: the 5.x releases moved specs and parsers out of the package into per-instance task
repositories (fetched from GitHub / Hugging Face), so only 4.x carries them.
"""

from __future__ import annotations

import builtins
import functools
import re
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_selfevolve.infra import Dist, PackageDataError, cache_root, fetch_dist

HARNESS = Dist("swebench", "4.1.0", "swebench-4.1.0-py3-none-any.whl",
               "1243776f720047cc9e20a427f7a52b75c13a07abda6154fb60fe77f82ec8af57")
"""The last release that ships MAP_REPO_VERSION_TO_SPECS and MAP_REPO_TO_PARSER inside the package."""
START, END = ">>>>> Start Test Output", ">>>>> End Test Output"


class HarnessUnavailable(RuntimeError):
    """A part of SWE-bench's harness that needs the network, Docker or `datasets` was called."""


@dataclass
class StandInTestSpec:
    """What a parser receives as `test_spec` (the real TestSpec module imports Docker code); parsers read at most
    these fields."""

    instance_id: str = ""
    repo: str = ""
    version: str = ""
    FAIL_TO_PASS: list[str] = field(default_factory=list)
    PASS_TO_PASS: list[str] = field(default_factory=list)


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise HarnessUnavailable(f"{what} needs the network or Docker; it is not used without them")
    return refused


def _stand_ins() -> dict[str, types.ModuleType]:
    test_spec = types.ModuleType("swebench.harness.test_spec.test_spec")
    test_spec.TestSpec = StandInTestSpec  # type: ignore[attr-defined]
    utils = types.ModuleType("swebench.harness.utils")
    utils.get_modified_files = _refuse("swebench.harness.utils.get_modified_files")  # type: ignore[attr-defined]
    utils.load_cached_environment_yml = _refuse("load_cached_environment_yml")  # type: ignore[attr-defined]
    requests = types.ModuleType("requests")  # their downloads of requirements files from GitHub: never
    requests.get = _refuse("downloading from raw.githubusercontent.com")  # type: ignore[attr-defined]
    return {m.__name__: m for m in (test_spec, utils, requests)}


class WheelModules:
    """Executes modules of a wheel from the zip, each in a private module object, with a private `__import__`."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        self.zip = zipfile.ZipFile(wheel)
        self.names = set(self.zip.namelist())
        self.loaded: dict[str, types.ModuleType] = _stand_ins()
        self.builtins = {**vars(builtins), "__import__": self._import}

    def module(self, name: str) -> types.ModuleType:
        if name in self.loaded:
            return self.loaded[name]
        base = name.replace(".", "/")
        member = next((m for m in (f"{base}.py", f"{base}/__init__.py") if m in self.names), None)
        if member is None:
            raise ImportError(f"{name} is not in {self.wheel.name}")
        mod = types.ModuleType(name)
        mod.__file__ = f"{self.wheel}/{member}"
        mod.__dict__["__builtins__"] = self.builtins
        if member.endswith("__init__.py"):
            mod.__path__ = []  # a package: `from pkg import sub` works
        self.loaded[name] = mod
        try:
            exec(compile(self.zip.read(member), mod.__file__, "exec"), mod.__dict__)
        except BaseException:
            del self.loaded[name]
            raise
        return mod

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and (name in self.loaded or name == "swebench" or name.startswith("swebench.")):
            if not fromlist and "." in name:
                raise ImportError(f"`import {name}` is not supported for wheel modules; use `from ... import`")
            mod = self.module(name)
            for item in fromlist or ():  # `from pkg import submodule`
                if item != "*" and not hasattr(mod, item) and f"{name}.{item}".replace(".", "/") + ".py" in self.names:
                    setattr(mod, item, self.module(f"{name}.{item}"))
            return mod
        return builtins.__import__(name, globals, locals, fromlist, level)


@dataclass(frozen=True)
class Harness:
    """The parts of SWE-bench's harness that need neither Docker nor the network."""

    release: str
    specs: dict[str, dict[str, dict[str, Any]]]
    parsers: dict[str, Callable[[str, Any], dict[str, str]]]
    constants: types.ModuleType
    scripts: types.ModuleType
    versioning: types.ModuleType

    def spec(self, repo: str, version: str) -> dict[str, Any] | None:
        return self.specs.get(repo, {}).get(version)

    def test_directives(self, repo: str, test_patch: str) -> list[str]:
        """The test arguments SWE-bench passes for this test patch (files, or django's dotted labels)."""
        return list(self.scripts.get_test_directives({"repo": repo, "test_patch": test_patch}))

    def parse_log(self, repo: str, log: str, version: str = "") -> dict[str, str]:
        """Test statuses the way the harness reads them: the parser of `repo` on the text between the test
        output markers, on the whole log when that yields nothing."""
        parser = self.parsers[repo]
        spec = StandInTestSpec(repo=repo, version=version)
        inner = log.split(START, 1)[1].split(END, 1)[0] if START in log and END in log else log
        return parser(inner, spec) or parser(log, spec)

    def requirements_paths(self, repo: str) -> list[str]:
        return list(self.constants.MAP_REPO_TO_REQS_PATHS.get(repo, []))

    def environment_yml_paths(self, repo: str) -> list[str]:
        return list(self.constants.MAP_REPO_TO_ENV_YML_PATHS.get(repo, []))

    def clean_requirements(self, text: str) -> str:
        """Their replacements of packages yanked from PyPI."""
        return str(self.scripts.clean_requirements(text))

    def version_from_files(self, repo: str, read: Callable[[str], str | None]) -> str | None:
        """SWE-bench's `version` of a checkout: their version file paths and patterns, major.minor, digits only.

        `read(path)` returns a file of the checkout or None. None when the repo has no version file in their
        tables (pytest, matplotlib, xarray, astropy derive it from a build)."""
        consts = self.versioning
        for path in consts.MAP_REPO_TO_VERSION_PATHS.get(repo, []):
            text = read(path)
            if text is None:
                continue
            text = re.sub(r'""".*?"""', "", text, flags=re.DOTALL)
            for pattern in consts.MAP_REPO_TO_VERSION_PATTERNS.get(repo, []):
                m = re.search(pattern, text)
                if m:
                    raw = m.group(1).replace(" ", "") if m.groups() else m.group(0)
                    sep = "," if "," in raw and "." not in raw else "."
                    return re.sub(r"[^0-9.]", "", ".".join(raw.split(sep)[:2]))
        return None


@functools.lru_cache(maxsize=4)
def _load(wheel: Path) -> Harness:
    mods = WheelModules(wheel)
    try:
        consts = mods.module("swebench.harness.constants")
        parsers = mods.module("swebench.harness.log_parsers.python")
        scripts = mods.module("swebench.harness.test_spec.python")
        versioning = mods.module("swebench.versioning.constants")
    except (ImportError, SyntaxError, KeyError) as exc:
        raise PackageDataError(f"{wheel.name}: cannot load SWE-bench's specs and parsers: {exc}") from exc
    return Harness(release=wheel.name.split("-")[1], specs=consts.MAP_REPO_VERSION_TO_SPECS_PY,
                   parsers=dict(parsers.MAP_REPO_TO_PARSER_PY), constants=consts, scripts=scripts,
                   versioning=versioning)


def harness(cache_dir: str | Path | None = None) -> Harness:
    """SWE-bench's specs and parsers from the pinned wheel (downloaded once into `<cache>/swebench/wheels`)."""
    return _load(fetch_dist(HARNESS, (Path(cache_dir) if cache_dir else cache_root() / "swebench") / "wheels"))


def parse_log(repo: str, log: str, cache_dir: str | Path | None = None) -> dict[str, str]:
    return harness(cache_dir).parse_log(repo, log)
