"""Test helper: run the `ppp serve` app on a free loopback port in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from ppp_jax.commands.serve import ServeConfig, build_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cfg: ServeConfig, timeout_s: float = 60.0) -> Iterator[tuple[str, object]]:
    """Builds the engine + app for `cfg`, serves it, yields (base URL ".../v1", engine)."""
    import uvicorn

    engine, app = build_server(cfg)
    uv = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + timeout_s
        while not uv.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://{cfg.host}:{cfg.port}/v1", engine
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        engine.close()
