"""Write a whole file; refuse content that breaks Python syntax (small models rewrite rather than patch)."""

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from paths import ToolFailure, inside, main  # noqa: E402


def write(a: dict) -> str:
    path, content = inside(a["path"]), a["content"]
    if not isinstance(content, str):
        raise ToolFailure("`content` must be a string")
    if path.is_dir():
        raise ToolFailure(f"{a['path']} is a directory")
    if path.suffix == ".py":
        try:
            ast.parse(content)
        except SyntaxError as exc:
            raise ToolFailure(f"refused: {a['path']} would not parse ({exc.msg} at line {exc.lineno}); "
                              "the file is unchanged") from None
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if content and not content.endswith("\n"):
        content += "\n"
    path.write_text(content)
    return f"{'Rewrote' if existed else 'Created'} {a['path']} ({len(content.splitlines())} lines)."


main(write)
