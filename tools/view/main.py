"""View a file with line numbers, in windows, or list a directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from paths import ToolFailure, inside, main, root  # noqa: E402

WINDOW = 100


def view(a: dict) -> str:
    target = inside(a.get("path", "."))
    if target.is_dir():
        entries = sorted(p for p in target.iterdir() if p.name != ".git")
        return "\n".join(f"{p.relative_to(root())}{'/' if p.is_dir() else ''}" for p in entries) or "(empty)"
    if not target.exists():
        raise ToolFailure(f"no such file: {a.get('path')}")
    lines = target.read_text(errors="replace").splitlines()
    start = max(1, int(a.get("start") or 1))
    end = min(len(lines), int(a.get("end") or start + WINDOW - 1))
    if start > max(len(lines), 1):
        raise ToolFailure(f"start line {start} is past the end of the file ({len(lines)} lines)")
    body = "\n".join(f"{n:6d}  {lines[n - 1]}" for n in range(start, end + 1))
    more = f"\n[lines {start}-{end} of {len(lines)}; pass start/end for more]" if end < len(lines) or start > 1 else ""
    return body + more


main(view)
