"""Benchmark: featurize with the local engine against the Ray engine with 1 and 2 workers, on the same photos,
then an extrapolation to 1 million photos on 1, 10 and 50 nodes.

Each configuration runs in its own process, on a fresh cache, with the compiled model already in a store of
this run (a first, unmeasured local run makes it), twice: on all the photos and on the first ``--small`` of
them. Per run: wall seconds of ``featurize()``; for Ray, the start of the local Ray runtime; and the driver's
own time (scan, hashing, plan, merge: the wall time outside the engine). From the two runs, the rest (the
engine's time) gives a marginal rate, (photos - small) / (time - time small), and a fixed start-up (Ray,
actors, model load), time small - small / rate: Ray's overhead over local is the difference of start-ups and
of rates. (Batch arrival times at the driver would not do: Ray Data delivers finished blocks in bursts.)

The extrapolation takes the marginal rate of Ray with 2 workers here per core, assumes it scales linearly
with cores, adds the fixed start-up once and the driver's time per photo linearly, and prices node-hours. It
is arithmetic on the measured figures, not a measurement. Names the CPU; writes bench/results/distributed.md.

    python bench/distributed.py --weights ~/.cache/offline-imagenet                 # the validation split
    python bench/distributed.py --weights ~/.cache/offline-imagenet --limit 200     # a quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from results_file import write_report  # bench/ is this script's folder, first on sys.path

from clothprobe.featurize.engines.base import Engine
from clothprobe.featurize.engines.local import LocalEngine
from clothprobe.featurize.engines.plan import EmbedTask, FileHash, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.model.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
PHOTOS = 1_000_000
NODES = (1, 10, 50)
# The node assumed for the extrapolation: 16 vCPUs that are 16 physical cores (no SMT), AVX-512 with bf16.
NODE = "AWS c7a.4xlarge (16 vCPU = 16 cores, AMD EPYC 4th gen, on demand, us-east-1)"
NODE_VCPUS = 16
NODE_PRICE = 0.82112  # USD per hour, on-demand Linux, as listed for us-east-1; check the current price

_spec = importlib.util.spec_from_file_location("bench_featurize", Path(__file__).with_name("featurize.py"))
bench_featurize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_featurize)  # cpu_line, subset, table: the featurize benchmark's helpers


class OpenTimed(Engine):
    """``inner``, timing its ``open`` (loading the model: the engine's part of the wall time)."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.open_seconds = inner, 0.0

    def hash_files(self, paths: Sequence[Path]) -> Iterator[FileHash]:
        return self.inner.hash_files(paths)

    def open(self, task: EmbedTask) -> Recipe:
        started = time.perf_counter()
        recipe = self.inner.open(task)
        self.open_seconds = time.perf_counter() - started
        return recipe

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        return self.inner.embed(shards)


def measure(data: str, out: str, backbone: str, weights: str, batch: int, workers: int) -> dict:
    """One run (``workers`` 0: the local engine), in this process."""
    from clothprobe.featurize import featurize

    started = time.perf_counter()
    inner, ray_start, threads = LocalEngine(), 0.0, os.cpu_count()
    if workers:
        from clothprobe.featurize.engines.ray import RayEngine

        inner = RayEngine(workers=workers, block_batches=1, init_options={"logging_level": "WARNING"})
        threads = inner.connect().threads
        ray_start = time.perf_counter() - started
    engine = OpenTimed(inner)
    r = featurize(data, backbone=backbone, weights=weights, batch_size=batch, out=out,
                  features_dir=str(Path(out).parent / "catalog"), engine=engine)
    wall = time.perf_counter() - started
    if workers:
        inner.close()
    driver = r.seconds - r.model_seconds - engine.open_seconds  # scan, hashing, plan, merge
    return {"images": r.computed, "wall": wall, "ray_start": ray_start, "driver": driver,
            "embed_rate": r.images_per_second, "precision": r.precision, "runtime": r.runtime, "threads": threads}


def marginal(full: dict, small: dict) -> dict:
    """Rate and fixed start-up of the engine's part, from a run on all the photos and one on a few."""
    work, work_small = full["wall"] - full["driver"], small["wall"] - small["driver"]
    rate = (full["images"] - small["images"]) / (work - work_small)
    return {**full, "rate": rate, "fixed": work_small - small["images"] / rate}


def child(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extrapolate(ray2: dict, cores: int) -> list[tuple]:
    """1 million photos on 1, 10 and 50 nodes, from Ray's 2-worker figures on this machine."""
    node_rate = ray2["rate"] / cores * NODE_VCPUS
    driver = ray2["driver"] / ray2["images"] * PHOTOS  # scan, hashing, plan, merge: taken as linear
    rows = []
    for nodes in NODES:
        hours = (ray2["fixed"] + driver + PHOTOS / (nodes * node_rate)) / 3600
        rows.append((nodes, f"{nodes * node_rate:,.0f}", f"{hours:.2f}", f"{nodes * hours:.1f}",
                     f"{nodes * hours * NODE_PRICE:,.2f}"))
    return rows


def report(a: argparse.Namespace, n: int, results: dict[str, dict]) -> str:
    local = results["local"]
    rows = [(name, r["images"], r["threads"], f"{r['wall']:.1f}", f"{r['ray_start']:.1f}", f"{r['fixed']:.1f}",
             f"{r['rate']:.1f}", f"{r['embed_rate']:.1f}", f"{r['driver']:.1f}", f"{r['fixed'] - local['fixed']:+.1f}",
             f"{r['rate'] / local['rate']:.2f}x") for name, r in results.items()]
    cores = os.cpu_count() or 1
    ray2 = results["ray, 2 workers"]
    lines = [f"CPU: {bench_featurize.cpu_line()}. {n} photos ({a.split}; start-up and rate from a second run on the "
             f"first {a.small}), {a.backbone} ({local['runtime']}, {local['precision']}), batch {a.batch_size}; Ray "
             f"blocks of one batch. The machine's cores are shared by the decoding and every worker.", ""]
    lines += bench_featurize.table(("engine", "photos", "threads/worker", "wall s", "of which Ray start s",
                                    "start-up s", "marginal img/s", "img/s (featurize's figure)", "driver s",
                                    "start-up vs local s", "rate vs local"), rows)
    lines += ["", f"**Extrapolation, not a measurement**: {PHOTOS:,} photos on {NODE} nodes at ${NODE_PRICE}/h each: "
                  f"Ray's 2-worker marginal rate here per core ({ray2['rate'] / cores:.2f} img/s) times {NODE_VCPUS} "
                  f"cores per node (linear scaling assumed), plus its start-up ({ray2['fixed']:.0f} s, once) and the "
                  f"driver's time per photo ({1000 * ray2['driver'] / ray2['images']:.1f} ms: scan, hashing, plan, "
                  f"merge, taken as linear: pessimistic, as from 20,000 files on hashing runs on the cluster). A "
                  f"store of compiled models shared by the nodes (or warm on each) is assumed: else each node "
                  f"exports the model once first. Billed per second; the shared file system must deliver the "
                  f"photos at the cluster's rate.", ""]
    lines += bench_featurize.table(("nodes", "img/s", "hours", "node-hours", "USD"), extrapolate(ray2, cores))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=Path(os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "~/.cache/offline-imagenet")).expanduser())
    p.add_argument("--backbone", default="xception")
    p.add_argument("--split", default="validation", help="split whose photos are featurized")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos")
    p.add_argument("--small", type=int, default=64, help="photos of the second, short run of each engine")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "distributed.md")
    p.add_argument("--_measure", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    weights = str(a.weights / f"{a.backbone}_notop.weights.h5")
    if a._measure:
        data, out, workers = a._measure
        print(json.dumps(measure(data, out, a.backbone, weights, a.batch_size, int(workers))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"CLOTHPROBE_HOME": str(tmp / "home")}  # a store of this run, filled by the warm-up
        n = bench_featurize.subset(a.data, a.split, a.limit, tmp / "data")
        bench_featurize.subset(a.data, a.split, a.small, tmp / "small")
        print(f"{n} photos from {a.data / a.split}; {bench_featurize.cpu_line()}", flush=True)
        common = ["--backbone", a.backbone, "--weights", str(a.weights), "--batch-size", str(a.batch_size)]
        child(["--_measure", str(tmp / "small"), str(tmp / "warm.h5"), "0", *common], env)
        results = {}
        for name, workers in (("local", 0), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
            runs = [child(["--_measure", str(tmp / part), str(tmp / f"{part}-{workers}.h5"), str(workers), *common], env)
                    for part in ("data", "small")]
            results[name] = marginal(*runs)
            print(f"{name}: {results[name]}", flush=True)
    text = report(a, n, results)
    write_report(a.report, text)


if __name__ == "__main__":
    main()
