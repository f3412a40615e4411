"""Envs built from a SWE-bench-style spec on another CPython than ours; a local httpbin; no route off the host."""
# ruff: noqa: W293  (diff context lines in the patches below are a single space)

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import _git, index_reachable

from agent_selfevolve.envs import httpbin, interpreters
from agent_selfevolve.envs.grading import grade
from agent_selfevolve.envs.runner import CommandRunner, bwrap_available
from agent_selfevolve.tasks import Task

OTHER = "3.9"
"""A Python other than the one running the tests (the dev and CI machines have 3.6-3.13 under pyenv)."""

FIX = """diff --git a/shout/core.py b/shout/core.py
--- a/shout/core.py
+++ b/shout/core.py
@@ -1,2 +1,2 @@
 def dump(data):
-    return repr(data).upper()
+    return repr(data)
"""

HIDDEN = f"""diff --git a/tests/test_core.py b/tests/test_core.py
new file mode 100644
--- /dev/null
+++ b/tests/test_core.py
@@ -0,0 +1,15 @@
+import sys
+
+import tomli_w
+
+from shout import core
+
+
+def test_dump():
+    assert core.dump({{"a": 1}}) == "{{'a': 1}}"
+
+
+def test_runs_on_the_requested_python():
+    assert sys.version_info[:2] == ({OTHER.replace('.', ', ')})
+    assert sys.prefix != sys.base_prefix
+    assert tomli_w.__version__ == "1.0.0"  # the spec's pin
"""




@pytest.fixture
def spec_task(tmp_path: Path) -> Task:
    repo = tmp_path / "shout"
    (repo / "shout").mkdir(parents=True)
    (repo / "setup.py").write_text("from setuptools import setup\nsetup(name='shout', version='0.1', "
                                   "packages=['shout'])\n")
    (repo / "tox.ini").write_text("[testenv]\ncommands = pytest\n")
    (repo / "shout" / "__init__.py").write_text("")
    (repo / "shout" / "core.py").write_text("def dump(data):\n    return repr(data).upper()\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    spec = {"python": OTHER, "packages": "pytest", "pip_packages": ["tomli-w==1.0.0"],
            "pre_install": ["sed -i 's/pytest/pytest -rA/' tox.ini",
                            "apt-get update && apt-get install -y no-such-package-zz9"],
            "install": "python -m pip install -e .", "test_cmd": "pytest -rA"}
    return Task(instance_id="local__shout-1", repo="local/shout", repo_path=str(repo), version="0.1",
                base_commit=_git(repo, "rev-parse", "HEAD"), problem_statement="dump() shouts", patch=FIX,
                test_patch=HIDDEN, FAIL_TO_PASS=["tests/test_core.py::test_dump"],
                PASS_TO_PASS=["tests/test_core.py::test_runs_on_the_requested_python"], test_env="venv",
                env_spec=spec)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_spec_env_runs_the_tests_on_the_requested_python(spec_task: Task, isolated_cache: Path) -> None:
    if sys.version_info[:2] == tuple(int(x) for x in OTHER.split(".")):
        pytest.skip(f"the tests run on {OTHER} already: nothing to prove")
    if interpreters.find_python(OTHER) is None:
        pytest.skip(f"Python {OTHER} is not installed here (pyenv install {OTHER})")
    if not index_reachable("tomli-w==1.0.0"):
        pytest.skip("the package index is unreachable: a test env cannot be built")
    gold = grade(spec_task, spec_task.patch)
    assert gold.resolved, gold.error + gold.test_output[-3000:]
    envs = list((isolated_cache / "envs").iterdir())
    assert [e.name for e in envs] == [f"local_shout-0.1-py{OTHER.replace('.', '')}"]
    ready = json.loads((envs[0] / "ready.json").read_text())
    assert ready["python_version"] == OTHER and f"/{OTHER}." in ready["base_python"]
    assert ready["installer"].startswith("swebench-spec/")
    assert any("no-such-package-zz9" in s for s in ready["skipped"])  # reported, not run
    assert "pytest -rA" in (envs[0] / "src" / "tox.ini").read_text()  # the spec's own pre-install step ran
    empty = grade(spec_task, "")
    assert not empty.resolved and empty.tests_status["FAIL_TO_PASS"]["failure"] == ["tests/test_core.py::test_dump"]
    assert empty.tests_status["PASS_TO_PASS"]["success"] == ["tests/test_core.py::test_runs_on_the_requested_python"]


NET_PROBE = """
import errno, socket
s = socket.socket()
s.settimeout(30)
try:
    s.connect(("10.255.255.1", 80))
    print("CONNECTED")
except OSError as exc:
    print("NET-ERRNO", errno.errorcode.get(exc.errno, exc.errno), type(exc).__name__)
print("ROUTES", len(open("/proc/net/route").read().splitlines()) - 1)
"""


def test_private_address_is_unreachable_in_the_sandbox(tmp_path: Path) -> None:
    """A test that connects to a private-range address fails at once with "no route": nothing is sent."""
    if not bwrap_available():
        pytest.skip("bubblewrap cannot create namespaces here")
    (tmp_path / "probe.py").write_text(NET_PROBE)
    out = CommandRunner(tmp_path, timeout_s=60).run(f"{sys.executable} probe.py").output
    assert "CONNECTED" not in out
    assert "NET-ERRNO ENETUNREACH" in out  # refused by the kernel for lack of a route, not timed out on the wire
    assert "ROUTES 0" in out  # the namespace has no route at all: no packet can leave


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_httpbin_serves_on_loopback_in_the_sandbox(tmp_path: Path) -> None:
    """The wrapper psf/requests tests get: httpbin from the env's python on 127.0.0.1, HTTPBIN_URL set."""
    if not bwrap_available():
        pytest.skip("bubblewrap cannot create namespaces here")
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    proc = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", *httpbin.PACKAGES],
                          capture_output=True, text=True, timeout=500)
    if proc.returncode != 0:
        pytest.skip(f"httpbin cannot be installed from the index here: {proc.stderr[-300:]}")
    (tmp_path / "work").mkdir()
    probe = ("python -c \"import os, urllib.request; url = os.environ['HTTPBIN_URL']; print('URL', url); "
             "print(urllib.request.urlopen(url + 'get?marker=LOOPBACK-7f3a').read().decode())\"")
    run_env = {"PATH": f"{env / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(env)}
    out = CommandRunner(tmp_path / "work", timeout_s=120, env=run_env).run(httpbin.with_local_httpbin(probe)).output
    assert "URL http://127.0.0.1:" in out and "LOOPBACK-7f3a" in out, out[-2000:]
    shutil.rmtree(env, ignore_errors=True)
