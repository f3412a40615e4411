"""Find files by name glob, skipping .git."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from paths import main, root  # noqa: E402


def find(a: dict) -> str:
    hits = sorted(str(p.relative_to(root())) for p in root().rglob(a["pattern"]) if ".git" not in p.parts)
    if not hits:
        return "No files found."
    return "\n".join(hits[:100]) + (f"\n[{len(hits) - 100} more]" if len(hits) > 100 else "")


main(find)
