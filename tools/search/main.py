"""grep -rn in Python, so it behaves the same everywhere and skips .git."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from paths import ToolFailure, inside, main, root  # noqa: E402

LIMIT = 50


def search(a: dict) -> str:
    try:
        rx = re.compile(a["pattern"])
    except re.error as exc:
        raise ToolFailure(f"bad regular expression: {exc}") from None
    base = inside(a.get("path", "."))
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file() and ".git" not in p.parts)
    hits: list[str] = []
    total = 0
    for f in files:
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if rx.search(line):
                total += 1
                if len(hits) < LIMIT:
                    hits.append(f"{f.relative_to(root())}:{n}: {line.strip()[:200]}")
    if not hits:
        return "No matches."
    return "\n".join(hits) + (f"\n[{total - LIMIT} more matches not shown]" if total > LIMIT else "")


main(search)
