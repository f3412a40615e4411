"""Build hook (everything else is in pyproject.toml): a wheel carries the top-level `tools/` and `sandboxes/` as
`agent_selfevolve/_data/`, where `agent_selfevolve.infra.data_dir` finds them once installed. An editable install
reads them from the checkout instead, so it copies nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("tools", "sandboxes")
HERE = Path(__file__).resolve().parent


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DATA:
            dest = Path(self.build_lib) / "agent_selfevolve" / "_data" / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(HERE / name, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))


setup(cmdclass={"build_py": BuildPyWithData})
