"""Shared by tool scripts: resolve a user path inside the worktree (the cwd) or refuse it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class ToolFailure(Exception):
    pass


def root() -> Path:
    return Path.cwd().resolve()


def inside(path: str) -> Path:
    base = root()
    target = (base / path).resolve() if path else base
    if target != base and base not in target.parents:
        raise ToolFailure(f"path '{path}' is outside the repository ({base}); refused")
    return target


def args() -> dict:
    try:
        data = json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")
    except json.JSONDecodeError as exc:
        raise ToolFailure(f"arguments are not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise ToolFailure("arguments must be a JSON object")
    return data


def main(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        print(fn(args()))
    except ToolFailure as exc:
        print(f"Error: {exc}")
        sys.exit(2)
    except KeyError as exc:
        print(f"Error: missing argument {exc}")
        sys.exit(2)
    except (TypeError, ValueError, OSError) as exc:  # wrong argument types, a NUL byte, a directory: no traceback
        print(f"Error: {type(exc).__name__}: {exc}")
        sys.exit(2)
