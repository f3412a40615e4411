"""A pytest plugin the task factory loads once per project (`-p calltrace`): which functions each test calls.

It is copied next to the project and imported alone (no `agent_selfevolve` import in the test process, which
could pull in a host copy of the project under test). A profiler records every Python function entered as
(file, first line of its code); calls while a test runs (set-up, call, tear-down) go to that test, calls during
collection (module import, decorators) to "<collect>". `FACTORY_TRACE_OUT` names the JSON file written at the end,
`FACTORY_TRACE_ROOT` the project directory: only its files are kept, as relative paths.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

COLLECT = "<collect>"
_calls: dict[str, set[tuple[str, int]]] = {COLLECT: set()}
_current: list[set[tuple[str, int]]] = [_calls[COLLECT]]


def _profile(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        _current[0].add((code.co_filename, code.co_firstlineno))


def pytest_configure(config: pytest.Config) -> None:
    sys.setprofile(_profile)
    threading.setprofile(_profile)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _current[0] = _calls.setdefault(item.nodeid, set())
    yield
    _current[0] = _calls[COLLECT]


def pytest_unconfigure(config: pytest.Config) -> None:
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    root = os.path.realpath(os.environ["FACTORY_TRACE_ROOT"]) + os.sep
    relative: dict[str, str | None] = {}
    out: dict[str, list[str]] = {}
    for test, seen in _calls.items():
        keys = set()
        for filename, line in seen:
            if filename not in relative:
                real = os.path.realpath(filename)
                relative[filename] = real[len(root):] if real.startswith(root) else None
            if relative[filename] is not None:
                keys.add(f"{relative[filename]}:{line}")
        out[test] = sorted(keys)
    with open(os.environ["FACTORY_TRACE_OUT"], "w", encoding="utf-8") as fh:
        json.dump(out, fh)
