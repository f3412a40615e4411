"""Take a batch's pool workers down with the batch, even when it dies by kill -9 while they are still starting.

A pool worker asks the kernel for a death signal (PR_SET_PDEATHSIG) in its initializer, but it only gets there
after importing the package: seconds on a loaded machine. A batch killed in that window leaves its workers (and,
through them, multiprocessing's resource tracker) alive. So `batch.py` starts this guard as
`python -I -S pool_guard.py OWNER_PID MARK` before it spawns any worker, and puts `MARK` in its own environment,
which every worker inherits from its first instruction. When the owner goes (EOF on stdin, whose write end only
the owner holds; or re-parenting, should the guard start after the owner died), the guard SIGKILLs every process
whose environment carries the mark and exits. It spares the resource tracker: that one must outlive the workers
to unlink their semaphores, and exits by itself once they are gone. Standard library only: it starts in
milliseconds and imports nothing of the package.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARK_ENV = "AGENT_SELFEVOLVE_POOL_MARK"
TRACKER = b"multiprocessing.resource_tracker"


def marked_pids(mark: str, spare: int = 0) -> list[int]:
    """Live (non-zombie) processes, other than this one and `spare`, whose environment has MARK_ENV=mark."""
    needle, me, found = f"{MARK_ENV}={mark}".encode(), os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, spare):
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if TRACKER in fh.read():
                    continue
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        found.append(int(entry))
    return found


def kill_marked(mark: str, spare: int = 0, rounds: int = 20) -> int:
    """SIGKILL the marked processes but `spare` until none is left (a worker may fork between two scans)."""
    killed = 0
    for _ in range(rounds):
        pids = marked_pids(mark, spare)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def wait_for_owner(owner: int) -> None:
    """Return once the owner has closed our stdin or died."""
    while os.getppid() == owner:
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready and not os.read(0, 4096):
            return


def main(argv: list[str]) -> int:
    owner, mark = int(argv[1]), argv[2]
    for sig in (signal.SIGINT, signal.SIGHUP):  # a Ctrl-C reaches the whole group: stay until the owner goes
        signal.signal(sig, signal.SIG_IGN)
    wait_for_owner(owner)
    kill_marked(mark, spare=owner)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
