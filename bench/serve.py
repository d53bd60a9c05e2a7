"""Benchmark: `cli serve` of an exported run against `cli featurize`'s int8 rate and a seeds-style server, on the
same photos, side by side in one run.

  clothprobe      `cli serve FILE.onnx` (onnxruntime, micro-batched), in its own process
  seeds-style     the reference notebooks' way to serve: a Keras model (the backbone, average pooling, a softmax
                  layer; float32, TensorFlow) and `model.predict` on each request's one image (Keras load_img at
                  the input size, preprocess_input), behind the same HTTP stack (uvicorn), in its own process
  featurize       `cli featurize`'s img/s at int8 (OpenVINO, its default) on the same photos, with the flipped
                  view when the exported run uses TTA: the offline rate serving is held against

For each server: start to first answer (process start to the first 200 of one photo), one photo's latency warm
(one client, one photo per request: p50 / p95), throughput at 1 / 8 / 32 concurrent clients (every photo
once per level, one photo per request, keep-alive connections), and the server's resident memory (after its
first answer, and its peak). clothprobe's answers are scored against the photos' folders (the test split by
default: the run's own test accuracy, through HTTP). The clients run in this process, on the same CPUs as the
server: a share of the CPU goes to them. Names the CPU; writes bench/results/serve.md.

    python bench/serve.py --model models/clothing-dataset-small/xception/logreg-weights-tta
    python bench/serve.py --model xception-int8.onnx --no-seeds --limit 64     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx  # imported before any server starts: its import is not counted as the server's start
import numpy as np
from results_file import write_report

from featurize import cpu_line  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "clothing-dataset-small" / "test"
TARGETS = {"first": 2.0, "p50_ms": 60.0, "rss_mb": 600.0, "vs_featurize_8": 0.8}


@dataclass
class Photos:
    paths: list[Path]
    labels: list[str]
    bodies: list[bytes] = field(default_factory=list)

    @classmethod
    def under(cls, folder: Path, limit: int | None) -> Photos:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        paths = paths[:limit] if limit else paths
        return cls(paths, [p.parent.name for p in paths], [p.read_bytes() for p in paths])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler(threading.Thread):
    """The resident memory of process ``pid`` every 0.1 s: its peak."""

    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process, self.peak, self.stopped = psutil.Process(pid), 0, threading.Event()
        self.start()

    def now(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            try:
                self.peak = max(self.peak, self.now())
            except Exception:  # noqa: BLE001 - the process ended
                return


async def _post(client: httpx.AsyncClient, url: str, body: bytes) -> dict:
    res = await client.post(url + "predict", content=body, headers={"content-type": "image/jpeg"})
    res.raise_for_status()
    return res.json()


async def _clients(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[dict]]:
    """Every body once, ``clients`` at a time: seconds and the answers, in order."""
    answers: list[dict | None] = [None] * len(bodies)
    todo = iter(range(len(bodies)))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients), timeout=300) as client:
        async def worker() -> None:
            for i in todo:
                answers[i] = await _post(client, url, bodies[i])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, answers


async def _latencies(url: str, bodies: list[bytes], n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=300) as client:
        for body in bodies[:10]:  # warm: connections, the first batches
            await _post(client, url, body)
        seconds = []
        for i in range(n):
            start = time.perf_counter()
            await _post(client, url, bodies[i % len(bodies)])
            seconds.append(time.perf_counter() - start)
    return seconds


def first_answer(proc: subprocess.Popen, url: str, body: bytes, start: float) -> float:
    while True:
        if proc.poll() is not None:
            sys.exit(f"the server stopped before answering:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.post(url + "predict", content=body, headers={"content-type": "image/jpeg"}).status_code == 200:
                return time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.01)


def measure(command: list[str], port: int, photos: Photos, levels: list[int], latency_n: int) -> dict:
    """Start the server, time its first answer, latency and throughput; stop it."""
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = first_answer(proc, url, photos.bodies[0], start)
        rss = RssSampler(proc.pid)
        rss_started = rss.now()
        lat = np.array(asyncio.run(_latencies(url, photos.bodies, latency_n))) * 1000
        rates, answers = {}, None
        for c in levels:
            seconds, got = asyncio.run(_clients(url, photos.bodies, c))
            rates[c] = len(photos.bodies) / seconds
            answers = answers or got
        rss.stopped.set()
        peak = max(rss.peak, rss.now())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    answered = [a["predictions"][0]["answer"] if "predictions" in a else a["answer"] for a in answers]
    accuracy = float(np.mean([a == y for a, y in zip(answered, photos.labels, strict=True)]))
    return {"first": first, "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
            "rates": rates, "rss_started": rss_started / 2**20, "rss_peak": peak / 2**20, "accuracy": accuracy}


def featurize_rate(photos: Path, backbone: str, weights: str, tta: bool, home: str | None) -> float:
    """`cli featurize`'s int8 img/s on ``photos`` (a second run into a fresh cache: the first builds the store)."""
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            cmd = [sys.executable, __file__, "--_featurize", str(photos), backbone, weights, str(tta),
                   str(Path(tmp) / f"{i}.h5")]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  env={**os.environ, **({"CLOTHPROBE_HOME": home} if home else {})})
            if proc.returncode != 0:
                sys.exit(f"featurize failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])["rate"]


def run_featurize_child(photos: str, backbone: str, weights: str, tta: str, out: str) -> None:
    from clothprobe.featurize import featurize

    r = featurize(photos, backbone=backbone, weights=weights, precision="int8", runtime="openvino",
                  tta=tta == "True", out=out, features_dir=str(Path(out).parent / "catalog"))
    print(json.dumps({"rate": r.images_per_second, "computed": r.computed}))


def run_seeds_server(port: int, backbone: str, weights: str, classes: list[str]) -> None:
    """The seeds-style server: Keras float32, ``model.predict`` on each request's one image."""
    import importlib
    import io

    import keras
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from clothprobe.featurize.model.backbones import get_backbone

    bb = get_backbone(backbone)
    size = bb.input_size
    base = getattr(keras.applications, bb.constructor)(weights=weights, include_top=False, input_shape=(size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(len(classes), activation="softmax")(pooled))
    preprocess = importlib.import_module(f"keras.applications.{bb.keras_dir}").preprocess_input

    def classify(body: bytes) -> dict:
        image = keras.utils.load_img(io.BytesIO(body), target_size=(size, size))
        p = model.predict(preprocess(np.array([keras.utils.img_to_array(image)])), verbose=0)[0]
        return {"answer": classes[int(np.argmax(p))], "probabilities": dict(zip(classes, map(float, p)))}

    async def predict(request):  # noqa: ANN001, ANN202
        return JSONResponse(await run_in_threadpool(classify, await request.body()))

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def table(results: dict[str, dict], levels: list[int]) -> list[str]:
    head = ["server", "first answer (s)", "1 photo p50 / p95 (ms)", *(f"img/s, {c} client(s)" for c in levels),
            "RSS after start / peak (MB)", "accuracy on the photos"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        accuracy = f"{100 * r['accuracy']:.1f}%" if name == "clothprobe" else "- (random head)"
        rows.append(f"| {name} | {r['first']:.2f} | {r['p50']:.0f} / {r['p95']:.0f} | "
                    + " | ".join(f"{r['rates'][c]:.1f}" for c in levels)
                    + f" | {r['rss_started']:.0f} / {r['rss_peak']:.0f} | {accuracy} |")
    return rows


def verdicts(ours: dict, featurize: float | None, seeds: dict | None, levels: list[int]) -> list[str]:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [(f"- start to first answer {ours['first']:.2f} s (target < {TARGETS['first']:g} s): "
              f"{mark(ours['first'] < TARGETS['first'])}"),
             (f"- one photo p50 {ours['p50']:.0f} ms (target < {TARGETS['p50_ms']:g} ms): "
              f"{mark(ours['p50'] < TARGETS['p50_ms'])}"),
             (f"- peak RSS {ours['rss_peak']:.0f} MB (target < {TARGETS['rss_mb']:g} MB): "
              f"{mark(ours['rss_peak'] < TARGETS['rss_mb'])}")]
    if featurize:
        ratios = ", ".join(f"{ours['rates'][c] / featurize:.2f}x at {c}" for c in levels)
        at8 = ours["rates"].get(8, 0) / featurize
        lines.append(f"- against cli featurize int8 ({featurize:.1f} img/s): {ratios} (target >= "
                     f"{TARGETS['vs_featurize_8']:g}x at 8 clients: {mark(at8 >= TARGETS['vs_featurize_8'])})")
    if seeds:
        ratios = ", ".join(f"{ours['rates'][c] / seeds['rates'][c]:.2f}x at {c}" for c in levels)
        lines.append(f"- against the seeds-style server: {ratios}; first answer {seeds['first'] / ours['first']:.1f}x "
                     f"sooner, p50 {seeds['p50'] / ours['p50']:.1f}x lower, peak RSS "
                     f"{seeds['rss_peak'] / ours['rss_peak']:.1f}x smaller")
    return lines


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="An exported FILE.onnx, or a run directory (exported as cli serve "
                                              "exports it, with --precision).")
    p.add_argument("--precision", default="int8", help="A run directory's export: int8 or float32.")
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="Photos: DIR/<class>/<image>.")
    p.add_argument("--limit", type=int, help="The first N photos only.")
    p.add_argument("--backbone", default="xception", help="The seeds-style server's and featurize's backbone.")
    p.add_argument("--weights", type=Path, default=Path(os.environ.get("CLOTHPROBE_WEIGHTS_DIR",
                                                                        "~/.cache/offline-imagenet")).expanduser())
    p.add_argument("--levels", default="1,8,32", help="Concurrent clients, comma-separated.")
    p.add_argument("--latency-requests", type=int, default=100)
    p.add_argument("--threads", type=int, help="cli serve --threads.")
    p.add_argument("--no-seeds", action="store_true")
    p.add_argument("--no-featurize", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.md")
    p.add_argument("--_featurize", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--_seeds", nargs=4, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    a = parse()
    if a._featurize:
        return run_featurize_child(*a._featurize)
    if a._seeds:
        port, backbone, weights, classes = a._seeds
        return run_seeds_server(int(port), backbone, weights, json.loads(classes))
    from clothprobe.serve.exports import model_file
    from clothprobe.serve.model import OnnxModel

    model = model_file(a.model, precision=a.precision if a.model.is_dir() else None, on_export=print)
    info = OnnxModel(model).info
    photos, levels = Photos.under(a.photos, a.limit), [int(c) for c in a.levels.split(",")]
    weights = str(a.weights / f"{a.backbone}_notop.weights.h5")
    port = free_port()
    serve = [sys.executable, "-m", "clothprobe.cli", "serve", str(model), "--port", str(port),
             *(["--threads", str(a.threads)] if a.threads else [])]
    results = {"clothprobe": measure(serve, port, photos, levels, a.latency_requests)}
    if not a.no_seeds:
        port = free_port()
        seeds = [sys.executable, __file__, "--_seeds", str(port), a.backbone, weights, json.dumps(list(info.classes))]
        results["seeds-style (Keras float32)"] = measure(seeds, port, photos, levels, a.latency_requests)
    featurize = None if a.no_featurize else featurize_rate(a.photos, a.backbone, weights, info.tta, None)
    text = "\n".join([
        f"# cli serve: {info.run} ({info.precision}, tta {info.tta}), {len(photos.paths)} photos of {a.photos}",
        "", f"CPU: {cpu_line()}; server threads: {a.threads or 'every CPU'}; the clients run on the same CPUs.", "",
        *table(results, levels), "",
        *([f"cli featurize int8 (OpenVINO) on the same photos, tta {info.tta}: {featurize:.1f} img/s", ""]
          if featurize else []),
        *verdicts(results["clothprobe"], featurize, results.get("seeds-style (Keras float32)"), levels), ""])
    write_report(a.out, text)


if __name__ == "__main__":
    main()
