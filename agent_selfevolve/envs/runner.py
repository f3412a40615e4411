"""Run one shell command in a sandbox so that nothing it does can hang, flood the run, or read what it must not.

Each command gets a fresh process group (killed whole on timeout), a scrubbed environment (no API keys leak
into the agent's shell) and output truncated head+tail. Where `bwrap` works, the command also sees an
allowlist of the filesystem, not `/`: system directories and the toolchain (the interpreter's prefixes, plus
what the caller names: tool bundles, a test env) read-only wherever they lie, /tmp included; the working copy
read-write, optionally at a fixed path such as /testbed; a private /tmp; no network. $HOME, the cache (mirrors,
other attempts, grading worktrees), stores and task files are simply absent.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent_selfevolve.envs.base import EnvironmentFailure

KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "TZ", "PYTHONHASHSEED")
MAX_OUTPUT_CHARS = 10_000
MAX_PROCESSES = 1024
"""More processes than this (beyond those the user already runs) and fork fails: a fork bomb stops there. The kernel
counts per user and exempts root, so as root only the timeout (and the sandbox's pid namespace) bound it."""
MAX_FILE_BYTES = 1 << 30
"""No file written by a command grows past this (RLIMIT_FSIZE: the writer gets SIGXFSZ, "File size limit
exceeded"), so a runaway `yes > out` cannot fill the disk."""
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""Read-only in the sandbox: what bash, git and a dynamically linked interpreter need (loader, libraries, /etc)."""


class SandboxError(EnvironmentFailure):
    """The sandbox cannot run the command: bwrap failed to set it up, or the program is missing inside it."""


@dataclass
class CommandResult:
    output: str
    returncode: int
    timed_out: bool
    truncated: bool
    duration_s: float


def truncate(text: str, limit: int = MAX_OUTPUT_CHARS) -> tuple[str, bool]:
    """Keep the head and the tail: errors are usually at the end, context at the start."""
    if len(text) <= limit:
        return text, False
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n\n[... {cut} characters cut ...]\n\n{text[-half:]}", True


def scrubbed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # Plugin autoload imports every pytest plugin installed beside us (not the task's): 9.0 s -> 2.8 s a run.
    env.update({"PAGER": "cat", "GIT_PAGER": "cat", "PIP_NO_INPUT": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "HOME": tempfile.gettempdir(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    env.update(extra or {})
    return env


def bwrap_available() -> bool:
    """bwrap exists and can actually create namespaces here (it cannot inside some containers)."""
    exe = shutil.which("bwrap")
    if not exe:
        return False
    probe = subprocess.run([exe, "--ro-bind", "/", "/", "--unshare-net", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


def python_prefixes(python: str | Path | None = None) -> list[Path]:
    """Directories an interpreter needs: this one's prefixes, or for `python` (a venv's, say) the prefix of the
    path as given and of its resolved target (a venv's python links to its base interpreter)."""
    if python is None:
        return [Path(p) for p in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix))]
    given = Path(python).absolute()
    return [given.parents[1], given.resolve().parents[1]]


