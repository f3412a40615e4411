"""Parts 2-4 of the chaos run: bad input (fuzz), runaway commands in the sandbox, and a store that turns unwritable.

Each case counts as `handled` only when the product answered with a clear error (an error observation, a named
exception naming the file, a trajectory status with an exit message) and the invariants hold: no exception out
of the API, marker files planted outside the worktree untouched, nothing already stored lost, nothing left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from chaos_kill import corrupt_files, result_lines

from agent_selfevolve.envs.base import ToolCall
from agent_selfevolve.tasks import Task

Case = tuple[str, Callable[[], bool]]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=c", "-c", "user.email=c@c", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def tiny_task(root: Path, name: str = "fuzz-1") -> Task:
    """A one-file repository whose add() subtracts (and a hidden test for it)."""
    repo = root / f"repo-{name}"
    repo.mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    test = ("diff --git a/test_calc.py b/test_calc.py\nnew file mode 100644\n--- /dev/null\n+++ b/test_calc.py\n"
            "@@ -0,0 +1,2 @@\n+from calc import add\n+def test_add(): assert add(2, 3) == 5\n")
    return Task(instance_id=name, repo="local/calc", repo_path=str(repo), base_commit=_git(repo, "rev-parse", "HEAD"),
                problem_statement="add() subtracts", test_patch=test, FAIL_TO_PASS=["test_calc.py::test_add"])


def _tally(part: str, case: str, cases: list[Case], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the cases: `handled` counts True, `crashes` an exception out of the product's API."""
    handled, crashes, failed, timings = 0, 0, [], {}
    for name, fn in cases:
        t0 = time.monotonic()
        try:
            ok = fn()
        except Exception as exc:  # an exception out of the API is a crash
            ok = False
            crashes += 1
            failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:160]}")
        else:
            if not ok:
                failed.append(name)
        timings[name] = round(time.monotonic() - t0, 2)
        handled += bool(ok)
    return {"part": part, "case": case, "tried": len(cases), "handled": handled, "unclear": len(cases) - handled,
            "crashes": crashes, "notes": failed[:10], "timings_s": timings, **(extra or {})}


# --- part 2: fuzz ---------------------------------------------------------------------------------------------------

def fuzz_task_files(work: Path, rng: random.Random) -> dict[str, Any]:
    from agent_selfevolve.tasks import TaskFileError, load_tasks

    good = {"instance_id": "a-1", "repo": "x/y", "repo_path": "/nonexistent", "problem_statement": "p"}
    bodies: dict[str, bytes] = {
        "wrong_types.json": json.dumps([{**good, "instance_id": 123, "FAIL_TO_PASS": 5}]).encode(),
        "not_a_list.json": b'"just a string"',
        "truncated.jsonl": (json.dumps(good) + "\n" + json.dumps(good)[:30]).encode(),
        "binary.jsonl": bytes(rng.randrange(256) for _ in range(4096)),
        "duplicated_ids.jsonl": (json.dumps(good) + "\n" + json.dumps(good) + "\n").encode(),
        "huge.jsonl": (json.dumps({**good, "problem_statement": "x" * 30_000_000}) + "\n").encode()[:20_000_000],
        "empty_statement.json": json.dumps([{**good, "problem_statement": ""}]).encode(),
        "nul_bytes.jsonl": json.dumps(good).encode().replace(b"a-1", b"a\x00-1") + b"\n\x00\x00",
    }
    folder = work / "taskfiles"
    folder.mkdir(parents=True)

    def case(name: str) -> Callable[[], bool]:
        def run() -> bool:
            path = folder / name
            if name != "missing.json":
                path.write_bytes(bodies[name])
            try:
                load_tasks(path)
            except TaskFileError as exc:
                return path.name in str(exc)  # a clear error names the file
            return False  # loaded a file it should have refused
        return run

    return _tally("fuzz", "task files", [(n, case(n)) for n in ["missing.json", *bodies]])


