"""Test-side helpers for the multi-process tests: a free coordinator port, and waiting for a set
of helper processes where one failing must not leave the others hanging in a collective."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the JAX coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Waits for every helper; as soon as one fails (or time runs out) kills the rest, which
    would otherwise wait forever in a collective with it, and fails showing its output.

    Returns each helper's combined stdout/stderr, in the order of `procs`.
    """
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate()[0] for p in procs]
    # the helper that failed first, not the ones killed because of it (-9)
    for p, out in sorted(zip(procs, outputs), key=lambda po: po[0].returncode == -9):
        assert p.returncode == 0, f"helper {p.args[2:]} exited {p.returncode}:\n{out[-3000:]}"
    return outputs
