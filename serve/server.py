"""``serve()``: what ``cli serve`` calls. The model file (``exports.model_file``: an exported file, or a run
exported once in a child process), then either this process serves it with uvicorn until it is stopped
(Ctrl-C, SIGTERM), or Ray Serve runs replicas of the same application on a cluster (``serve/ray.py``)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clothprobe.errors import ClothprobeError
from clothprobe.serve.exports import model_file
from clothprobe.serve.settings import DEFAULT_HOST, DEFAULT_PORT, ServeSettings


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as err:
        raise ClothprobeError(f"Cannot listen on {url(host, port)} ({err.strerror or err}); choose another --port "
                              f"(0: any free one) or --host.") from None


def run_local(app: Any, sock: socket.socket, on_ready: Callable[[str], None]) -> None:
    """``app`` served by uvicorn on ``sock`` until the process is asked to stop; ``on_ready(url)`` once it
    answers. Ctrl-C is a normal end."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                host, port = sock.getsockname()[:2]
                on_ready(url(host, port))

    # log_config=None: uvicorn leaves the process's logging configuration alone; its errors still reach stderr.
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, server_header=False,
                            timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def serve(target: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, precision: str | None = None,
          settings: ServeSettings | None = None, engine: Any = None, on_ready: Callable[[str], None] | None = None,
          on_export: Callable[[str], None] | None = None) -> None:
    """Serve ``target`` (a file written by ``cli export``, or a run directory, exported first with ``precision``)
    over HTTP on ``host``:``port`` until stopped. ``engine``: None (this process), or a connected-on-demand
    ``featurize.engines.ray.RayEngine``: Ray Serve replicas on its cluster, one per worker. ``on_ready(url)``
    hears the address once it answers; ``on_export(line)`` hears an export being made."""
    settings = settings or ServeSettings()
    path = model_file(target, precision=precision, on_export=on_export)
    say = on_ready or (lambda _: None)
    if engine is not None:
        from clothprobe.serve.ray import deploy

        deploy(path, engine, host=host, port=port, settings=settings, on_ready=say)
        return
    from clothprobe.serve.app import create_app
    from clothprobe.serve.model import OnnxModel

    sock = listen(host, port)  # before the model loads: a port in use fails at once
    try:
        app = create_app(OnnxModel(path, threads=settings.model_threads), settings)
    except BaseException:
        sock.close()
        raise
    run_local(app, sock, say)
