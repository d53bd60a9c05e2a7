"""``cli serve`` over real HTTP: a real uvicorn on a free local port, real HTTP clients (httpx, raw sockets),
a real onnxruntime session on an exported-model file made here to the export contract (tests/tiny_onnx.py:
an image's answer is its dominant colour; grey is "none of these")."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import cli
from PIL import Image
from serving import cli_server, photo, thread_server
from tiny_onnx import COLOURS, GREY, info, make_model

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import decode

HEAVY = ("tensorflow", "keras", "openvino", "nncf", "torch")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "colours.onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    made = {name: photo(folder / f"{name}.jpg", rgb, seed=i) for i, (name, rgb) in enumerate(COLOURS.items())}
    made["grey"] = photo(folder / "grey.png", GREY, fmt="PNG")
    return made


@pytest.fixture(scope="module")
def server(model_path: Path) -> str:
    """``cli serve`` with a 1 MB upload limit and a 100,000-pixel limit, shared by the module's tests."""
    with cli_server(str(model_path), "--max-upload-mb", "1", "--max-pixels", "100000") as (url, _):
        yield url


def post(url: str, content: bytes, kind: str = "image/jpeg", **kw: object) -> httpx.Response:
    return httpx.post(url + "predict", content=content, headers={"content-type": kind}, timeout=30, **kw)


