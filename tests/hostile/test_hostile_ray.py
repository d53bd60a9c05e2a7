"""Issue 17, joining a Ray cluster: a wrong or dead address fails within seconds in one line, and a cluster
started the documented way (`ray start --head`, token authentication in Ray 2.59+) is joined."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from test_cli import cli
from test_ray import _free_port, _stop_cluster, needs_ray

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.engines.ray import check_address, probe_address

TINY_ARGS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--batch-size", "4",
             "--precision", "float32"]


@pytest.mark.parametrize("address", ["not an address", "127.0.0.1", "host:0", "host:65536", ":6379", "a b:1"])
def test_a_malformed_address_is_refused_before_any_work(address: str) -> None:
    with pytest.raises(ClothprobeError, match="is not a cluster address; give HOST:PORT"):
        check_address(address)


@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head:10001", "[::1]:6379", "auto", None])
def test_cluster_addresses_pass(address: str | None) -> None:
    check_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "192.0.2.1:6379"])  # closed port; TEST-NET-1, unroutable
def test_a_dead_address_fails_within_seconds(address: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ClothprobeError, match=f"Cannot reach a Ray cluster at {address}"):
        probe_address(address)
    assert time.perf_counter() - started < 5


def test_something_that_is_not_a_grpc_server_is_refused(tmp_path: Path) -> None:
    """A port that accepts connections but does not speak HTTP/2 (a web server, say)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ClothprobeError, match="it answers, but not as a Ray cluster does"):
        probe_address(f"127.0.0.1:{port}")
    server.close()


@needs_ray
def test_cli_with_a_dead_address_is_one_line(dataset: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    res = cli("featurize", "--data", str(dataset), "--out", str(tmp_path / "c.h5"), *TINY_ARGS, "--engine", "ray",
              "--address", "127.0.0.1:1")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "Cannot reach a Ray cluster at 127.0.0.1:1" in res.stderr
    assert time.perf_counter() - started < 60  # before: still running at 120 s
    res = cli("featurize", "--data", str(dataset), "--out", str(tmp_path / "c.h5"), *TINY_ARGS, "--engine", "ray",
              "--address", "not an address")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a cluster address" in res.stderr


@needs_ray
@pytest.mark.slow
def test_the_documented_ray_start_head_path_works_without_ray_auth_mode(dataset: Path, tmp_path: Path) -> None:
    """`ray start --head --port P`, then `cli featurize --engine ray --address HOST:P`, nothing else set: Ray
    2.60 starts the head with token authentication and keeps the token in ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="cphr-", dir="/tmp")
    start = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--num-cpus", "2", "--temp-dir", temp_dir, "--include-dashboard", "false",
             "--disable-usage-stats", "--ray-client-server-port", str(_free_port()),
             "--dashboard-agent-listen-port", str(_free_port())]
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=120, env=env, check=False)
        assert started.returncode == 0, started.stderr[-3000:]
        res = subprocess.run([sys.executable, "-m", "clothprobe.cli", "featurize", "--data", str(dataset),
                              "--out", str(tmp_path / "ray.h5"), *TINY_ARGS, "--engine", "ray",
                              "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=300, env=env,
                             check=False)
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "computed 27" in res.stdout and "InvalidAuthToken" not in res.stderr
