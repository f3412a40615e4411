"""Replace one exact occurrence of a string; refuse edits that break Python syntax."""

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from paths import ToolFailure, inside, main  # noqa: E402


def check_python(path: Path, text: str) -> None:
    if path.suffix != ".py":
        return
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise ToolFailure(f"edit refused: {path.name} would not parse ({exc.msg} at line {exc.lineno}); "
                          "the file is unchanged") from None


def replace(a: dict) -> str:
    path = inside(a["path"])
    old, new = a["old"], a["new"]
    if not path.exists():
        if old:
            raise ToolFailure(f"no such file: {a['path']} (use old='' to create it)")
        check_python(path, new)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new)
        return f"Created {a['path']} ({len(new.splitlines())} lines)."
    text = path.read_text()
    count = text.count(old) if old else 0
    if count == 0:
        raise ToolFailure(f"`old` text not found in {a['path']}; view the file and copy it exactly")
    if count > 1:
        raise ToolFailure(f"`old` text occurs {count} times in {a['path']}; include more context to make it unique")
    updated = text.replace(old, new, 1)
    check_python(path, updated)
    path.write_text(updated)
    first = text[: text.index(old)].count("\n") + 1
    lines = updated.splitlines()
    lo, hi = max(1, first - 3), min(len(lines), first + new.count("\n") + 3)
    snippet = "\n".join(f"{n:6d}  {lines[n - 1]}" for n in range(lo, hi + 1))
    return f"Edited {a['path']}:\n{snippet}"


main(replace)