def idle(url: str) -> dict:
    """/healthz once no request is left inside the server (a client gone leaves none behind)."""
    deadline = time.monotonic() + 10
    while True:
        health = httpx.get(url + "healthz").json()
        if health["requests"] == 0 and health["arriving"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


# --- answers ------------------------------------------------------------------------------------------------

def test_one_photo_as_the_body(server: str, photos: dict[str, Path]) -> None:
    res = post(server, photos["green"].read_bytes())
    assert res.status_code == 200, res.text
    (p,) = res.json()["predictions"]
    assert p["file"] is None and p["answer"] == "green" and p["unknown"] is False
    assert p["top"][0]["class"] == "green" and len(p["top"]) == 3
    assert set(p["probabilities"]) == set(COLOURS) and abs(sum(p["probabilities"].values()) - 1) < 1e-5
    assert p["openset_score"] == pytest.approx(max(p["probabilities"].values()), abs=1e-6)


def test_the_answer_is_the_files_own_on_featurizes_pixels(server: str, model_path: Path, tmp_path: Path) -> None:
    """The server decodes an upload exactly as featurize decodes the file: its probabilities are the model's on
    ``featurize.images.decode``'s pixels (an odd-sized PNG with alpha, a JPEG larger than the input)."""
    from clothprobe.serve.model import OnnxModel

    rng = np.random.default_rng(5)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(tmp_path / "big.jpg")
    model = OnnxModel(model_path)
    for path in (tmp_path / "alpha.png", tmp_path / "big.jpg"):
        (p,) = post(server, path.read_bytes(), "application/octet-stream").json()["predictions"]
        (offline,) = model.run(decode(path, 16)[None])
        assert np.allclose([p["probabilities"][c] for c in COLOURS], offline.probabilities, atol=1e-6), path.name


def test_several_files_in_one_form_each_answered_in_order(server: str, photos: dict[str, Path]) -> None:
    files = [("file", (f"{name}.img", photos[name].read_bytes())) for name in ("blue", "red", "grey")]
    files.insert(1, ("file", ("notes.txt", b"not a photo")))
    res = httpx.post(server + "predict?k=2", files=files, timeout=30)
    assert res.status_code == 200, res.text
    rows = res.json()["predictions"]
    assert [r["file"] for r in rows] == ["blue.img", "notes.txt", "red.img", "grey.img"]
    assert rows[0]["answer"] == "blue" and rows[2]["answer"] == "red" and len(rows[0]["top"]) == 2
    assert rows[1] == {"file": "notes.txt", "error": "not an image Pillow can read (unknown or corrupt format)"}
    assert rows[3]["unknown"] is True and rows[3]["answer"] == "unknown"
    assert rows[3]["openset_score"] < info().openset["threshold"]


def test_k_is_bounded_by_the_classes(server: str, photos: dict[str, Path]) -> None:
    body = photos["red"].read_bytes()
    assert len(post(server + "", body, params={"k": 1}).json()["predictions"][0]["top"]) == 1
    for k in ("0", "4", "-1", "two", "1e9"):
        res = post(server, body, params={"k": k})
        assert res.status_code == 400 and res.json()["error"] == (
            f"k must be a whole number from 1 to 3 (the model's classes), got '{k}'"), k


def test_metadata_and_health(server: str) -> None:
    meta = httpx.get(server + "metadata").json()
    expected = info()
    assert meta["classes"] == list(expected.classes) and meta["test_accuracy"] == expected.test_accuracy
    assert meta["recipe_fingerprint"] == expected.recipe_fingerprint and meta["precision"] == "float32"
    assert meta["openset"] == expected.openset
    assert meta["limits"]["max_upload_mb"] == 1 and meta["limits"]["max_pixels"] == 100_000
    health = httpx.get(server + "healthz").json()
    assert health["status"] == "ok" and health["queued"] == 0


def test_the_page_is_self_contained(server: str) -> None:
    res = httpx.get(server)
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/html")
    assert 'type="file"' in res.text and "none of these" in res.text
    assert "http://" not in res.text and "https://" not in res.text  # nothing fetched from elsewhere


# --- bad input: a JSON error with its status, and the server goes on -----------------------------------------

def truncated_jpeg(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    return data[: len(data) // 2]


def test_bad_images_are_refused_with_featurizes_reasons(server: str, tmp_path: Path) -> None:
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000), 1).save(bomb, format="PNG")  # 100 megapixels in ~30 kB
    cases = [
        (b"this is a text file, not a photo", "image/jpeg", 400,
         "the upload cannot be used as an image: not an image Pillow can read (unknown or corrupt format)"),
        (b"", "image/jpeg", 400, "the upload cannot be used as an image: empty file (0 bytes)"),
        (truncated_jpeg(tmp_path), "image/jpeg", 400, "the upload cannot be used as an image: cannot decode"),
        (bomb.getvalue(), "image/png", 400, ("the upload cannot be used as an image: 10000x10000 pixels is above the "
                                             "limit of 100,000 (decompression-bomb guard); raise it with --max-pixels")),
        (b"{}", "application/json", 415, "a body of type 'application/json' is not an image"),
    ]
    for body, kind, status, reason in cases:
        res = post(server, body, kind)
        assert res.status_code == status and res.json()["error"].startswith(reason), (kind, res.text)
    files = [("a", ("a.jpg", b"nope")), ("b", ("b.jpg", b""))]
    res = httpx.post(server + "predict", files=files)
    assert res.status_code == 400 and res.json()["error"] == (
        "none of the 2 files can be used as an image (a.jpg: not an image Pillow can read (unknown or corrupt "
        "format); b.jpg: empty file (0 bytes))")
    form = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--b--\r\n'
    res = post(server, form, "multipart/form-data; boundary=b")
    assert res.status_code == 400 and res.json()["error"] == "the form holds no file; send the images as its file fields"
    res = httpx.post(server + "predict", files=[("file", ("big.jpg", b"\xff" * (2 << 20)))])
    assert res.status_code == 413, res.text
    assert post(server, Path(__file__).with_name("conftest.py").read_bytes()[:10]).status_code == 400
    assert httpx.get(server + "healthz").status_code == 200


def test_wrong_method_and_path(server: str) -> None:
    res = httpx.get(server + "predict")
    assert res.status_code == 405 and res.json()["error"] == "GET is not allowed on /predict; use POST"
    assert res.headers["allow"] == "POST"
    assert httpx.delete(server + "metadata").status_code == 405
    res = httpx.get(server + "nothing-here")
    assert res.status_code == 404 and res.json() == {"error": "Not Found: /nothing-here"}


@pytest.mark.parametrize("kind, first", [
    ("image/jpeg", b""),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="f"; filename="x.jpg"\r\n\r\n'),
])
def test_an_upload_over_the_limit_is_refused_as_it_streams(server: str, kind: str, first: bytes) -> None:
    """Declared too large: refused before the body is read. Streamed without a length (chunked): refused once
    it passes 1 MB, long before the client's 64 MB have been sent."""
    res = post(server, first + b"\xff" * (2 << 20), kind)
    assert res.status_code == 413 and "larger than the server's limit of 1 MB" in res.json()["error"]
    sent = []

    def forever() -> bytes:
        yield first
        for _ in range(1024):
            sent.append(1)
            yield b"\0" * (64 << 10)

    res = httpx.post(server + "predict", content=forever(), headers={"content-type": kind}, timeout=30)
    assert res.status_code == 413, res.text
    assert len(sent) * 64 < 8 * 1024, f"{len(sent) * 64} kB sent before the refusal"
    assert idle(server)["requests"] == 0


def raw_request(url: str, head: bytes) -> socket.socket:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    conn = socket.create_connection((host, port), timeout=10)
    conn.sendall(head)
    return conn


def test_a_client_gone_mid_upload_leaves_nothing_behind(server: str, photos: dict[str, Path]) -> None:
    for _ in range(3):
        conn = raw_request(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                   b"Content-Length: 500000\r\n\r\n" + b"\xff\xd8" + b"\0" * 5000)
        conn.close()
    assert idle(server)["requests"] == 0
    assert post(server, photos["red"].read_bytes()).json()["predictions"][0]["answer"] == "red"


def test_64_clients_at_once_are_batched(server: str, photos: dict[str, Path]) -> None:
    """64 clients post at the same moment: each gets its own answer, and the model ran fewer batches than
    images (requests were batched together)."""
    names = list(COLOURS) * 22
    before = httpx.get(server + "healthz").json()

    async def everyone() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post(server + "predict", content=photos[n].read_bytes(),
                                                      headers={"content-type": "image/jpeg"})
                                          for n in names[:64]))

    responses = asyncio.run(everyone())
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["predictions"][0]["answer"] for r in responses] == names[:64]
    after = idle(server)
    assert after["images"] - before["images"] == 64 and after["batches"] - before["batches"] < 64


