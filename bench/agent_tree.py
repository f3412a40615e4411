"""Build the checkout an evolve-proof seed runs on: this commit's bench/ with the agent the seed is pinned to.

    python bench/agent_tree.py --seed 0 DIR        # the tree seed0/code.json records; checks its fingerprint
    python bench/agent_tree.py DIR --base 92cc4c9 --file agent_selfevolve/attempt.py@423a010   # a new tree

A seed's numbers pair every episode with the base model's evaluation, so the agent must not change under it
(`evolve_proof_core.check_code`). When a fix has to reach a running seed (sampling seeds, a resumable trainer), the
seed's agent is an older commit's `agent_selfevolve/` and `tools/` with single files of later commits laid over it.
This script builds that tree from git: `git archive HEAD`, then the base commit's agent, then the files; it writes
the recipe to `DIR/AGENT_TREE.json` (which check_code records in code.json) and, with `--seed`, checks that the
tree's fingerprint is the one code.json pins, removing DIR if it is not. Run the proof from DIR with `--out`
pointing at this checkout's `bench/results/evolve-proof`, so its results land where they are committed.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evolve_proof_core import TREE_FILE, code_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "evolve-proof"


def _git(*args: str) -> bytes:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"git {' '.join(args)}: {proc.stderr.decode().strip()}")
    return proc.stdout


def _extract(commit: str, dest: Path, *paths: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(_git("archive", commit, *paths))) as tar:
        tar.extractall(dest, filter="data")


def build(dest: Path, base: str, files: dict[str, str]) -> str:
    """Build the tree in `dest` (which must not exist); returns its fingerprint."""
    if dest.exists():
        raise SystemExit(f"{dest} exists; give a new folder")
    dest.mkdir(parents=True)
    _extract("HEAD", dest)
    for name in ("agent_selfevolve", "tools"):
        shutil.rmtree(dest / name)
    _extract(base, dest, "agent_selfevolve", "tools")
    for path, commit in sorted(files.items()):
        if not (path.startswith("agent_selfevolve/") or path.startswith("tools/")):
            raise SystemExit(f"--file {path}: only files of agent_selfevolve/ or tools/ make up the agent")
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_bytes(_git("show", f"{commit}:{path}"))
    (dest / TREE_FILE).write_text(json.dumps({"base": base, "files": files}, indent=2, sort_keys=True) + "\n")
    return code_fingerprint(dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--seed", type=int, default=None, help="build the tree seed<s>/code.json records")
    parser.add_argument("--base", default=None, help="commit whose agent_selfevolve/ and tools/ to start from")
    parser.add_argument("--file", action="append", default=[], metavar="PATH@COMMIT",
                        help="a later commit's version of one file of the agent (repeatable)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    record = None
    if args.seed is not None:
        path = args.results / f"seed{args.seed}" / "code.json"
        record = json.loads(path.read_text())
        if args.base is None and "tree" not in record:
            raise SystemExit(f"{path} records no tree; give --base and --file")
    if args.base is not None:
        files = dict(spec.rsplit("@", 1) for spec in args.file)
        fingerprint = build(args.dest, args.base, files)
    else:
        assert record is not None
        fingerprint = build(args.dest, record["tree"]["base"], record["tree"]["files"])
    if record is not None and args.base is None and fingerprint != record["fingerprint"]:
        shutil.rmtree(args.dest)
        raise SystemExit(f"the built tree's fingerprint {fingerprint[:12]} is not seed {args.seed}'s "
                         f"{record['fingerprint'][:12]}; {args.dest} removed")
    same = record is not None and fingerprint == record["fingerprint"]
    print(f"{args.dest}: fingerprint {fingerprint[:12]}" + (f" (seed {args.seed}'s)" if same else
                                                            " (new: a seed takes it with --allow-code-change)"))


if __name__ == "__main__":
    main()
