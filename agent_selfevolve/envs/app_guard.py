"""Run a web app's command and take its whole session down when the runner goes, even by kill -9.

Started by `webapp.AppProcess` as `python -I app_guard.py RUNNER_PID GRACE_S -- command...` in a new session, so
the app and everything it spawns share the guard's session id. The guard watches three things: its stdin (a pipe
whose write end only the runner holds: EOF when the runner dies), its parent pid (re-parented when the runner
dies, even if a forked child still holds the pipe) and SIGTERM (a normal teardown). Then it sends SIGTERM to every
process of the session, waits up to GRACE_S, SIGKILLs what is left and exits. Standard library only: it must
start fast and import nothing of the package.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, read from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _signal_session(sig: int) -> int:
    me, count = os.getpid(), 0
    for pid in session_pids(os.getsid(0)):
        if pid != me:
            try:
                os.kill(pid, sig)
                count += 1
            except ProcessLookupError:
                pass
    return count


def _runner_gone(runner: int) -> bool:
    if os.getppid() != runner:
        return True
    ready, _, _ = select.select([0], [], [], 0.2)
    return bool(ready) and not os.read(0, 1)  # EOF: the runner's end of the pipe closed


def main(argv: list[str]) -> int:
    runner, grace = int(argv[1]), float(argv[2])
    command = argv[4:] if argv[3] == "--" else argv[3:]
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.append(1))
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    while child.poll() is None and not stop and not _runner_gone(runner):
        pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    deadline = time.monotonic() + grace
    if _signal_session(signal.SIGTERM):
        while time.monotonic() < deadline and len(session_pids(os.getsid(0))) > 1:  # zombies do not count
            time.sleep(0.05)
    _signal_session(signal.SIGKILL)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
