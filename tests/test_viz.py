"""Run reports: real searches (FAKE models, a tiny git repo, real grading) rendered and opened in Chromium.

Two runs are built once per module: best-of-N whose attempts fix the bug, echo hostile HTML, and send a
malformed reply; and HGM whose root fails until a diagnosis writes APPLY_FIX into the child's guidance.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent_selfevolve.agent import Limits
from agent_selfevolve.cli import app
from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
from agent_selfevolve.search.best_of_n import best_of_n
from agent_selfevolve.search.common import SearchContext
from agent_selfevolve.search.hgm import hgm
from agent_selfevolve.store import TrajectoryStore
from agent_selfevolve.tasks import Task
from agent_selfevolve.trajectory import Trajectory
from agent_selfevolve.viz import render_run_html, run_view, safe_filename, write_run_html

HOSTILE = "<script>alert(1)</script>"
HOSTILE_THOUGHT = "look: <img src=x onerror=alert(2)> </script><!--"
PNG = b"\x89PNG\r\n\x1a\n"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_task(root: Path) -> Task:
    repo = root / "calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n")
    (repo / "tests" / "test_mul.py").write_text("from calc import mul\n\n\ndef test_mul():\n"
                                                "    assert mul(2, 3) == 6\n")
    (repo / "conftest.py").write_text("import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    test = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    lines = test.splitlines()
    test_patch = ("diff --git a/tests/test_add.py b/tests/test_add.py\nnew file mode 100644\n--- /dev/null\n"
                  f"+++ b/tests/test_add.py\n@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{ln}\n" for ln in lines))
    return Task(instance_id="viz__calc-1", problem_statement="add(2, 3) returns -1 instead of 5.",
                repo_path=str(repo), base_commit=_git(repo, "rev-parse", "HEAD"), test_patch=test_patch,
                FAIL_TO_PASS=["tests/test_add.py::test_add"], PASS_TO_PASS=["tests/test_mul.py::test_mul"],
                test_files=["tests/test_add.py", "tests/test_mul.py"],
                test_cmd="PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest -rA --tb=no -p no:cacheprovider {tests}")


FIX = tool_call("str_replace", {"path": "calc.py", "old": "return a - b", "new": "return a + b"})
SUBMIT = tool_call("submit", {})
BON_SCRIPT = [bash("cat calc.py", "Let me read the code."), FIX, SUBMIT,  # 1: solves
              bash(f"printf '%s' '{HOSTILE}'", HOSTILE_THOUGHT), SUBMIT,  # 2: hostile observation
              "I will just describe the fix in prose.", SUBMIT]  # 3: a format error, then gives up


def agent_responder(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Fix the bug only when told APPLY_FIX in the first prompt; otherwise give up at once."""
    if "APPLY_FIX" in str(messages[1].get("content")) and not any(m["role"] == "assistant" for m in messages):
        return FIX
    return SUBMIT


def operator_responder(messages: list[dict[str, Any]]) -> str:
    return ('```json\n{"diagnosis": "submitted without editing", "strategy": "edit then submit",'
            ' "guidance": "APPLY_FIX: use a plus in calc.add", "temperature": 0.3}\n```')


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrajectoryStore]:
    """A store holding 'bon-viz' (3 attempts) and 'hgm-viz' (4 evaluations), made by the real search graphs."""
    root = tmp_path_factory.mktemp("viz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENT_SELFEVOLVE_CACHE", str(root / "cache"))
        task, store = make_task(root), TrajectoryStore(root / "runs" / "runs.sqlite")
        ctx = SearchContext(task=task, model=ScriptedFakeModel(BON_SCRIPT), store=store, limits=Limits(max_steps=4),
                            env_options={"isolate": False})
        best_of_n(ctx, n=3, max_concurrency=1, run_id="bon-viz")
        ctx = SearchContext(task=task, model=ScriptedFakeModel(agent_responder), store=store,
                            limits=Limits(max_steps=3), env_options={"isolate": False},
                            operator_model=ScriptedFakeModel(operator_responder, name="fake/operator"))
        hgm(ctx, max_evals=4, wave_size=2, max_concurrency=2, seed=3, run_id="hgm-viz")
    yield store
    store.close()


