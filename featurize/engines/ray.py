"""Featurize (and batch-predict) on a Ray cluster: ``RayEngine``, an ``Engine`` built on Ray Data.

The driver plans and merges exactly as with the local engine (``plan.py``, ``merge.py``); the cluster
does the middle part:

- **hashing** (``hash_files``): Ray tasks hash the files where they live once a dataset has
  ``hash_threshold`` files or more (fewer are hashed by threads on the driver, faster than starting tasks);
- **decoding**: Ray Data tasks run featurize's own decoder (``images.decode``) with the same skip-and-report
  rules, under the driver's Pillow limit, each reserving ``DECODE_CPUS``;
- **embedding**: an actor pool (``map_batches`` over ``_EmbedActor``), one loaded model per actor, opened
  by ``embed.open_embedder`` from the compiled-model store of its node (made there the first time), with
  ``threads`` inference threads and as many reserved CPUs, so actors sharing a node do not oversubscribe it.

The driver reads the results as a stream (``iter_batches``), so it never holds more than a few batches; the
``Merger`` keeps each on disk as it arrives. A worker whose process dies (killed, out of memory, node lost)
is restarted by Ray and its batch given to it again (Ray Data's own fault tolerance). A batch that kills
its worker every time would be retried for ever, so a small ``_RunLedger`` actor counts how often each
batch was started: a batch started more than ``WORKER_ATTEMPTS`` times is handed back as a fault instead
of being run again. The ledger also lists the pool's actors, and the driver stops them when the run ends:
Ray Data only drops its handles, and a handle still referenced elsewhere (an exception's traceback kept by
a logger or a notebook) would keep an actor, and its reserved CPUs, alive and starve the next run. A block
whose code raises is dropped by Ray Data; its shard, like a batch given up on or a file a worker cannot
read, is reported as ``ShardFailed``: what finished is kept, and their files are tried again next run.

Every path (images, calibration photos, weights, ``store_home``) must be readable at the same path on every
node: a shared file system (NFS, EFS, Lustre, or object storage mounted with a FUSE driver). Ray is an
optional dependency: ``pip install "clothprobe[ray]"``.
"""

from __future__ import annotations

import math
import os
import re
import socket
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.embed import ORIGINAL
from clothprobe.featurize.engines.base import Engine
from clothprobe.featurize.engines.local import LocalEngine
from clothprobe.featurize.engines.plan import EmbedTask, FileHash, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.images import BadImage, decode
from clothprobe.featurize.model.recipe import Recipe

INSTALL = 'pip install "clothprobe[ray]"'
HASH_ON_CLUSTER = 20_000  # files: from this many on, Ray tasks hash them (the driver alone is too slow)
HASH_BLOCK = 1024  # files per hashing task
DECODE_CPUS = 0.5  # CPUs a decoding task reserves
BLOCK_BATCHES = 4  # model batches per Ray Data block: the unit a worker takes, and sends back, at once
LOST = "its batch failed on the Ray cluster (the error is in the log above, and in the Ray logs)"
RESUME = "Batches finished so far are kept; the next run resumes from them."
WORKER_ATTEMPTS = 3  # starts of one batch on the pool; more mean it kills its worker: it is then given up
STOP_TIMEOUT_S = 10.0  # asking the ledger for the pool's actors at the end of a run
GIVEN_UP = (f"its Ray worker died each of the {WORKER_ATTEMPTS} times it embedded this batch (out of memory, or a "
            f"crash on one of its files; the Ray logs say which); skipped, tried again next run")