class CommandRunner:
    """Runs commands with `cwd` as the only writable tree. `isolate=None` means: use bwrap when it works.

    Inside bwrap the command sees `readonly` (and this interpreter's prefixes, and the VIRTUAL_ENV that `env`
    names) at their own paths, `cwd` at `mount_at` (default: its own path), and nothing of `hide` even where it
    lies inside a readonly path; `root` is where the command finds `cwd`. Without bwrap nothing can be mounted, so
    `mount_at` is a view: `root` is still `mount_at`, a command's paths under it are run against `cwd` and `cwd`
    in its output reads as `mount_at`, so what an attempt is shown never names its own working copy."""

    def __init__(self, cwd: Path, timeout_s: float = 60.0, isolate: bool | None = None,
                 env: dict[str, str] | None = None, max_output_chars: int = MAX_OUTPUT_CHARS, *,
                 readonly: Iterable[str | Path] = (), mount_at: str | None = None, hide: Iterable[str | Path] = (),
                 max_processes: int = MAX_PROCESSES, max_file_bytes: int = MAX_FILE_BYTES):
        self.cwd = Path(cwd).resolve()
        self.max_processes, self.max_file_bytes = max_processes, max_file_bytes
        self.timeout_s = timeout_s
        self.isolate = bwrap_available() if isolate is None else isolate
        self.bwrap = shutil.which("bwrap") or "bwrap"  # found on our PATH, not on the scrubbed one
        venv = python_prefixes(Path(env["VIRTUAL_ENV"]) / "bin" / "python") if env and env.get("VIRTUAL_ENV") \
            else []  # an activated venv and its base interpreter (another Python than ours): toolchain
        self.readonly = [*python_prefixes(), *venv, *(Path(p) for p in readonly)]
        self.hide = [Path(p).resolve() for p in hide]
        clash = mount_at is not None and any(_nested(Path(mount_at), p) or _nested(p, Path(mount_at))
                                             for p in self.readonly)
        self.root = mount_at if mount_at and not (self.isolate and clash) else str(self.cwd)
        self._view = _PathView(self.root, [self.cwd, Path(cwd).absolute()]) if not self.isolate and mount_at \
            else None
        self.env = scrubbed_env({**(env or {}), **({"HOME": "/tmp"} if self.isolate else {})})
        self.max_output_chars = max_output_chars

    def _mounts(self) -> list[str]:
        """bwrap's mount arguments, parents before children so a deeper mount is never shadowed."""
        ops: list[tuple[Path, list[str]]] = []
        for d in map(Path, SYSTEM_DIRS):
            if d.is_symlink():
                ops.append((d, ["--symlink", os.readlink(d), str(d)]))
            elif d.is_dir():
                ops.append((d, ["--ro-bind", str(d), str(d)]))
        ops += [(Path("/dev"), ["--dev", "/dev"]), (Path("/proc"), ["--proc", "/proc"]),
                (Path("/tmp"), ["--tmpfs", "/tmp"])]
        bound: set[Path] = set()
        for p in self.readonly:
            if not p.exists():
                continue
            for dest in dict.fromkeys((p.absolute(), p.resolve())):  # reachable by its given and its real path
                if dest not in bound:
                    bound.add(dest)
                    ops.append((dest, ["--ro-bind", str(p.resolve()), str(dest)]))
        ops += [(h, ["--tmpfs", str(h)]) for h in self.hide if any(_nested(h, b) for b in bound)]
        ops.sort(key=lambda op: len(op[0].parts))  # stable: a hide comes after the bind at its own depth
        return [arg for _, args in ops for arg in args]

    def _argv(self, command: list[str], marker_fd: int, shell: bool) -> list[str]:
        """bwrap around a small bash that reports "set up" on `marker_fd`, closes it, then execs the command, so
        that a failure of the sandbox itself is told apart from the command's own exit code."""
        run = 'exec bash -c "$1"' if shell else 'exec "$@"'
        inner = ["bash", "-c", f"printf x >&{marker_fd} && exec {marker_fd}>&- && {self._ulimit()}{run}", "bash",
                 *command]
        return [self.bwrap, *self._mounts(), "--bind", str(self.cwd), self.root, "--unshare-net", "--unshare-pid",
                "--die-with-parent", "--chdir", self.root, *inner]

    def _ulimit(self) -> str:
        """Shell prefix setting the process and file-size limits (RLIMIT_NPROC counts all of the user's processes,
        so the limit is what the user runs now plus `max_processes`)."""
        uid = os.getuid()
        running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)
        nproc = _clamp(resource.RLIMIT_NPROC, running + self.max_processes)
        blocks = _clamp(resource.RLIMIT_FSIZE, self.max_file_bytes // 1024 * 1024) // 1024  # bash counts 1 KiB
        return f"ulimit -u {nproc} -f {max(1, blocks)} && "

    def run(self, command: str | list[str], timeout_s: float | None = None, stdin: str | None = None,
            max_output_chars: int | None = None) -> CommandResult:
        """Run `command` (a shell string, or argv); raises SandboxError when the sandbox cannot run it.
        `max_output_chars` overrides the runner's cap (for output that is parsed, not shown)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        limit = self.max_output_chars if max_output_chars is None else max_output_chars
        if self._view is not None:
            command = self._view.to_real(command) if isinstance(command, str) else [self._view.to_real(c)
                                                                                    for c in command]
        shell = isinstance(command, str)
        read_fd, write_fd = os.pipe() if self.isolate else (-1, -1)
        if self.isolate:
            argv = self._argv([command] if isinstance(command, str) else list(command), write_fd, shell)
        else:
            argv = ["bash", "-c", f'{self._ulimit()}exec bash -c "$1"' if shell else f'{self._ulimit()}exec "$@"',
                    "bash", *([command] if isinstance(command, str) else command)]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin is not None else
                                    subprocess.DEVNULL, start_new_session=True,
                                    pass_fds=(write_fd,) if self.isolate else ())
        except OSError as exc:
            if self.isolate:
                os.close(read_fd)
            raise SandboxError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            if self.isolate:
                os.close(write_fd)
        reader = _BoundedReader(proc, limit)
        if stdin is not None and proc.stdin:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(stdin.encode())
            proc.stdin.close()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)  # also reaps background children the command left behind
        reader.join(timeout=5)
        text, truncated = truncate(reader.text(), limit)
        if self.isolate and not _read_marker(read_fd):
            raise SandboxError(f"bubblewrap could not set up the sandbox (exit code {proc.returncode}): "
                               f"{text.strip()[-2000:]}")
        if self.isolate and not shell and proc.returncode == 127 and not timed_out:
            raise SandboxError(f"{command[0]} cannot be run inside the sandbox: {text.strip()[-2000:]}")
        truncated = truncated or reader.dropped > 0
        if self._view is not None:
            text = self._view.to_view(text)
        if timed_out:
            text += f"\n[command timed out after {timeout:g} s and was killed]"
        return CommandResult(text, -9 if timed_out else proc.returncode, timed_out, truncated,
                             time.monotonic() - start)


class _PathView:
    """An unsandboxed runner's stand-in for a mount: `root` (say /testbed) in commands means the real directory,
    and the real directory in output reads as `root`."""

    def __init__(self, root: str, real: list[Path]) -> None:
        self.real = str(real[0])
        self._root = re.compile(r"(?<![\w./-])" + re.escape(root) + r"(?![\w.-])")
        forms = sorted({str(p) for p in real}, key=len, reverse=True)  # the longer form first
        self._real = re.compile("|".join(re.escape(f) for f in forms) + r"(?![\w.-])")
        self.root = root

    def to_real(self, text: str) -> str:
        return self._root.sub(lambda _: self.real, text)

    def to_view(self, text: str) -> str:
        return self._real.sub(lambda _: self.root, text)


def _clamp(limit: int, wanted: int) -> int:
    """`wanted`, or the hard limit we already run under when that is lower (raising it would fail)."""
    hard = resource.getrlimit(limit)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _owner(proc_dir: Path) -> int | None:
    try:
        return proc_dir.stat().st_uid
    except OSError:  # the process ended meanwhile
        return None


def _read_marker(fd: int) -> bool:
    """Whether the sandbox wrote its "set up" byte; never blocks (a writer may linger a moment after the kill)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) == b"x"
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _nested(inner: Path, outer: Path) -> bool:
    """`inner` lies strictly inside `outer`."""
    return inner != outer and inner.is_relative_to(outer)


class _BoundedReader(threading.Thread):
    """Drains the pipe so the child never blocks, keeping only a head and a tail: memory stays bounded."""

    def __init__(self, proc: subprocess.Popen[bytes], limit: int):
        super().__init__(daemon=True)
        self.proc, self.limit = proc, limit
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_len = 0
        self.dropped = 0
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            room = self.limit - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail.append(chunk)
                self.tail_len += len(chunk)
                while self.tail_len - len(self.tail[0]) >= self.limit:
                    self.dropped += len(self.tail[0])
                    self.tail_len -= len(self.tail.popleft())

    def text(self) -> str:
        body = bytes(self.head)
        if self.dropped:
            body += f"\n[... {self.dropped} bytes cut ...]\n".encode()
        return (body + b"".join(self.tail)).decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