def embedded(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


def test_page_embeds_the_run_and_escapes_hostile_observations(runs: TrajectoryStore) -> None:
    page = render_run_html(runs, "bon-viz")
    data = embedded(page)
    assert data == json.loads(json.dumps(run_view(runs, "bon-viz"), default=str))
    hostile = data["attempts"][1]
    assert HOSTILE in hostile["steps"][0]["observation"] and hostile["steps"][0]["thought"] == HOSTILE_THOUGHT
    assert HOSTILE not in page and "<img src=x" not in page and "<!--" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data tag and the page script
    assert "http://" not in page and "https://" not in page  # nothing to fetch: no CDN, no fonts
    assert data["attempts"][2]["steps"][0]["format_error"]  # the prose reply is kept as a format error
    assert data["attempts"][0]["tests"]["PASS_TO_PASS"]["success"] == ["tests/test_mul.py::test_mul"]
    assert data["header"]["best_attempt_id"] == "bon-viz:sample:0" and data["header"]["resolved"] is True


HOSTILE_RUN = f'r"><svg onload=alert(3)>{HOSTILE}'


@pytest.fixture
def hostile_store(tmp_path: Path) -> Iterator[TrajectoryStore]:
    """Hostile text in every field that reaches the page: ids, operators, tools, patches, errors, summary."""
    store = TrajectoryStore(tmp_path / "s.sqlite")
    store.create_run("best_of_n", {"task_id": HOSTILE, "model": HOSTILE, "budget": {"max_tokens": 1000}},
                     run_id=HOSTILE_RUN)
    first = Trajectory(attempt_id=f"{HOSTILE_RUN}:a", task_id="t", run_id=HOSTILE_RUN, operator=HOSTILE,
                       status="submitted", patch=f"+{HOSTILE}\n",
                       steps=[{"index": 0, "thought": HOSTILE, "observation": HOSTILE,
                               "action": {"name": HOSTILE, "arguments": {"x": HOSTILE}}}],
                       evaluation={"resolved": False, "reward": 0.0, "source": "tests", "details": {"error": HOSTILE}},
                       selection={"reward": 0.0, "source": "tests"})
    second = Trajectory(attempt_id=f"{HOSTILE_RUN}:b", task_id="t", run_id=HOSTILE_RUN, operator=HOSTILE,
                        parent_ids=[first.attempt_id], usage={"prompt_tokens": 10, "completion_tokens": 5})
    for traj in (first, second):
        store.record(traj)
    store.finish_run(HOSTILE_RUN, {"strategy": "best_of_n", "stop_reason": HOSTILE, "resolved": False,
                                   "best_attempt_id": first.attempt_id, "best_reward": 0.0,
                                   "extra": {"elite_ids": [first.attempt_id]}})
    yield store
    store.close()


def test_hostile_ids_and_texts_are_escaped_everywhere(hostile_store: TrajectoryStore, tmp_path: Path) -> None:
    page = write_run_html(hostile_store, HOSTILE_RUN, tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "<svg onload" not in page and '">' + HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # escaped in the header and the SVG
    assert len(re.findall(r'class="node attempt', page)) == 2 and embedded(page)["header"]["task"] == HOSTILE
    with pytest.raises(KeyError):
        render_run_html(hostile_store, "no-such-run")
    # batch's single attempts have no runs row: the page is built from the attempt alone
    hostile_store.record(Trajectory(attempt_id="single:t:0", task_id="t", run_id="single:t", status="submitted",
                                    selection={"reward": 1.0, "source": "tests"},
                                    evaluation={"resolved": True, "reward": 1.0, "source": "tests", "details": {}}))
    header = run_view(hostile_store, "single:t")["header"]
    assert (header["strategy"], header["best_attempt_id"], header["resolved"]) == ("single", "single:t:0", True)
    assert "no summary" in render_run_html(hostile_store, "single:t")


def test_safe_filename() -> None:
    assert safe_filename("../evil/run:1") == "evil_run_1"
    assert safe_filename("hgm-calc-1-ab12") == "hgm-calc-1-ab12"
    assert safe_filename("...") == "run"


def test_cli_viz_run_writes_default_and_given_paths(runs: TrajectoryStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    res = cli.invoke(app, ["viz", "run", "hgm-viz", "--db", str(runs.path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "hgm-viz.html").read_text().startswith("<!DOCTYPE html>")
    res = cli.invoke(app, ["viz", "run", "bon-viz", "--db", str(runs.path), "--out", "out/x.html"])
    assert res.exit_code == 0 and "bon-viz:sample:0" in (tmp_path / "out" / "x.html").read_text()
    assert cli.invoke(app, ["viz", "run", "missing", "--db", str(runs.path)]).exit_code == 2
    assert cli.invoke(app, ["viz", "run", "x", "--db", "nowhere.sqlite"]).exit_code == 2
    assert not (tmp_path / "nowhere.sqlite").exists()


# ------------------------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium not found at /usr/bin/chromium")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                               args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_report(browser: Any, path: Path) -> tuple[Any, Any, dict[str, list[str]]]:
    """A page with the report loaded, every non-file request aborted and recorded, dialogs and errors kept."""
    seen: dict[str, list[str]] = {"network": [], "dialogs": [], "errors": []}
    context = browser.new_context(viewport={"width": 1400, "height": 900})

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            seen["network"].append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else seen["network"].append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector("#detail h2")
    return context, page, seen


@pytest.mark.web
def test_best_of_n_report_in_chromium(runs: TrajectoryStore, browser: Any, tmp_path: Path) -> None:
    out = write_run_html(runs, "bon-viz", tmp_path / "bon.html")
    context, page, seen = open_report(browser, out)
    try:
        assert page.locator("svg.lineage g.node").count() == 3
        assert "Attempt #1" in page.locator("#detail h2").inner_text()  # the answer is shown first
        page.locator('svg.lineage g.node[data-attempt="bon-viz:sample:1"]').click()
        detail = page.locator("#detail")
        assert "Attempt #2" in detail.locator("h2").inner_text()
        assert f"$ printf '%s' '{HOSTILE}'" in detail.locator(".call").first.inner_text()
        assert detail.locator(".obs").first.inner_text() == HOSTILE  # shown as text, never run
        assert detail.locator(".thought").first.inner_text() == HOSTILE_THOUGHT
        assert "not resolved" in detail.locator(".verdict").inner_text()
        assert "\u2717 tests/test_add.py::test_add" in detail.locator(".tests").inner_text()
        page.locator('#attempt-table tr[data-attempt="bon-viz:sample:2"]').click()
        assert "format error" in detail.inner_text().lower()
        page.locator('svg.lineage g.node[data-attempt="bon-viz:sample:0"]').click()
        assert page.locator("#detail .diff .dl.add").inner_text().strip() == "+    return a + b"
        assert page.locator("#detail .diff .dl.hunk").count() == 1
        assert page.locator("svg.curves").count() == 2
        shot = tmp_path / "bon.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000
        assert seen == {"network": [], "dialogs": [], "errors": []}
    finally:
        context.close()


@pytest.mark.web
def test_hgm_report_shows_variant_tree_in_chromium(runs: TrajectoryStore, browser: Any, tmp_path: Path) -> None:
    tree = runs.get_run("hgm-viz")["summary"]["extra"]["tree"]
    out = write_run_html(runs, "hgm-viz", tmp_path / "hgm.html")
    context, page, seen = open_report(browser, out)
    try:
        assert page.locator("svg.hgm g.vnode").count() == len(tree) >= 2
        assert page.locator("svg.hgm g.attempt").count() == sum(len(n["attempt_ids"]) for n in tree.values()) == 4
        root = page.locator('svg.hgm g.vnode[data-node="n0"]')
        assert f"own s/f {tree['n0']['s']}/{tree['n0']['f']}" in root.text_content() and "CMP" in root.text_content()
        assert page.locator("svg.hgm .edge-label").first.text_content() == "expand"
        page.locator('svg.hgm g.vnode[data-node="n1"]').click()
        assert "APPLY_FIX" in page.locator("#detail").inner_text()
        child_attempt = tree["n1"]["attempt_ids"][0]
        page.locator(f'svg.hgm g.attempt[data-attempt="{child_attempt}"]').click()
        detail = page.locator("#detail").inner_text()
        assert "str_replace" in detail and "RESOLVED" in detail and "APPLY_FIX" in detail
        page.screenshot(path=str(tmp_path / "hgm.png"), full_page=True)
        assert (tmp_path / "hgm.png").read_bytes()[:8] == PNG
        assert seen == {"network": [], "dialogs": [], "errors": []}
    finally:
        context.close()


@pytest.mark.web
def test_hostile_page_runs_no_script_in_chromium(hostile_store: TrajectoryStore, browser: Any, tmp_path: Path) -> None:
    out = write_run_html(hostile_store, HOSTILE_RUN, tmp_path / "hostile.html")
    context, page, seen = open_report(browser, out)
    try:
        detail = page.locator("#detail")
        assert detail.locator(".obs").first.inner_text() == HOSTILE
        assert detail.locator(".tool").first.inner_text() == HOSTILE and HOSTILE in detail.locator(".ferr").inner_text()
        page.locator("#attempt-table tr[data-attempt]").nth(1).click()
        assert "Attempt #2" in detail.locator("h2").inner_text()
        assert page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
        assert page.evaluate("document.scripts.length") == 2
        assert seen == {"network": [], "dialogs": [], "errors": []}
    finally:
        context.close()


def test_viz_graph_png(tmp_path: Path) -> None:
    pytest.importorskip("pygraphviz", reason="`pip install pygraphviz` (a manylinux wheel bundles graphviz)")
    target = tmp_path / "g.png"
    res = CliRunner().invoke(app, ["viz", "graph", "best_of_n", "--format", "png", "--out", str(target)])
    assert res.exit_code == 0, res.output
    assert target.read_bytes()[:8] == PNG
