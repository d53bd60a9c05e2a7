"""Replicas on a Ray cluster (``cli serve --engine ray``): Ray Serve runs the same application (``app.py``, with
its own micro-batching and limits) in each replica, behind Ray Serve's HTTP proxy.

The cluster is the one featurize uses: ``RayEngine`` joins it (``--address``; token authentication as in
docs/guide/ray-auth.md) or starts a local runtime, and sizes the replicas as it sizes featurize's model
workers (one per node by default, each reserving ``threads`` CPUs). The exported file travels with the
deployment (its bytes), so the nodes need no shared file system. The command serves until it is stopped
(Ctrl-C or SIGTERM), then deletes its application from the cluster.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from clothprobe.errors import ClothprobeError
from clothprobe.serve.settings import ServeSettings

APP_NAME = "clothprobe"
INSTALL = 'pip install "clothprobe[serve,ray]"'
QUIET = {"log_level": "WARNING", "enable_access_log": False}  # Ray Serve's own logs: its warnings and errors only


class Replica:
    """One replica: the exported file (its bytes, named ``name`` in errors) in the serving application."""

    def __init__(self, data: bytes, name: str, settings: ServeSettings) -> None:
        from clothprobe.serve.app import create_app
        from clothprobe.serve.model import OnnxModel

        self._app = create_app(OnnxModel(data, threads=settings.model_threads, where=name), settings)

    def __serve_build_asgi_app__(self) -> Any:
        return self._app


def import_serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise ClothprobeError(f"--engine ray serves with Ray Serve, which is not installed: {INSTALL}") from None
    return serve


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM, like Ctrl-C, ends the wait (so the application is deleted); the old handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _public_host(host: str, engine: Any) -> str:
    """Where clients reach the proxy: ``host``, or for every interface the head node's address."""
    if host not in ("0.0.0.0", "::"):
        return host
    from clothprobe.featurize.engines.ray import check_address

    where = check_address(engine.address)
    return where[0] if where else "127.0.0.1"


def deploy(path: Path, engine: Any, *, host: str, port: int, settings: ServeSettings,
           on_ready: Callable[[str], None]) -> None:
    """Serve ``path`` with Ray Serve replicas on ``engine``'s cluster until stopped; ``on_ready(url)`` once
    every replica runs."""
    from clothprobe.serve.server import url

    if port == 0:
        raise ClothprobeError("--engine ray needs a fixed --port: Ray Serve's proxy listens on it on the nodes.")
    serve = import_serve()
    sizing = engine.connect()
    threads = settings.threads or sizing.threads
    deployment = serve.deployment(
        serve.ingress()(Replica), name=APP_NAME, num_replicas=sizing.workers, logging_config=QUIET,
        ray_actor_options={"num_cpus": threads}, max_ongoing_requests=settings.max_requests)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
    try:
        serve.run(deployment.bind(Path(path).read_bytes(), Path(path).name, replace(settings, threads=threads)),
                  name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as err:
        raise ClothprobeError(f"Ray Serve could not start the replicas ({str(err).splitlines()[0][:300]}); the "
                              f"replica logs on the cluster say why.") from None
    try:
        with _stopped_by_sigterm():
            on_ready(url(_public_host(host, engine), port))
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
