"""A local httpbin for test suites that talk to httpbin.org (psf/requests), on 127.0.0.1 inside the sandbox.

Grading runs with no network (bubblewrap's --unshare-net leaves only loopback), so tests written against
http://httpbin.org/ would fail for the wrong reason. The test command is wrapped: the env's own python serves the
`httpbin` package (installed into that env) on a free loopback port in the background, `HTTPBIN_URL` points at it
(old requests tests read it; newer ones use pytest-httpbin, which serves on loopback by itself), then the tests run.
Because the server starts inside the same sandbox, it is in the same network namespace as the tests.
"""

from __future__ import annotations

import shlex

PACKAGES = ("httpbin", "pytest-httpbin")
"""Installed into the env of a repository that needs them (best effort: the build notes a failure)."""
REPOS = frozenset({"psf/requests"})

_SERVE = """
import os, sys
from werkzeug.serving import make_server
from httpbin import app
server = make_server("127.0.0.1", 0, app, threaded=True)
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write(str(server.server_port))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
server.serve_forever()
"""


def serve_command(port_file: str) -> str:
    """Shell: start the server in the background; `$_httpbin_pid` is its pid, the port lands in `port_file`."""
    return f"python -c {shlex.quote(_SERVE)} \"{port_file}\" >/dev/null 2>&1 & _httpbin_pid=$!"


def with_local_httpbin(command: str, wait_s: int = 20) -> str:
    """`command` with a local httpbin running for it and HTTPBIN_URL exported (the empty string if the server did
    not come up: the tests then fail fast on a refused connection, and never reach the internet)."""
    port_file = "$_httpbin_port"  # a fresh file: graders running side by side without a sandbox share /tmp
    tries = wait_s * 10
    return (f"_httpbin_port=$(mktemp); {serve_command(port_file)}; "
            f"for _ in $(seq {tries}); do [ -s {port_file} ] && break; kill -0 $_httpbin_pid 2>/dev/null || break; "
            f"sleep 0.1; done; "
            f"if [ -s {port_file} ]; then export HTTPBIN_URL=\"http://127.0.0.1:$(cat {port_file})/\"; "
            f"else echo 'local httpbin did not start' >&2; export HTTPBIN_URL=http://127.0.0.1:9/; fi; "
            f"{command}; kill $_httpbin_pid 2>/dev/null; rm -f {port_file}")
