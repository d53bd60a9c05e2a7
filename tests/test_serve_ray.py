"""``cli serve --engine ray``: replicas of the serving application on a real Ray cluster, started here with
``ray start --head`` on loopback (token authentication on, as Ray 2.59+ starts it) and joined with
``--address``, as ``cli featurize --engine ray`` joins one (tests/test_ray.py)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving import cli_server, photo
from test_ray import _free_port, _stop_cluster
from tiny_onnx import COLOURS, make_model

serve = pytest.importorskip("ray.serve", reason='Ray Serve is not installed: pip install "clothprobe[ray]"')


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """A Ray head node on loopback with 3 logical CPUs; its address."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="cpserve-", dir="/tmp")  # short: Ray's socket paths live under it
    start = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--num-cpus", "3", "--temp-dir", temp_dir, "--include-dashboard", "false",
             "--disable-usage-stats", "--ray-client-server-port", str(_free_port()),
             "--dashboard-agent-listen-port", str(_free_port())]
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=180, check=False)
        assert started.returncode == 0, started.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_replicas_on_a_cluster_serve_the_same_app(head: str, tmp_path: Path) -> None:
    model = make_model(tmp_path / "colours.onnx")
    photos = {name: photo(tmp_path / f"{name}.jpg", rgb, seed=i).read_bytes() for i, (name, rgb) in
              enumerate(COLOURS.items())}
    port = _free_port()
    args = (str(model), "--engine", "ray", "--address", head, "--workers", "2", "--threads", "1",
            "--max-upload-mb", "1")
    with cli_server(*args, port=port, timeout=300) as (url, proc):
        assert url == f"http://127.0.0.1:{port}/"
        names = list(COLOURS) * 10

        def ask(name: str) -> tuple[str, int]:
            answer = httpx.post(url + "predict", content=photos[name], headers={"content-type": "image/jpeg"},
                                timeout=60).json()["predictions"][0]["answer"]
            return answer, httpx.get(url + "healthz", timeout=60).json()["process"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, names))
        assert [a for a, _ in answers] == names
        assert len({pid for _, pid in answers}) == 2, "both replicas answer"
        res = httpx.post(url + "predict", content=b"\xff" * (2 << 20), headers={"content-type": "image/jpeg"})
        assert res.status_code == 413 and "limit of 1 MB" in res.json()["error"]
        res = httpx.post(url + "predict", content=b"not a photo", headers={"content-type": "image/jpeg"})
        assert res.status_code == 400 and "not an image Pillow can read" in res.json()["error"]
        assert httpx.get(url + "metadata").json()["classes"] == list(COLOURS)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    assert httpx.get(url + "healthz").status_code == 404, "the application is deleted when the command stops"
