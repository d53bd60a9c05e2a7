"""The Ray engine on a real Ray cluster: a local one shared by this module (``ray.init(num_cpus=2)``), and
one started with ``ray start --head`` on loopback and joined with ``--address``; tiny images, random-weights
VGG16 (conftest.TINY). Skipped, with the reason, where Ray is not installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli, make_image
from conftest import featurize_tiny as run

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize import featurize, load_features

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed: pip install "clothprobe[ray]"')
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real local Ray runtime for this module's tests (2 CPUs); its address, for other processes."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def engine(**kw):  # noqa: ANN201 - a RayEngine
    from clothprobe.featurize.engines.ray import RayEngine

    return RayEngine(**kw)


def assert_same_cache(a: Path, b: Path) -> None:
    """Same splits, paths, labels, hashes and skipped files; embeddings equal (or cosine >= 0.9999)."""
    x, y = load_features(a), load_features(b)
    assert x.recipe == y.recipe and list(x.splits) == list(y.splits)
    for name in x.splits:
        s, t = x.split(name), y.split(name)
        assert list(s.paths) == list(t.paths) and list(s.sha256) == list(t.sha256), name
        assert np.array_equal(s.labels, t.labels) and s.skipped == t.skipped, name
        u, v = np.asarray(s.embeddings, np.float64), np.asarray(t.embeddings, np.float64)
        cos = (u * v).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1), 1e-30)
        assert u.shape == v.shape and (np.array_equal(u, v) or cos.min() >= 0.9999), name


def with_bad_files(dataset: Path) -> Path:
    (dataset / "train" / "hat" / "empty.jpg").write_bytes(b"")
    (dataset / "test" / "shirt" / "not-an-image.jpg").write_bytes(b"hello")
    (dataset / "validation" / "hat" / "copy.png").write_bytes((dataset / "train" / "hat" / "0.png").read_bytes())
    return dataset


# --- without Ray ------------------------------------------------------------------------------------------

def test_without_ray_the_engine_says_how_to_install(tmp_path: Path) -> None:
    """Runs whether or not Ray is installed: a Python where ``import ray`` fails."""
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['cli', 'featurize', '--data', sys.argv[1], "
            "'--engine', 'ray']; from clothprobe.cli import main; main()")
    (tmp_path / "d" / "hat").mkdir(parents=True)
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        'error: The Ray engine needs Ray Data, which is not installed: pip install "clothprobe[ray]"')


def test_ray_options_need_the_ray_engine() -> None:
    from typer.testing import CliRunner

    from clothprobe.cli import app

    res = CliRunner().invoke(app, ["featurize", "--data", ".", "--workers", "2"])
    assert isinstance(res.exception, ClothprobeError) and "--engine ray" in str(res.exception)


@needs_ray
def test_pool_sizing_leaves_room_to_decode() -> None:
    from clothprobe.featurize.engines.ray import Sizing, size_pool

    assert size_pool([3.0], None, None) == Sizing(workers=1, threads=2)  # the local runtime for 1 worker, 2 cores
    assert size_pool([16.0] * 10, None, None) == Sizing(workers=10, threads=15)
    assert size_pool([16.0] * 10, 40, None) == Sizing(workers=40, threads=3)
    with pytest.raises(ClothprobeError, match="2 worker.* reserve 2 CPUs.*cluster has 2"):
        size_pool([2.0], 2, None)
    with pytest.raises(ClothprobeError, match="no node with CPUs"):
        size_pool([], None, None)


@needs_ray
def test_a_worker_running_another_recipe_is_named() -> None:
    from clothprobe.featurize.engines.ray import _check_recipe

    batch = {"fingerprint": np.array(["a", "b"], dtype=object), "worker": np.array(["n1 (pid 1)", "n2 (pid 7)"]),
             "label": np.array(["vgg16 (openvino, bfloat16)", "vgg16 (openvino, float32)"])}
    with pytest.raises(ClothprobeError, match=r"worker on n2 \(pid 7\) runs vgg16 \(openvino, float32\), not the "
                                              r"planned vgg16 \(openvino, bfloat16\).*--precision float32"):
        _check_recipe(batch, "a", "vgg16 (openvino, bfloat16)", "")


# --- featurize on the module's cluster --------------------------------------------------------------------

@needs_ray
@pytest.mark.slow
def test_ray_cache_equals_the_local_one(cluster: str, dataset: Path, tmp_path: Path) -> None:
    """Hashing too on the cluster (threshold 0), several shards, bad and duplicate files."""
    with_bad_files(dataset)
    local = run(dataset, tmp_path / "local.h5")
    with engine(hash_threshold=0) as eng:
        result = run(dataset, tmp_path / "ray.h5", engine=eng, shard_size=5)
    assert ray.is_initialized()  # the caller's Ray session is the caller's: used, not shut down
    assert result.computed == local.computed == 27 and result.skipped == local.skipped and len(result.skipped) == 2
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
    assert not (tmp_path / "ray.h5.partial").exists()


@needs_ray
def test_ray_cache_equals_the_local_one_with_taps(cluster: str, dataset: Path, tmp_path: Path) -> None:
    """Every tap computed on the workers (one compiled network there too) and stored as the local engine does."""
    local = run(dataset, tmp_path / "local.h5", taps="all", tta=True)
    with engine() as eng:
        result = run(dataset, tmp_path / "ray.h5", engine=eng, shard_size=5, taps="all", tta=True)
    assert result.computed == local.computed == 27 and result.recipe.taps == local.recipe.taps != ()
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
    x, y = load_features(tmp_path / "ray.h5", taps="block3_pool"), load_features(tmp_path / "local.h5", taps="block3_pool")
    np.testing.assert_allclose(x.split("train").flip, y.split("train").flip, rtol=1e-4, atol=1e-4)


@needs_ray
@pytest.mark.slow
def test_incremental_update_through_ray(cluster: str, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    with engine() as eng:
        assert run(dataset, out, engine=eng).computed == 27
        make_image(dataset / "train" / "hat" / "new.png", seed=501)
        make_image(dataset / "test" / "shirt" / "new.png", seed=502)
        make_image(dataset / "train" / "shirt" / "0.png", seed=503)  # changed content
        (dataset / "validation" / "hat" / "0.png").unlink()
        result = run(dataset, out, engine=eng)
        assert result.computed == 3 and result.removed == 1 and result.reused == 25
        again = run(dataset, out, engine=eng)
    assert again.up_to_date and again.computed == 0
    run(dataset, tmp_path / "fresh.h5")
    assert_same_cache(out, tmp_path / "fresh.h5")


@needs_ray
@pytest.mark.slow
def test_a_file_the_workers_cannot_read_is_reported_not_remembered(cluster: str, dataset: Path,
                                                                    tmp_path: Path) -> None:
    """The driver hashed it, the workers do not see it (a node without the shared mount): the cluster's
    fault, not the file's, so it is tried again next run, unlike a file that does not decode."""
    from clothprobe.featurize.engines.ray import RayEngine

    moved, aside = dataset / "train" / "hat" / "1.png", tmp_path / "aside.png"

    class LosesAFile(RayEngine):
        def open(self, task):  # noqa: ANN001, ANN202 - after the plan, before any worker reads
            moved.rename(aside)
            return super().open(task)

    out = tmp_path / "f.h5"
    with LosesAFile() as eng:
        result = run(dataset, out, engine=eng)
    assert result.computed == 26 and [p for p, _ in result.skipped] == ["train/hat/1.png"]
    assert "not readable on the Ray worker" in result.skipped[0][1] and "same path on every node" in result.skipped[0][1]
    aside.rename(moved)
    with engine() as eng:
        again = run(dataset, out, engine=eng)
    assert again.computed == 1 and not again.skipped and again.remembered == 0


