"""A non-editable install works: the built wheel carries `tools/` and `sandboxes/`, and one bundled attempt with the
scripted FAKE model resolves its task from a fresh venv that imports the package from the wheel, not this checkout.

Slow (a wheel build, a venv, a repo build and an attempt: about a minute); CI runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_bundled_e2e import edits_from_patch

from agent_selfevolve.envs.runner import bwrap_available
from agent_selfevolve.infra import Dist, cache_root, fetch_dist
from agent_selfevolve.sources.build import dist_dir
from agent_selfevolve.sources.bundled import bundled_tasks, recipe

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SDIST_STORE = cache_root()
"""The real cache, read before conftest points AGENT_SELFEVOLVE_CACHE at a temp dir: the sdist is downloaded once."""

ATTEMPT = r"""
import json, sys
from pathlib import Path

import agent_selfevolve
from agent_selfevolve.attempt import run_attempt
from agent_selfevolve.envs.tools import tools_dir
from agent_selfevolve.infra import data_dir
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.sources import resolve_tasks

instance_id, edits = sys.argv[1], json.loads(sys.argv[2])
task = resolve_tasks("bundled", ids=[instance_id])[0]
answers = data_dir("sandboxes") / "swe" / "tasks.jsonl"
script = [bash(f"ls; head -c 400 {answers}", "Look around (and try to read the packaged answers).")]
for path, old, new in edits:
    script += [tool_call("view", {"path": path}), tool_call("str_replace", {"path": path, "old": old, "new": new})]
model = ScriptedFakeModel(script + [tool_call("submit", {})])
traj = run_attempt(task, model)
print(json.dumps({"package": agent_selfevolve.__file__, "tools": str(tools_dir()), "answers": str(answers),
                  "status": traj.status, "resolved": traj.resolved, "exit": traj.exit_message,
                  "seen": "\n".join(str(m.get("content") or "") for m in traj.messages)}))
"""


def _source_copy(dest: Path) -> Path:
    """The files git would ship (tracked and not ignored): the build's own build/ and egg-info stay out of ROOT."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_wheel_ships_the_data_and_runs_a_bundled_attempt_from_a_fresh_venv(tmp_path: Path,
                                                                          isolated_cache: Path) -> None:
    src = _source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(src), "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("agent_selfevolve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for tool in sorted(p.name for p in (ROOT / "tools").iterdir() if (p / "manifest.json").is_file()):
        assert f"agent_selfevolve/_data/tools/{tool}/manifest.json" in names
    assert "agent_selfevolve/_data/tools/_lib/paths.py" in names
    assert "agent_selfevolve/_data/sandboxes/swe/tasks.jsonl" in names
    assert "agent_selfevolve/_data/sandboxes/web/tasks.jsonl" in names
    assert not any(n.startswith(("tools/", "sandboxes/")) for n in names)  # nothing at the top of site-packages

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    # --ignore-installed: the host's editable install of this checkout is visible through the system site.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, timeout=300)

    task = bundled_tasks()[0]
    (isolated_cache / "sdists").mkdir(parents=True, exist_ok=True)
    sdist = fetch_dist(Dist.of(recipe(task.repo.removeprefix("bundled/"))), dist_dir(SDIST_STORE))
    shutil.copy2(sdist, isolated_cache / "sdists" / sdist.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_SELFEVOLVE_TOOLS",
                                                            "AGENT_SELFEVOLVE_WEB_APPS")}
    work = tmp_path / "elsewhere"  # not the checkout: `python -c` puts the working directory first on sys.path
    work.mkdir()
    proc = subprocess.run([str(python), "-c", ATTEMPT, task.instance_id, json.dumps(edits_from_patch(task.patch))],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    site = str(venv.resolve())
    assert Path(out["package"]).resolve().is_relative_to(site), out["package"]
    assert Path(out["tools"]).resolve().is_relative_to(site) and Path(out["answers"]).resolve().is_relative_to(site)
    assert out["status"] == "submitted" and out["resolved"], out["exit"]
    assert "head -c 400" in out["seen"] or "Look around" in out["seen"]  # the probe ran and its output is here
    if bwrap_available():  # the packaged task file (gold patches) lies in the visible site-packages: hidden
        leaked = (ROOT / "sandboxes" / "swe" / "tasks.jsonl").read_text()[:120]
        assert leaked not in out["seen"]
