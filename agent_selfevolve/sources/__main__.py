"""`python -m agent_selfevolve.sources bundled build|validate ...` / `... humaneval build|write|validate ...`."""

from __future__ import annotations

import sys

from agent_selfevolve.sources import bundled, humaneval

COMMANDS = {"bundled": bundled.main, "humaneval": humaneval.main}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m agent_selfevolve.sources {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