def test_full_server_answers_503_and_recovers(model_path: Path, photos: dict[str, Path]) -> None:
    """Two uploads that stall hold both places of a server with --max-requests 2: the next request gets 503 with
    Retry-After at once; a stalled upload times out with 408; then the server serves again."""
    from clothprobe.serve.app import create_app
    from clothprobe.serve.model import OnnxModel
    from clothprobe.serve.settings import ServeSettings

    settings = ServeSettings(max_requests=2, upload_timeout_s=2)
    with thread_server(create_app(OnnxModel(model_path), settings)) as url:
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 9000\r\n\r\n"
        stalled = [raw_request(url, head + b"\0" * 100) for _ in range(2)]
        deadline = time.monotonic() + 5
        while httpx.get(url + "healthz").json()["requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        res = post(url, photos["red"].read_bytes())
        assert res.status_code == 503 and res.headers["retry-after"] == "1"
        assert res.json()["error"] == "the server is handling 2 requests (at most 2); try again in a moment"
        answer = stalled[0].recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and '"the upload took longer than 2 s"' in answer
        for conn in stalled:
            conn.close()
        assert idle(url)["requests"] == 0
        assert post(url, photos["red"].read_bytes()).json()["predictions"][0]["answer"] == "red"


def test_a_file_without_a_reject_option(tmp_path: Path, photos: dict[str, Path]) -> None:
    from clothprobe.serve.app import create_app
    from clothprobe.serve.model import OnnxModel

    model = OnnxModel(make_model(tmp_path / "closed.onnx", openset=None))
    with thread_server(create_app(model)) as url:
        (p,) = post(url, photos["grey"].read_bytes(), "image/png").json()["predictions"]
        assert p["unknown"] is False and p["openset_score"] is None and p["answer"] in COLOURS
        assert httpx.get(url + "metadata").json()["openset"] is None


def test_the_batcher_bounds_its_queue_and_skips_the_images_of_clients_gone() -> None:
    """A lone request runs at once (no window while nothing else arrives); while the model is busy, requests
    queue up to ``max_queue`` images and the next is refused; a cancelled request's images are not run."""
    from clothprobe.serve.batcher import MicroBatcher, QueueFull

    free, running = threading.Event(), threading.Event()
    batches: list[list[float]] = []

    def run(batch: np.ndarray) -> list[float]:
        running.set()
        free.wait(30)
        batches.append([float(im[0, 0, 0]) for im in batch])
        return [float(im[0, 0, 0]) for im in batch]

    def images(*values: float) -> list[np.ndarray]:
        return [np.full((2, 2, 3), v) for v in values]

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=4, window_s=30.0, max_queue=3)
        await batcher.start()
        free.set()
        assert await asyncio.wait_for(batcher.submit(images(1)), 10) == [1.0]  # not 30 s: no window alone
        free.clear()
        running.clear()
        busy = asyncio.create_task(batcher.submit(images(2)))
        while not running.is_set():  # until the model has taken it, and waits
            await asyncio.sleep(0.01)
        gone = asyncio.create_task(batcher.submit(images(3, 4)))
        waiting = asyncio.create_task(batcher.submit(images(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="3 images are waiting for the model"):
            await batcher.submit(images(6))
        gone.cancel()
        free.set()
        assert await busy == [2.0] and await waiting == [5.0]
        await batcher.stop()

    asyncio.run(scenario())
    assert batches == [[1.0], [2.0], [5.0]]


# --- the server process, and the command ---------------------------------------------------------------------

SERVER_MODULES = """
import json, sys, threading, time, httpx
from clothprobe.cli import main
model, port, image = sys.argv[1:]
sys.argv = ["cli", "serve", model, "--port", port]
threading.Thread(target=main, daemon=True).start()
for _ in range(600):
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=open(image, "rb").read(),
                            headers={"content-type": "image/jpeg"}).json()
        break
    except httpx.TransportError:
        time.sleep(0.1)
print(json.dumps({"answer": answer["predictions"][0]["answer"], "modules": sorted(sys.modules)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_process_imports_no_tensorflow_nor_openvino(model_path: Path, photos: dict[str, Path]) -> None:
    """The whole serving process (the cli, the application, onnxruntime, the decoder), after answering."""
    port = str(free_port())
    res = subprocess.run([sys.executable, "-c", SERVER_MODULES, str(model_path), port, str(photos["blue"])],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    assert seen["answer"] == "blue"
    assert "onnxruntime" in seen["modules"] and "clothprobe.featurize.images" in seen["modules"]
    assert [m for m in seen["modules"] if m.split(".")[0] in HEAVY] == []


@pytest.mark.parametrize("make, said", [
    (lambda p: p.write_text("hello"), "is neither a run directory"),
    (lambda p: p.with_suffix(".onnx").write_bytes(b"\0garbage"), "is not an ONNX file onnxruntime can run"),
    (lambda p: make_model(p.with_suffix(".onnx"), metadata={}), "is not a clothprobe export of format clothprobe-onnx"),
    (lambda p: make_model(p.with_suffix(".onnx"), metadata={**info().to_metadata(), "clothprobe.classes": "[1]"}),
     "its clothprobe metadata is damaged"),
    (lambda p: make_model(p.with_suffix(".onnx"), batch=1), "with any batch size, as cli export writes it"),
])
def test_a_file_that_cannot_be_served_is_refused_in_one_line(tmp_path: Path, make, said: str) -> None:
    target = tmp_path / "model.txt"
    make(target)
    given = target.with_suffix(".onnx") if target.with_suffix(".onnx").exists() else target
    res = cli("serve", str(given), "--port", "0", timeout=120)
    assert res.returncode == 2 and said in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_options_are_checked_before_any_work(model_path: Path) -> None:
    for args, said in ((["--max-batch", "0"], "--max-batch must be a whole number >= 1"),
                       (["--port", "70000"], "--port must be a whole number >= 0 and <= 65535"),
                       (["--batch-window-ms", "-1"], "--batch-window-ms must be a finite number >= 0"),
                       (["--precision", "int8"], "--precision is for a run directory"),
                       (["--workers", "2"], "--address and --workers are for --engine ray")):
        res = cli("serve", str(model_path), *args, timeout=120)
        assert res.returncode == 2 and said in res.stderr, (args, res.stderr)


def test_a_port_in_use_is_refused_in_one_line(model_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("serve", str(model_path), "--port", str(port), timeout=120)
    assert res.returncode == 2 and f"Cannot listen on http://127.0.0.1:{port}/" in res.stderr, res.stderr


def test_library_refusals_name_the_file(tmp_path: Path) -> None:
    from clothprobe.serve.exports import model_file
    from clothprobe.serve.model import OnnxModel

    with pytest.raises(ClothprobeError, match="is not a file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ClothprobeError, match="--precision must be one of float32, int8, got 'int4'"):
        model_file(tmp_path, precision="int4")
    with pytest.raises(ClothprobeError, match="is neither a run directory"):
        model_file(tmp_path)


def test_cache_prune_all_removes_the_runs_exported_for_serving_and_nothing_else(tmp_path: Path) -> None:
    """``cli cache prune --all`` removes ``exports/<digest>.onnx`` and a killed export's leftover; a file of the
    user's there stays, and so does an export a server is making now (its lock held)."""
    from filelock import FileLock

    exports = tmp_path / "home" / "exports"
    exports.mkdir(parents=True)
    done, leftover, busy = "0123456789abcdef.onnx", ".fedcba9876543210.tmp-4242.onnx", "00112233aabbccdd.onnx"
    for name in (done, leftover, busy, "mine.onnx", "0123456789abcdef.onnx.bak"):
        (exports / name).write_bytes(b"onnx")
    with FileLock(str(exports / f"{busy}.lock")):
        res = cli("cache", "prune", "--all", home=tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in exports.iterdir() if p.suffix != ".lock") == sorted(
        [busy, "mine.onnx", "0123456789abcdef.onnx.bak"])
    assert "2 served export(s)" in res.stdout and f"removed {exports / done}" in res.stdout