def fuzz_tool_args(work: Path) -> dict[str, Any]:
    from agent_selfevolve.envs.coding import CodingEnvironment
    from agent_selfevolve.envs.worktree import WorktreePool

    outside = work / "outside"
    outside.mkdir(parents=True)
    marker = outside / "marker.txt"
    marker.write_text("untouched\n")
    before = sorted(p.name for p in outside.iterdir())
    task = tiny_task(work, "tools-1")
    env = CodingEnvironment(task, "fuzz-tools", pool=WorktreePool(work / "cache"), command_timeout_s=20,
                            tools=("bash", "view", "str_replace", "write_file", "python", "submit"))
    env.reset()
    assert env.path is not None
    (env.path / "escape").symlink_to(outside)
    rel = os.path.relpath(marker, env.path)
    calls: dict[str, ToolCall] = {
        "write ../ escape": ToolCall("write_file", {"path": rel, "content": "pwned\n"}),
        "write absolute": ToolCall("write_file", {"path": str(marker), "content": "pwned\n"}),
        "write via symlink": ToolCall("write_file", {"path": "escape/new.txt", "content": "pwned\n"}),
        "str_replace via symlink": ToolCall("str_replace", {"path": "escape/marker.txt", "old": "untouched",
                                                            "new": "pwned"}),
        "str_replace ../": ToolCall("str_replace", {"path": rel, "old": "untouched", "new": "pwned"}),
        "bash writes outside": ToolCall("bash", {"command": f"echo pwned > {marker}; echo pwned > {rel}"}),
        "bash via symlink": ToolCall("bash", {"command": "echo pwned > escape/marker.txt"}),
        "view absolute": ToolCall("view", {"path": "/etc/shadow"}),
        "huge string": ToolCall("write_file", {"path": "big.py", "content": "x = 1\n" * 1_000_000}),
        "huge command": ToolCall("bash", {"command": "echo " + "a" * 2_000_000}),
        "NUL in path": ToolCall("write_file", {"path": "a\x00b.py", "content": "x = 1\n"}),
        "NUL in content": ToolCall("str_replace", {"path": "calc.py", "old": "a - b", "new": "a\x00b"}),
        "NUL in command": ToolCall("bash", {"command": "echo a\x00b"}),
        "wrong types": ToolCall("write_file", {"path": ["calc.py"], "content": 5}),
        "no arguments": ToolCall("str_replace", {}),
    }

    def case(call: ToolCall) -> Callable[[], bool]:
        def run() -> bool:
            obs = env.step(call)
            return bool(obs.text.strip()) and "Traceback" not in obs.text  # a clear answer, never an exception
        return run

    row = _tally("fuzz", "tool arguments", [(n, case(c)) for n, c in calls.items()])
    escaped = marker.read_text() != "untouched\n" or sorted(p.name for p in outside.iterdir()) != before
    still = env.step(ToolCall("bash", {"command": "echo still-working"}))
    env.close()
    row["writes_outside"] = int(escaped)
    row["crashes"] += int("still-working" not in still.text)
    return row


def fuzz_model_replies(work: Path) -> dict[str, Any]:
    from agent_selfevolve.agent import Limits
    from agent_selfevolve.attempt import AttemptSpec, run_attempt
    from agent_selfevolve.envs.worktree import WorktreePool
    from agent_selfevolve.models.fake import ScriptedFakeModel, bash, tool_call
    from agent_selfevolve.store import TrajectoryStore
    from agent_selfevolve.trajectory import Trajectory

    os.environ["AGENT_SELFEVOLVE_CACHE"] = str(work / "cache")
    task = tiny_task(work, "replies-1")
    store = TrajectoryStore(work / "replies.sqlite")
    store.record(Trajectory("done-before", task.instance_id, run_id="fuzz", status="submitted", patch="kept"))
    two = {"role": "assistant", "content": None, "tool_calls": [
        tool_call("bash", {"command": "ls"})["tool_calls"][0], tool_call("submit", {})["tool_calls"][0]]}
    bad_json = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "", "type": "function", "function": {"name": "bash", "arguments": "{not json"}}]}
    scripts: dict[str, list[Any]] = {
        "no action": ["I will think about it."] * 5,
        "two actions": [two, tool_call("submit", {})],
        "invalid JSON": [bad_json] * 5,
        "1 MB of text": ["z" * 1_000_000] * 5,
        "unknown tool": [tool_call("teleport", {"to": "moon"})] * 5 + [tool_call("submit", {})],
        "endless repetition": [bash("ls")] * 60,
    }

    def case(name: str, script: list[Any]) -> Callable[[], bool]:
        def run() -> bool:
            traj = run_attempt(task, ScriptedFakeModel(script), AttemptSpec(task.instance_id, attempt_id=name,
                               run_id="fuzz"), limits=Limits(max_steps=12), store=store, evaluate="none",
                               select_with="proxy", env_options={"pool": WorktreePool(work / "cache")})
            return traj.status not in ("error", "env_error") and bool(traj.exit_message or traj.status == "submitted")
        return run

    row = _tally("fuzz", "model replies", [(n, case(n, s)) for n, s in scripts.items()])
    kept = store.get("done-before")
    row["lost"] = int(kept is None or kept.patch != "kept")
    row["statuses"] = {t.attempt_id: f"{t.status}: {t.exit_message[:60]}" for t in store.attempts(run_id="fuzz")}
    return row


