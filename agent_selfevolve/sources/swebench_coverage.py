"""Static coverage of SWE-bench Lite / Verified here: which instances are gradable *in principle*, per repository.

Static, not validated: for each instance, is there a SWE-bench spec for its (repo, version), is the Python that
spec asks for installed, does SWE-bench have a log parser for the repo, and can every install step run without
Docker (apt packages present, no downloads outside the package index)? Whether the env then builds and the gold
patch resolves needs the repositories (GitHub or AGENT_SELFEVOLVE_MIRRORS) and `selfevolve batch --validate`.

    python -m agent_selfevolve.sources.swebench_coverage [--split lite verified] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any

from agent_selfevolve.envs.interpreters import find_python
from agent_selfevolve.envs.swebench_env import classify_step
from agent_selfevolve.envs.swebench_harness import Harness, harness
from agent_selfevolve.sources.swebench import raw_instances, verified_versions


def instance_coverage(h: Harness, repo: str, version: str, pythons: dict[str, bool]) -> dict[str, Any]:
    """What stands between one instance and a grade here, known without its repository."""
    rec: dict[str, Any] = {"version": bool(version), "spec": False, "python": False, "parser": repo in h.parsers,
                           "steps": False, "problems": []}
    if not version:
        rec["problems"].append("no version offline (derived from the checkout when graded)")
        return rec
    spec = h.spec(repo, version)
    if spec is None:
        rec["problems"].append(f"no SWE-bench spec for {repo} {version}")
        return rec
    rec["spec"] = True
    py = str(spec["python"])
    if py not in pythons:
        pythons[py] = find_python(py) is not None
    rec["python"] = pythons[py]
    if not rec["python"]:
        rec["problems"].append(f"Python {py} not installed")
    steps = [*spec.get("pre_install", []), *[c for c in spec.get("eval_commands", []) if not c.startswith("export ")]]
    unsupported = [why for verdict, why in map(classify_step, steps) if verdict == "unsupported"]
    rec["steps"] = not unsupported
    rec["problems"] += unsupported
    if spec.get("packages") == "environment.yml":
        rec["conda_env_yml"] = True  # translated to pip at build time, best effort
    if not rec["parser"]:
        rec["problems"].append("no SWE-bench log parser for the repo")
    return rec


def coverage(split: str, h: Harness | None = None) -> dict[str, Any]:
    """Per-repository counts for `split` (and the most common problems)."""
    h = h or harness()
    records = raw_instances(split)  # type: ignore[arg-type]
    versions = verified_versions()
    pythons: dict[str, bool] = {}
    rows: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    problems: collections.Counter[str] = collections.Counter()
    for r in records:
        repo = str(r["repo"])
        rec = instance_coverage(h, repo, versions.get(str(r["instance_id"]), ""), pythons)
        row = rows[repo]
        row["instances"] += 1
        for key in ("version", "spec", "python", "parser", "steps", "conda_env_yml"):
            row[key] += bool(rec.get(key))
        row["gradable_in_principle"] += all(rec[k] for k in ("spec", "python", "parser", "steps"))
        problems.update(rec["problems"])
    total: collections.Counter[str] = collections.Counter()
    for row in rows.values():
        total.update(row)
    return {"split": split, "harness": h.release, "pythons": pythons,
            "repos": {k: dict(v) for k, v in sorted(rows.items(), key=lambda kv: -kv[1]["instances"])},
            "total": dict(total), "problems": problems.most_common()}


COLUMNS = ("instances", "version", "spec", "python", "parser", "steps", "gradable_in_principle", "conda_env_yml")


def markdown(result: dict[str, Any]) -> str:
    head = ["repository", "instances", "version known", "spec", "Python here", "parser", "steps w/o Docker",
            "**gradable in principle**", "of which conda env.yml"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for repo, row in [*result["repos"].items(), ("**total**", result["total"])]:
        lines.append("| " + " | ".join([repo, *(str(row.get(c, 0)) for c in COLUMNS)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", nargs="+", default=["lite", "verified"])
    ap.add_argument("--json", help="also write the counts (and problems) here")
    args = ap.parse_args(argv)
    results = [coverage(s) for s in args.split]
    for res in results:
        print(f"\n### {res['split']} (swebench {res['harness']} specs; static, not validated)\n")
        print(markdown(res))
        print("\nMost common problems:")
        for why, n in res["problems"][:12]:
            print(f"- {n}: {why}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