PROBE_TIMEOUT_S = 3.0  # joining a cluster: its GCS port must answer within this, or the join fails at once
_HOST_PORT = re.compile(r"(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_HTTP2_SETTINGS = 4  # frame type byte of the server's first frame
ADDRESS_FORMS = "HOST:PORT (e.g. 10.0.0.5:6379, as `ray start --head` printed it), ray://HOST:PORT, or auto"


def check_address(address: str | None) -> tuple[str, int] | None:
    """``--address`` checked before any work: None (a local runtime), ``auto`` (Ray finds the cluster this
    machine joined: nothing to probe), or the host and port of ``HOST:PORT`` / ``ray://HOST:PORT``."""
    if address is None or address == "auto":
        return None
    match = _HOST_PORT.fullmatch(address.strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ClothprobeError(f"--address {address!r} is not a cluster address; give {ADDRESS_FORMS}.")
    return match["host"].strip("[]"), port


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in one line, within about ``timeout`` seconds, unless a gRPC server (Ray's GCS, or its client
    server for ``ray://``) answers at ``address``: a closed port, an unroutable host, or a proxy that accepts
    any connection but reaches nothing. Ray itself retries for minutes, logging each try. The check: an
    HTTP/2 client preface and an empty SETTINGS frame, answered by the server's SETTINGS frame."""
    where = check_address(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout) as conn:
            conn.sendall(_HTTP2_PREFACE)
            head = conn.recv(9)
        why = "" if len(head) == 9 and head[3] == _HTTP2_SETTINGS else "it answers, but not as a Ray cluster does"
    except TimeoutError:
        why = f"no answer within {timeout:.0f} s"
    except OSError as err:
        why = err.strerror or str(err) or type(err).__name__
    if why:
        raise ClothprobeError(f"Cannot reach a Ray cluster at {address} ({why}). Is `ray start --head` running "
                              f"there, and its port open to this machine?")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a ClothprobeError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part clothprobe uses
    except ImportError:
        raise ClothprobeError(f"The Ray engine needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Sizing:
    """How many model actors, and inference threads (= reserved CPUs) each."""

    workers: int
    threads: int


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ClothprobeError(f"{name} must be a whole number of at least 1, got {value!r}.")


def size_pool(nodes: Sequence[float], workers: int | None, threads: int | None) -> Sizing:
    """Actors and threads for a cluster whose nodes have ``nodes`` CPUs each: by default one actor per
    node; threads fill each node but one CPU, left for decoding. Refuses a pool that leaves no CPU to
    decode on (the pipeline would stall)."""
    if not nodes:
        raise ClothprobeError("The Ray cluster has no node with CPUs; start one with `ray start`.")
    workers = workers or len(nodes)
    per_node = math.ceil(workers / len(nodes))
    threads = threads or max(1, int(min(nodes) - 1) // per_node)
    total = sum(nodes)
    if workers * threads + DECODE_CPUS > total:
        raise ClothprobeError(
            f"{workers} worker(s) with {threads} thread(s) each reserve {workers * threads} CPUs, and decoding "
            f"needs at least {DECODE_CPUS} more; the Ray cluster has {total:g}. Ask for fewer workers or threads, "
            f"or add nodes.")
    return Sizing(workers, threads)


@contextmanager
def _pillow_limit(limit: int | None) -> Iterator[None]:
    """Decode under the driver's Pillow bomb limit (the same rules as a local run), restored after."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _image_column(size: int) -> str:
    return f"image_{size}"


def view_column(task: int, view: str) -> str:
    """The column holding task ``task``'s embeddings of ``view`` in the pipeline's output."""
    return f"v{task}_{view}"


def decode_rows(batch: dict[str, np.ndarray], sizes: tuple[int, ...], max_pixels: int,
                pillow_limit: int | None) -> dict[str, np.ndarray]:
    """A Ray Data task: each row's file decoded at each size; ``error`` says why a file cannot be used, and
    ``fault`` why this worker could not read a file the driver could (the cluster's fault, not the file's)."""
    n = len(batch["path"])
    images = {size: np.zeros((n, size, size, 3), np.uint8) for size in sizes}
    errors, faults = [""] * n, [""] * n
    with _pillow_limit(pillow_limit):
        for i, path in enumerate(batch["path"]):
            if not os.access(path, os.R_OK):
                faults[i] = (f"{path} is not readable on the Ray worker {socket.gethostname()} (is the shared file "
                             f"system mounted at the same path on every node?)")
                continue
            try:
                for size in sizes:
                    images[size][i] = decode(path, size, max_pixels)
            except BadImage as err:
                errors[i] = str(err)
    return {"block": batch["block"], "key": batch["key"], "error": np.array(errors, dtype=object),
            "fault": np.array(faults, dtype=object), **{_image_column(size): images[size] for size in sizes}}


class _RunLedger:
    """A Ray actor, one per run: how many times each batch has been started by a model actor, and the pool's
    actors (each joins when it starts), so the driver can stop them all when the run ends."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.actors: list[Any] = []

    def join(self, actor: Any) -> None:
        self.actors.append(actor)

    def members(self) -> list[Any]:
        return self.actors

    def start(self, batch: str) -> int:
        self.started[batch] += 1
        return self.started[batch]


class _EmbedActor:
    """One actor of the pool: a loaded model per task (a run's backbones), reused for every batch.
    ``ledger``: the run's ``_RunLedger`` actor, which this actor joins; a batch started more than
    ``WORKER_ATTEMPTS`` times is returned with every row's ``fault`` set (``GIVEN_UP``) instead of being
    embedded again."""

    def __init__(self, tasks: tuple[EmbedTask, ...], threads: int, store_home: str | None,
                 weights: str | None, ledger: Any = None) -> None:
        from clothprobe.featurize.embed import open_embedder
        from clothprobe.featurize.model.store import ModelStore

        store = ModelStore(store_home) if store_home else None
        self.embedders = [open_embedder(t.recipe, batch_size=t.batch_size, flip=t.flip, weights=weights,
                                        calibration_files=[Path(p) for p in t.calibration_files], store=store,
                                        threads=threads, time_rows=t.time_rows) for t in tasks]
        self.fingerprint = "+".join(e.recipe.fingerprint for e in self.embedders)
        self.label = " + ".join(e.recipe.label for e in self.embedders)
        self.where = f"{socket.gethostname()} (pid {os.getpid()})"
        self.dims: dict[int, int] = {}  # embedding width of each task's model, once known
        self.ledger = ledger
        if ledger is not None:
            import ray

            ray.get(ledger.join.remote(ray.get_runtime_context().current_actor))

    def _given_up(self, batch: dict[str, np.ndarray]) -> bool:
        if self.ledger is None:
            return False
        import ray

        name = f"{batch['block'][0]}:{batch['key'][0]}:{len(batch['key'])}"
        return ray.get(self.ledger.start.remote(name)) > WORKER_ATTEMPTS

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        fault = np.full(n, GIVEN_UP, dtype=object) if self._given_up(batch) else batch["fault"]
        good = np.array([not e and not f for e, f in zip(batch["error"], fault)], bool)
        out = {"block": batch["block"], "key": batch["key"], "error": batch["error"], "fault": fault,
               "worker": np.full(n, self.where, dtype=object), "fingerprint": np.full(n, self.fingerprint, dtype=object),
               "label": np.full(n, self.label, dtype=object)}
        for k, embedder in enumerate(self.embedders):
            out.update(self._views(k, embedder, batch[_image_column(embedder.recipe.input_size)][good], good))
        return out

    def _views(self, k: int, embedder: Any, images: np.ndarray, good: np.ndarray) -> dict[str, np.ndarray]:
        """Each view's embeddings, one row per input row (zeros where the file did not decode: every batch
        has the same columns and shapes, whatever decoded)."""
        parts: dict[str, list[np.ndarray]] = {v: [] for v in embedder.view_names}
        for start in range(0, len(images), embedder.batch_size):
            for view, values in embedder.embed_array(images[start : start + embedder.batch_size]).items():
                parts[view].append(values)
        if not len(images) and k not in self.dims:  # nothing decoded yet: the model says its width
            size = embedder.recipe.input_size
            self.dims[k] = embedder.embed_array(np.zeros((1, size, size, 3), np.uint8))[ORIGINAL].shape[1]
        out = {}
        for view, chunks in parts.items():
            values = np.concatenate(chunks) if chunks else np.zeros((0, self.dims[k]), np.float32)
            self.dims[k] = values.shape[1]
            full = np.zeros((len(good), values.shape[1]), np.float32)
            full[good] = values
            out[view_column(k, view)] = full
        return out


def _opened_recipe(task: EmbedTask, threads: int, store_home: str | None) -> tuple[Recipe, str]:
    """A Ray task: the recipe a worker really runs for ``task`` (its self-check may fall back), and where."""
    actor = _EmbedActor((task,), threads, store_home, None)
    return actor.embedders[0].recipe, actor.where


def hash_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Ray task: the content hash of each row's file, with the local engine's hashing."""
    found = sorted(LocalEngine().hash_files([Path(p) for p in batch["path"]]))  # by position in the batch
    return {"index": batch["index"], "sha256": np.array([f.sha256 for f in found], dtype=object),
            "error": np.array([f.error for f in found], dtype=object)}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OURS = "clothprobe.errors.ClothprobeError: "


def cluster_error(err: Exception, then: str) -> ClothprobeError:
    """A Ray failure as one clothprobe error: a worker's own ClothprobeError keeps its message."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, ClothprobeError):
        return ClothprobeError(f"On a Ray worker: {cause}")
    text = _ANSI.sub("", str(err))
    if _OURS in text:
        return ClothprobeError(f"On a Ray worker: {text.split(_OURS, 1)[1].strip()}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return ClothprobeError(f"The Ray cluster failed ({type(err).__name__}: {first}). {then}".rstrip())


@dataclass(frozen=True)
class Block:
    """Files that travel together (a Ray Data block: decoded, embedded and sent back at once; one of a
    shard's blocks): their keys (content hashes, or positions) and paths. ``index``: the shard's."""

    index: int
    keys: tuple[str, ...]
    paths: tuple[str, ...]


class RayEngine(Engine):
    """Featurize's middle part on Ray (see the module docstring). Use it as a context manager:

    ``with RayEngine(workers=4) as engine: featurize(data, engine=engine)``

    ``address``: join that cluster (``HOST:PORT``, ``auto``, ``ray://...``); without it a local Ray runtime
    is started, sized for the workers. When this process is already connected to Ray, that connection is
    used and left open. ``close()`` disconnects (and stops the local runtime) only if this engine started it.
    ``workers``: model actors (default: 1 locally, one per node on a cluster); ``threads``: inference threads
    (and reserved CPUs) per actor (default: each node's CPUs but one, shared by its actors).
    ``store_home``: the compiled-model store the actors use (default: each node's own, ``CLOTHPROBE_HOME``
    or ``~/.cache/clothprobe`` there); a shared folder lets one node's compiled model serve all.
    ``block_batches``: model batches per Ray Data block, the unit a worker takes and sends back at once
    (smaller: finer progress and resume, more scheduling overhead). ``init_options``: more arguments for
    ``ray.init`` when this engine calls it (``runtime_env``, ``logging_level``...). ``actor`` (a class
    attribute): the pool's actor class; a subclass of ``_EmbedActor`` may wrap its ``__call__``.
    """

    actor: type = _EmbedActor

    def __init__(self, address: str | None = None, *, workers: int | None = None, threads: int | None = None,
                 hash_threshold: int = HASH_ON_CLUSTER, store_home: str | Path | None = None,
                 block_batches: int = BLOCK_BATCHES, init_options: dict[str, Any] | None = None) -> None:
        _check_count("--workers", workers)
        _check_count("threads", threads)
        _check_count("block_batches", block_batches)
        check_address(address)
        self._ray = import_ray()
        self.address, self.workers, self.threads = address, workers, threads
        self.hash_threshold, self.block_batches = hash_threshold, block_batches
        self.init_options = dict(init_options or {})
        self.store_home = str(Path(store_home).expanduser().absolute()) if store_home else None
        self._started = False
        self._sizing: Sizing | None = None
        self._task: EmbedTask | None = None

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect from Ray if this engine connected (a local runtime it started stops with it)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started, self._sizing = False, None

    def connect(self) -> Sizing:
        """Connect to the cluster (or start the local runtime) if not yet done; the pool's size."""
        if self._sizing is None:
            ray = self._ray
            if not ray.is_initialized():
                if self.address:
                    self._join()
                else:
                    workers = self.workers or 1
                    threads = self.threads or max(1, (os.cpu_count() or 1) // workers)
                    ray.init(address="local", num_cpus=workers * threads + 1, include_dashboard=False,
                             **self.init_options)
                self._started = True
            nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
            self._sizing = size_pool([c for c in nodes if c > 0], self.workers, self.threads)
        return self._sizing

    def _join(self) -> None:
        probe_address(self.address)
        try:
            self._ray.init(address=self.address, **self.init_options)
        except ConnectionError as err:
            said = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ClothprobeError(
                f"Could not join the Ray cluster at {self.address} ({said}). A cluster started with token "
                f"authentication (`ray start --head` turns it on from Ray 2.59) needs its token on this machine: "
                f"`ray get-auth-token` on the head node, saved as ~/.ray/auth_token here (docs/guide/ray-auth.md)."
            ) from None

    def _dataset(self, tables: list[Any]) -> Any:
        """A Ray dataset of ``tables`` (one block each) whose settings are its own, never the process's."""
        ds = self._ray.data.from_arrow(tables)
        ds.context.enable_progress_bars = False  # the driver's bar counts merged images across the cluster
        return ds

    # --- hashing ------------------------------------------------------------------------------------

    def hash_files(self, paths: Sequence[Path]) -> Iterator[FileHash]:
        """Threads on the driver below ``hash_threshold`` files; Ray tasks where the files live above."""
        if len(paths) < self.hash_threshold:
            yield from super().hash_files(paths)
            return
        import pyarrow as pa

        self.connect()
        tables = [pa.table({"index": np.arange(start, min(start + HASH_BLOCK, len(paths))),
                            "path": [os.path.abspath(p) for p in paths[start : start + HASH_BLOCK]]})
                  for start in range(0, len(paths), HASH_BLOCK)]
        hashed = self._dataset(tables).map_batches(hash_rows, batch_size=None, num_cpus=DECODE_CPUS)
        try:
            for batch in hashed.iter_batches(batch_size=None, batch_format="numpy"):
                for i, sha, error in zip(batch["index"], batch["sha256"], batch["error"]):
                    yield FileHash(int(i), str(sha), str(error))
        except self._ray.exceptions.RayError as err:
            raise cluster_error(err, "") from None

    # --- embedding ----------------------------------------------------------------------------------

    def open(self, task: EmbedTask) -> Recipe:
        """Ready the pool for ``task``. A float32 recipe cannot fall back; for another precision one worker
        opens the model first (running the runtime's self-check on its node, and making the model in the
        store there) and the recipe it really runs is returned, so the driver plans for it."""
        task = replace(task, calibration_files=tuple(os.path.abspath(p) for p in task.calibration_files))
        threads = self.connect().threads
        if task.recipe.precision != "float32":
            probe = self._ray.remote(_opened_recipe).options(num_cpus=threads)
            try:
                ran, where = self._ray.get(probe.remote(task, threads, self.store_home))
            except self._ray.exceptions.RayError as err:
                raise cluster_error(err, "") from None
            if ran != task.recipe:
                warnings.warn(ClothprobeWarning(
                    f"{task.recipe.label} failed the runtime self-check on the Ray worker {where}: every worker "
                    f"runs {ran.label} instead."), stacklevel=2)
            task = replace(task, recipe=ran)
        self._task = task
        return task.recipe

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        if self._task is None:
            raise RuntimeError("RayEngine.embed called before open")
        task = self._task
        shards = [s for s in shards if s.items]
        rows = task.transfer_rows * self.block_batches
        blocks = [Block(s.index, tuple(i.sha256 for i in part), tuple(i.path for i in part))
                  for s in shards for part in (s.items[k : k + rows] for k in range(0, len(s.items), rows))]
        seen: Counter[int] = Counter()
        faults: dict[int, str] = {}
        for batch in self.stream(blocks, (task,), then=RESUME):
            for shard in (int(k) for k in np.unique(batch["block"])):
                rows = batch["block"] == shard
                seen[shard] += int(rows.sum())
                fault = rows & (batch["fault"] != "")
                if fault.any():
                    faults.setdefault(shard, str(batch["fault"][np.argmax(fault)]))
                if (rows & ~fault).any():
                    yield _shard_batch(shard, batch, rows & ~fault, task.views)
        for s in shards:  # after the stream: a shard's batches may come from several workers, in any order
            if s.index in faults or seen[s.index] < len(s.items):
                yield ShardFailed(s.index, faults.get(s.index, LOST))

    def stream(self, blocks: Sequence[Block], tasks: tuple[EmbedTask, ...], *, weights: str | None = None,
               then: str = "") -> Iterator[dict[str, np.ndarray]]:
        """Decode and embed ``blocks`` on the cluster; output batches as they finish (numpy columns
        ``block``, ``key``, ``error``, ``fault``, ``worker``, ``fingerprint``, ``label`` and one
        ``view_column(k, view)`` per task and view). Every batch was made by ``tasks``' recipes: a worker
        whose runtime fell back to another one stops the run with an error naming it."""
        if not blocks:
            return
        import pyarrow as pa
        from PIL import Image

        sizing = self.connect()
        tables = [pa.table({"block": np.full(len(b.keys), b.index), "key": list(b.keys), "path": list(b.paths)})
                  for b in blocks]
        ds = self._dataset(tables)
        ds.context.max_errored_blocks = -1  # a batch whose retries are spent is dropped (reported), not fatal
        sizes = tuple(sorted({t.recipe.input_size for t in tasks}))
        decoded = ds.map_batches(decode_rows, batch_size=tasks[0].transfer_rows, num_cpus=DECODE_CPUS,
                                 fn_kwargs={"sizes": sizes, "max_pixels": tasks[0].max_pixels,
                                            "pillow_limit": Image.MAX_IMAGE_PIXELS})
        ledger = self._ray.remote(_RunLedger).options(num_cpus=0).remote()
        embedded = decoded.map_batches(
            self.actor, batch_size=max(t.transfer_rows for t in tasks), num_cpus=sizing.threads,
            compute=self._ray.data.ActorPoolStrategy(size=sizing.workers),
            fn_constructor_kwargs={"tasks": tasks, "threads": sizing.threads, "store_home": self.store_home,
                                   "weights": weights, "ledger": ledger})
        expected = "+".join(t.recipe.fingerprint for t in tasks)
        try:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                _check_recipe(batch, expected, " + ".join(t.recipe.label for t in tasks), then)
                yield batch
        except self._ray.exceptions.RayError as err:
            raise cluster_error(err, then) from None
        finally:
            self._stop_pool(ledger)

    def _stop_pool(self, ledger: Any) -> None:
        """Stop the run's model actors and its ledger, so their CPUs are free for the next run at once."""
        ray = self._ray
        try:
            actors = ray.get(ledger.members.remote(), timeout=STOP_TIMEOUT_S)
        except ray.exceptions.RayError:  # the ledger is gone with its node: Ray Data's own release remains
            actors = []
        for actor in (*actors, ledger):
            try:
                ray.kill(actor, no_restart=True)
            except ray.exceptions.RayError:
                pass  # already dead


def _check_recipe(batch: dict[str, np.ndarray], expected: str, planned: str, then: str) -> None:
    other = batch["fingerprint"] != expected
    if other.any():
        k = int(np.argmax(other))
        raise ClothprobeError(
            f"The Ray worker on {batch['worker'][k]} runs {batch['label'][k]}, not the planned {planned}: its "
            f"runtime failed the self-check on that machine and fell back (the nodes' CPUs differ; `cli cache "
            f"list` there shows the check). Every worker must run the same recipe: use --precision float32, or "
            f"nodes of one CPU type. {then}".rstrip())


def _shard_batch(shard: int, batch: dict[str, np.ndarray], rows: np.ndarray, views: tuple[str, ...]) -> ShardBatch:
    """The rows of ``batch`` from ``shard``, as the Merger takes them."""
    bad = rows & (batch["error"] != "")
    ok = rows & ~bad
    return ShardBatch(shard=shard, fingerprint=str(batch["fingerprint"][np.argmax(rows)]),
                      sha256=[str(k) for k in batch["key"][ok]],
                      views={v: np.asarray(batch[view_column(0, v)][ok], np.float32) for v in views} if ok.any()
                      else {v: np.empty((0, 0), np.float32) for v in views},
                      failed={str(k): str(e) for k, e in zip(batch["key"][bad], batch["error"][bad])})