def fuzz_web(work: Path) -> dict[str, Any]:
    try:
        from agent_selfevolve.envs.web import BrowserEnvironment
    except ImportError as exc:
        return {"part": "fuzz", "case": "web actions", "tried": 0, "handled": 0, "skipped": f"no web extra: {exc}"}

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = b"<html><title>Start</title><body><a href='/'>Home</a><input aria-label='Notes'></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = f"http://127.0.0.1:{server.server_address[1]}"
    task = Task(instance_id="web-fuzz", kind="web", start_url=f"{site}/", allowed_origins=[site],
                problem_statement="Explore.", reward={"answer": "start"})
    env = BrowserEnvironment(task, "web-fuzz", navigation_timeout_s=3, action_timeout_s=3)
    try:
        env.reset()
    except Exception as exc:  # the browser cannot start here: say so, do not count it
        server.shutdown()
        return {"part": "fuzz", "case": "web actions", "tried": 0, "handled": 0,
                "skipped": f"browser did not start: {type(exc).__name__}: {str(exc)[:200]}"}
    calls = {"click e999": ToolCall("click", {"id": "e999"}),
             "fill non-id": ToolCall("fill", {"id": "x y", "text": "a"}),
             "select e0": ToolCall("select_option", {"id": "e0", "option": "z"}),
             "click huge id": ToolCall("click", {"id": "e" + "9" * 5000}), "click no id": ToolCall("click", {}),
             "goto off-site": ToolCall("goto", {"url": "http://10.255.255.1/"}),
             "unknown tool": ToolCall("teleport", {})}

    def case(call: ToolCall) -> Callable[[], bool]:
        return lambda: bool((obs := env.step(call)).error and obs.text.strip())

    try:
        return _tally("fuzz", "web actions", [(n, case(c)) for n, c in calls.items()])
    finally:
        env.close()
        server.shutdown()


# --- part 3: runaway commands ---------------------------------------------------------------------------------------

def _leftovers(mark: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mark.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def runaway(work: Path) -> dict[str, Any]:
    from agent_selfevolve.envs.runner import CommandRunner

    work.mkdir(parents=True, exist_ok=True)
    timeout, file_limit = 5.0, 64 << 20
    runner = CommandRunner(work, timeout_s=timeout, max_processes=64, max_file_bytes=file_limit)
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(8)
    port = host.getsockname()[1]
    as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups " if os.getuid() == 0 else ""
    rows, left_running, not_stopped = {}, 0, []
    commands = {  # each: (command, did it stop as it should?)
        # The bomb held in the foreground keeps the command busy until the process limit or the timeout stops it.
        "fork bomb": (f"{as_nobody}bash -c 'b() {{ b | b; }}; b # MARK'",
                      lambda r: r.timed_out or r.returncode != 0 or "Resource temporarily unavailable" in r.output),
        # The classic bomb detaches: its first shell returns 0 at once (whether forks already failed is a race), so
        # what counts is that none of its copies (the mark is in each one's command line) outlives the command.
        "detached fork bomb": (f"{as_nobody}bash -c 'b() {{ b | b & }}; b # MARK'", lambda r: True),
        "infinite output": ("yes chaos", lambda r: r.truncated and len(r.output) < 3 * runner.max_output_chars),
        "sleep forever": ("sleep 100000", lambda r: r.timed_out),
        "writing gigabytes": ("head -c 3000000000 /dev/zero > big.bin",
                              lambda r: r.returncode != 0 and (work / "big.bin").stat().st_size <= file_limit),
        "binding a port": ("python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); "
                           "s.listen(); time.sleep(1000)'", lambda r: r.timed_out),
        "trying the network": (f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 3)'",
                               lambda r: r.returncode != 0 and runner.isolate),
    }
    for name, (command, stopped) in commands.items():
        mark = f"chaos-{uuid.uuid4().hex[:10]}"
        t0 = time.monotonic()
        result = runner.run(f"{command.replace('MARK', mark)} # {mark}")
        took = time.monotonic() - t0
        ok = stopped(result) and took < timeout + 10
        time.sleep(0.3)
        left = _leftovers(mark)
        for pid in left:
            with_suppress_kill(pid)
        left_running += len(left)
        goes_on = "still-ok" in runner.run("echo still-ok").output
        rows[name] = {"seconds": round(took, 2), "stopped": ok, "left_running": len(left), "goes_on": goes_on,
                      "exit": result.returncode, "timed_out": result.timed_out}
        if not (ok and goes_on and not left):
            not_stopped.append(name)
    host.close()
    (work / "big.bin").unlink(missing_ok=True)
    return {"part": "runaway", "case": "sandbox commands", "tried": len(commands),
            "handled": len(commands) - len(not_stopped), "not_stopped": len(not_stopped),
            "left_running": left_running, "isolated": runner.isolate, "timeout_s": timeout,
            "file_limit_bytes": file_limit, "fork_bomb_user": "nobody (root is exempt from RLIMIT_NPROC)"
            if as_nobody else "self", "cases": rows, "notes": not_stopped}