@needs_ray
@pytest.mark.slow
def test_a_block_the_cluster_drops_is_reported_and_tried_again(cluster: str, dataset: Path, tmp_path: Path) -> None:
    """The actor's code raises on one batch, on the Ray worker: Ray Data drops that block (logged); its shard
    is reported, the rest kept, and the next run embeds it."""
    from clothprobe.featurize.engines.ray import LOST

    _lost_then_embedded(dataset, tmp_path / "f.h5", crash=False, why=LOST, shard_size=5)


@needs_ray
@pytest.mark.slow
def test_a_runtime_fallback_on_the_workers_is_planned_for(cluster: str, dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' store records a failed bfloat16 self-check (their CPU disagrees), the driver's does not:
    the driver is told, with a warning naming the worker, and plans for the float32 that really runs."""
    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model import selfcheck as compiled
    from clothprobe.featurize.model.recipe import resolve_recipe
    from clothprobe.featurize.model.store import ModelStore

    real = compiled.load_runner

    def broken_bf16(recipe, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        run_ = real(recipe, *args, **kwargs)
        return run_ if recipe.precision != "bfloat16" else (lambda x: -run_(x))

    workers_store = tmp_path / "workers-store"
    bf16 = resolve_recipe("vgg16", weights=None, image_size=32, precision="bfloat16", runtime="openvino", taps="all")
    with monkeypatch.context() as patch, pytest.warns(ClothprobeWarning, match="using float32"):
        patch.setattr(compiled, "load_runner", broken_bf16)
        open_embedder(bf16, batch_size=4, store=ModelStore(workers_store))
    with engine(store_home=workers_store) as eng, pytest.warns(ClothprobeWarning, match=(
            r"vgg16 \(openvino, bfloat16\) failed the runtime self-check on the Ray worker .*pid.*runs vgg16 "
            r"\(openvino, float32\)")):
        result = run(dataset, tmp_path / "f.h5", engine=eng, precision="bfloat16", runtime="openvino")
    assert result.precision == "float32" and result.computed == 27
    run(dataset, tmp_path / "local.h5", runtime="openvino")
    assert_same_cache(tmp_path / "f.h5", tmp_path / "local.h5")


def _killing_engine():  # noqa: ANN202 - a RayEngine subclass (ray is imported lazily)
    from clothprobe.featurize.engines.ray import RayEngine

    class KillsItsWorker(RayEngine):
        """Kills (SIGKILL) the actor process that made the first batch, as soon as that batch arrives."""

        workers_seen: set[str]

        def stream(self, *args, **kwargs) -> Iterator[dict[str, np.ndarray]]:  # noqa: ANN002, ANN003
            self.workers_seen = set()
            for k, batch in enumerate(super().stream(*args, **kwargs)):
                self.workers_seen.update(batch["worker"])
                if k == 0:
                    os.kill(int(str(batch["worker"][0]).rsplit("pid ", 1)[1].rstrip(")")), signal.SIGKILL)
                yield batch

    return KillsItsWorker


@needs_ray
@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_completes(cluster: str, tmp_path: Path) -> None:
    """Enough work (96 images at 128 px, in 12 blocks) that the pool is mid-run when its actor is killed: Ray
    restarts it and gives it the lost blocks again; the cache is whole and equals the local one."""
    data = tmp_path / "data"
    for i in range(96):
        make_image(data / ("hat", "shirt", "t-shirt")[i % 3] / f"{i}.png", seed=7000 + i, size=(150, 140))
    settings = dict(image_size=128)
    run(data, tmp_path / "local.h5", **settings)  # (and the model into the store)
    with _killing_engine()() as eng:
        result = run(data, tmp_path / "ray.h5", engine=eng, shard_size=8, **settings)
    assert len(eng.workers_seen) == 2, eng.workers_seen  # the killed actor, and the one Ray started instead
    assert result.computed == 96 and not result.skipped
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")


def _poisoned_engine(poison: str, crash: bool = True):  # noqa: ANN202 - a RayEngine subclass (ray is lazy)
    """An engine whose actors fail on every batch holding the file of sha256 ``poison``: ``crash``, the actor's
    process exits (a crash that a retry cannot cure); else its code raises. The actor class is local, so Ray
    ships it to the workers by value."""
    from clothprobe.featurize.engines.ray import RayEngine, _EmbedActor

    class FailsOnPoison(_EmbedActor):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if poison in set(batch["key"]):
                if not crash:
                    raise RuntimeError("a bug in the model actor's code")
                if not self._given_up(batch):
                    os._exit(1)
            return super().__call__(batch)

    return type("PoisonedEngine", (RayEngine,), {"actor": FailsOnPoison})


def _cpus_freed(cpus: float, within_s: float = 15.0) -> bool:
    """Whether the cluster has ``cpus`` free within ``within_s`` (its resource view lags a little)."""
    deadline = time.monotonic() + within_s
    while ray.available_resources().get("CPU", 0.0) < cpus:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _lost_then_embedded(dataset: Path, out: Path, *, crash: bool, why: str, shard_size: int) -> None:
    """Featurize ``dataset`` with actors that fail on train/hat/0.png (see ``_poisoned_engine``): that file's
    shard, and only it, is reported with ``why``, every other file is embedded; the next run embeds the
    reported files (they are not remembered as bad)."""
    poison = hashlib.sha256((dataset / "train" / "hat" / "0.png").read_bytes()).hexdigest()
    with _poisoned_engine(poison, crash=crash)() as eng:  # bfloat16: no int8 calibration and guard on the cluster
        result = run(dataset, out, engine=eng, shard_size=shard_size, precision="bfloat16")
    assert _cpus_freed(2), "the run's model actors outlived it"  # (a logger holds the failure's traceback)
    lost = [p for p, reason in result.skipped if reason == f"not embedded: {why}"]
    assert "train/hat/0.png" in lost, result.skipped
    assert len(lost) == len(result.skipped) <= shard_size and result.computed == 27 - len(lost)
    with engine() as eng:
        again = run(dataset, out, engine=eng, precision="bfloat16")
    assert again.computed == len(lost) and not again.skipped and again.remembered == 0


@needs_ray
@pytest.mark.slow
def test_a_batch_that_kills_its_worker_every_time_is_given_up(cluster: str, dataset: Path, tmp_path: Path) -> None:
    """Ray restarts the actor and retries the batch; after ``WORKER_ATTEMPTS`` starts it is handed back as a
    fault: its shard is reported, every other one kept, and the next run embeds it."""
    from clothprobe.featurize.engines.ray import GIVEN_UP

    out = tmp_path / "f.h5"
    _lost_then_embedded(dataset, out, crash=True, why=GIVEN_UP, shard_size=4)
    run(dataset, tmp_path / "local.h5", precision="bfloat16")
    assert_same_cache(out, tmp_path / "local.h5")


DIES = """
import os, signal, sys
from clothprobe.featurize import featurize
from clothprobe.featurize.engines.ray import RayEngine

class DiesAfterTwoBatches(RayEngine):
    def embed(self, shards):
        for k, item in enumerate(super().embed(shards)):
            if k == 2:
                os.kill(os.getpid(), signal.SIGKILL)  # the driver, with two batches merged
            yield item

data, out, address = sys.argv[1:]
featurize(data, out=out, features_dir=os.path.dirname(out), engine=DiesAfterTwoBatches(address),
          backbone="vgg16", weights=None, image_size=32, batch_size=4, precision="float32", shard_size=4)
"""


@needs_ray
@pytest.mark.slow
def test_a_killed_driver_resumes_from_its_finished_batches(cluster: str, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    res = subprocess.run([sys.executable, "-c", DIES, str(dataset), str(out), cluster], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    assert not out.exists() and len(list((tmp_path / "f.h5.partial").glob("*.batch.json"))) == 2
    with engine() as eng:
        result = run(dataset, out, engine=eng)
    assert result.resumed == 8 and result.computed == 19
    run(dataset, tmp_path / "local.h5")
    assert_same_cache(out, tmp_path / "local.h5")


# --- batch predict -----------------------------------------------------------------------------------------

@needs_ray
@pytest.mark.slow
def test_predict_on_ray_scores_every_photo(cluster: str, dataset: Path, tmp_path: Path) -> None:
    """A catalogue into CSV (through the CLI) and Parquet: one row per photo, every class's probability,
    equal to the local engine's; an undecodable photo has its row and reason."""
    import pandas as pd
    from typer.testing import CliRunner

    from clothprobe.classifiers import fit
    from clothprobe.cli import app
    from clothprobe.runs.predicting import predict, score_catalogue

    featurize(dataset, features_dir=tmp_path / "features", tta=True, **TINY)
    (fitted,) = fit(dataset.name, backbone="vgg16", clf="logreg", balance="none", tta=True,
                    features_dir=tmp_path / "features", models_dir=tmp_path / "models")
    catalogue = dataset / "test"
    (catalogue / "hat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    local = predict([catalogue], fitted.run_dir)
    res = CliRunner().invoke(app, ["predict", str(catalogue), "--model", str(fitted.run_dir), "--engine", "ray",
                                   "--output", str(tmp_path / "scores.csv"), "--top-k", "2"])
    assert res.exit_code == 0, res.output
    with engine() as eng:
        done = score_catalogue([catalogue], fitted.run_dir, tmp_path / "scores.parquet", engine=eng)
    assert done.scored == 9 and done.skipped == local.skipped
    for frame in (pd.read_csv(tmp_path / "scores.csv", keep_default_na=False), pd.read_parquet(tmp_path / "scores.parquet")):
        assert len(frame) == 10 and sorted(frame["path"]) == sorted([p.path for p in local.predictions] + [local.skipped[0][0]])
        for p in local.predictions:
            row = frame[frame["path"] == p.path].iloc[0]
            assert row["skipped"] == "" and row["top1"] == p.top(1)[0][0]
            assert np.allclose([float(row[f"p_{c}"]) for c in local.classes], list(p.probabilities.values()), atol=1e-6)
        bad = frame[frame["skipped"] != ""]
        assert list(bad["path"]) == [local.skipped[0][0]] and list(bad["skipped"]) == [local.skipped[0][1]]


# --- a cluster started with `ray start --head`, joined with --address ----------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str) -> None:
    """Stop the processes of the cluster whose temp dir is ``temp_dir``, by PID. (`ray stop` would stop every
    Ray on this machine, the module's cluster and anyone else's included.)"""
    import psutil

    ours = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                ours.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in ours:
        proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=10)
    for proc in alive:
        proc.kill()


@needs_ray
@pytest.mark.slow
def test_cli_featurize_joins_a_cluster_started_with_ray_start(dataset: Path, tmp_path: Path) -> None:
    ray_cli = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="cpray-", dir="/tmp")  # short: Ray's socket paths live under it
    start = [str(ray_cli), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "2", "--temp-dir", temp_dir, "--include-dashboard", "false", "--disable-usage-stats",
             "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port())]
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-3000:]
        res = cli("featurize", "--data", str(with_bad_files(dataset)), "--out", str(tmp_path / "ray.h5"),
                  "--features-dir", str(tmp_path / "features"), "--backbone", "vgg16", "--weights", "none",
                  "--image-size", "32", "--batch-size", "4", "--precision", "float32", "--engine", "ray",
                  "--address", f"127.0.0.1:{port}", timeout=300)
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "computed 27" in res.stdout and "skipped 2" in res.stdout
    run(dataset, tmp_path / "local.h5")
    assert_same_cache(tmp_path / "ray.h5", tmp_path / "local.h5")
