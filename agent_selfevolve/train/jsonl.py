"""Dataset rows on disk: JSONL written atomically, with the content hash the registry records as lineage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent_selfevolve.fileio import write_text_atomic

Row = dict[str, Any]


def rows_to_jsonl(rows: Iterable[Row]) -> str:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[Row]) -> str:
    """Write rows atomically; returns the sha256 of the file's text (the data hash the registry records)."""
    text = rows_to_jsonl(rows)
    write_text_atomic(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def read_jsonl(path: str | Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON row ({exc})") from exc
    return rows


def data_hash(rows: Iterable[Row]) -> str:
    return hashlib.sha256(rows_to_jsonl(rows).encode()).hexdigest()
