"""Real servers for the serving tests: ``cli serve`` in a subprocess as a user starts it (its address read from
its first line), or an application on real uvicorn in a thread of the test (limits the command line does not
expose); both on a free local port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ADDRESS = re.compile(r" at (http://\S+/) ")


@contextlib.contextmanager
def cli_server(*args: str, port: int = 0, env: dict[str, str] | None = None,
               timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """``cli serve ARGS --port PORT`` running; its address and process. Stopped with Ctrl-C (SIGINT) at the end,
    and the test fails when it does not stop."""
    proc = subprocess.Popen([sys.executable, "-m", "clothprobe.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        url = _address(proc, timeout)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail("cli serve did not stop within 30 s of Ctrl-C")
        proc.stdout.close()
        proc.stderr.close()


def _address(proc: subprocess.Popen, timeout: float) -> str:
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    match = ADDRESS.search(found[0]) if found else None
    if match is None:
        proc.kill()
        pytest.fail(f"cli serve printed no address within {timeout} s: stdout {found!r}, stderr "
                    f"{proc.stderr.read()[-3000:]!r}")
    return match[1]


@contextlib.contextmanager
def thread_server(app: object) -> Iterator[str]:
    """``app`` on real uvicorn in a thread of this process, on a free local port; its address."""
    import uvicorn

    from clothprobe.serve.server import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start within 30 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 36), fmt: str = "JPEG",
          seed: int = 0) -> Path:
    """A photo of mostly ``colour`` with seeded noise, so each has its own pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path