def with_suppress_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


# --- part 4: disk full / read-only store ----------------------------------------------------------------------------

def disk(work: Path, fake_file: Path, task_file: Path, n_tasks: int) -> dict[str, Any]:
    """A batch whose output folder is a 1 MB tmpfs that fills up mid-run, then gets room. (A read-only remount of a
    tmpfs with files open for writing fails as busy, and root ignores modes: the read-only case is not simulated.)"""
    from chaos_kill import ROOT

    rows = []
    for mode in ("full",):
        mnt = work / f"out-{mode}"
        mnt.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                 capture_output=True).returncode == 0
        if not mounted:
            rows.append({"part": "disk", "case": mode, "tried": 0, "handled": 0,
                         "skipped": "cannot mount a tmpfs here (needs root)"})
            continue
        try:
            rows.append(_disk_case(mode, mnt, work, fake_file, task_file, n_tasks, ROOT))
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return rows  # type: ignore[return-value]


def _disk_case(mode: str, mnt: Path, work: Path, fake_file: Path, task_file: Path, n_tasks: int,
               root: Path) -> dict[str, Any]:
    out = mnt / "batch"
    env = {**os.environ, "PYTHONPATH": str(root), "AGENT_SELFEVOLVE_CACHE": str(work / "cache"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "agent_selfevolve.cli", "batch", "--tasks", str(task_file), "--model",
           f"fake:{fake_file}", "--out", str(out), "--executor", "inline", "--max-steps", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(result_lines(out / "results.jsonl")) < 1 and proc.poll() is None:
        time.sleep(0.05)
    done_before = set(result_lines(out / "results.jsonl"))
    filler = mnt / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    try:
        text = proc.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        text = proc.communicate()[0]
    clear = proc.returncode != 0 and "Traceback" not in text and "rerun the same command" in " ".join(text.split())
    filler.unlink()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    ids = result_lines(out / "results.jsonl")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    lost = len(done_before - set(ids)) + (n_tasks - int(summary.get("resolved_instances", 0)))
    tail = [line for line in text.strip().splitlines() if line.strip()][-3:]
    return {"part": "disk", "case": f"output {mode}", "tried": 1, "handled": int(clear and resumed.returncode == 0),
            "unclear": int(not clear), "lost": lost, "corrupt_files": len(corrupt_files(out)),
            "done_before": len(done_before), "resumed_ok": resumed.returncode == 0, "exit_code": proc.returncode,
            "message": tail, "notes": [] if clear else [text[-800:]]}


def run_part(part: str, work: Path, cfg: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    os.environ["AGENT_SELFEVOLVE_CACHE"] = str(work / "cache")
    if part == "fuzz":
        return [fuzz_task_files(work / "files", rng), fuzz_tool_args(work / "tools"),
                fuzz_model_replies(work / "replies"), fuzz_web(work / "web")]
    if part == "runaway":
        return [runaway(work / f"round-{i}") for i in range(cfg["runaway_rounds"])]
    if part == "disk":
        from chaos import write_inputs

        task_file, fake_file, _ = write_inputs(work, cfg["disk_tasks"])
        return disk(work, fake_file, task_file, cfg["disk_tasks"])  # type: ignore[return-value]
    raise SystemExit(f"unknown part {part!r}: kill, fuzz, runaway or disk")
