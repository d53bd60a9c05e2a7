"""The embedding cache: the one module that knows the HDF5 schema.

Layout of ``features/<dataset>/<backbone>.h5`` (schema version 1)::

    /                 attrs: schema_version, fingerprint, backbone, input_size, preprocessing, pooling,
                             resize, precision, runtime, weights_sha256, weights_source, class_names (JSON),
                             dataset, views (JSON), versions (JSON), created, data_root (absolute path of
                             the image folder), seconds_per_image (model time of the last run that computed)
    /<split>/embeddings   float32 (n, d)   pooled embedding of each image
    /<split>/flip         float32 (n, d)   same, of the horizontally flipped image (only with --tta flip)
    /<split>/paths        utf-8 (n,)       path relative to the dataset root; rows are aligned with it
    /<split>/labels       int32 (n,)       index into class_names
    /<split>/sha256       ascii (n,)       content hash of the image file
    /<split>/skipped_paths, /<split>/skipped_reasons   utf-8   files that could not be used, and why

Safety: a writer holds ``<cache>.lock`` (an OS lock, released even when the process is killed), writes
``<cache>.tmp-<pid>`` and renames it into place, so a killed run leaves the previous cache intact. Each
finished batch is also kept in ``<cache>.partial/`` so that a killed run resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clothprobe.errors import ClothprobeError

SCHEMA_VERSION = 1
VIEWS = ("embeddings", "flip")  # the original view and the horizontally flipped one
STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class CacheConfig:
    """Everything that changes the embeddings; any difference invalidates a cache."""

    backbone: str
    input_size: int
    preprocessing: str
    pooling: str
    resize: str
    precision: str
    runtime: str
    weights_sha256: str

    def fingerprint(self) -> str:
        blob = json.dumps({"schema_version": SCHEMA_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def differences(self, other: CacheConfig) -> list[str]:
        """Human-readable list of what changed from ``other`` to ``self``."""
        ours, theirs = asdict(self), asdict(other)
        return [f"{k}: {theirs[k]} -> {ours[k]}" for k in ours if ours[k] != theirs[k]]


@dataclass
class SplitFeatures:
    """One split read back: rows of every array are aligned."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    flip: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureCache:
    """A whole cache in memory, as ``fit`` uses it."""

    path: Path
    config: CacheConfig
    class_names: list[str]
    dataset: str
    views: tuple[str, ...]
    fingerprint: str
    splits: dict[str, SplitFeatures]
    attrs: dict[str, Any]

    def split(self, name: str) -> SplitFeatures:
        if name not in self.splits:
            raise ClothprobeError(
                f"Cache {self.path} has no {name!r} split (it has: {', '.join(self.splits)})."
            )
        return self.splits[name]


def default_path(features_dir: str | Path, dataset: str, backbone: str) -> Path:
    return Path(features_dir) / dataset / f"{backbone}.h5"


def _config_from_attrs(attrs: Any) -> CacheConfig:
    return CacheConfig(
        backbone=str(attrs["backbone"]),
        input_size=int(attrs["input_size"]),
        preprocessing=str(attrs["preprocessing"]),
        pooling=str(attrs["pooling"]),
        resize=str(attrs["resize"]),
        precision=str(attrs["precision"]),
        runtime=str(attrs["runtime"]),
        weights_sha256=str(attrs["weights_sha256"]),
    )


def _open_read(path: Path, hint: str = "") -> h5py.File:
    if not path.is_file():
        raise ClothprobeError(f"No feature cache at {path}.{hint}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise ClothprobeError(f"Cannot read feature cache {path} ({err}); delete it and featurize again.{hint}") from None
    version = h5.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        h5.close()
        raise ClothprobeError(
            f"{path} has cache schema version {version}, this clothprobe reads {SCHEMA_VERSION}; featurize again.{hint}"
        )
    return h5


def _strings(ds: h5py.Dataset) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in ds[()]], dtype=object)


def load_features(path: str | Path, hint: str = "") -> FeatureCache:
    """Read a whole cache back as numpy arrays and class names (``hint`` is appended to errors)."""
    path = Path(path)
    with _open_read(path, hint) as h5:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
        views = tuple(json.loads(attrs["views"]))
        splits = {}
        for name, group in h5.items():
            splits[name] = SplitFeatures(
                embeddings=group["embeddings"][()],
                labels=group["labels"][()].astype(np.int64),
                paths=_strings(group["paths"]),
                sha256=_strings(group["sha256"]),
                flip=group["flip"][()] if "flip" in group else None,
                skipped=list(zip(_strings(group["skipped_paths"]), _strings(group["skipped_reasons"]))),
            )
        return FeatureCache(
            path=path,
            config=_config_from_attrs(attrs),
            class_names=json.loads(attrs["class_names"]),
            dataset=str(attrs["dataset"]),
            views=views,
            fingerprint=str(attrs["fingerprint"]),
            splits=splits,
            attrs=attrs,
        )


# ---------------------------------------------------------------------------------------------------
# Row sources for an incremental update: where an already-computed embedding can be read from.


class RowSource:
    """Rows of embeddings keyed by content hash, readable by view."""

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:  # rows: sorted, unique
        raise NotImplementedError


class _H5Source(RowSource):
    def __init__(self, h5: h5py.File, split: str) -> None:
        self.group = h5[split]

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        return self.group[view][rows]


class _NpySource(RowSource):
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.arrays[view][rows])


Known = dict[str, tuple[RowSource, int]]


class ExistingCache:
    """An existing cache opened for reuse: which content hashes it already has embeddings for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.h5: h5py.File | None = None
        self.config: CacheConfig | None = None
        self.views: tuple[str, ...] = ()
        self.paths: dict[str, str] = {}  # rel_path -> sha256, to report what changed
        try:
            self.h5 = _open_read(path)
            self.config = _config_from_attrs(self.h5.attrs)
            self.views = tuple(json.loads(self.h5.attrs["views"]))
        except (ClothprobeError, KeyError, ValueError):
            self.close()
            self.h5 = None

    @property
    def readable(self) -> bool:
        return self.h5 is not None

    def attr(self, name: str, default: Any) -> Any:
        return self.h5.attrs.get(name, default) if self.h5 is not None else default

    def known(self, views: Sequence[str]) -> Known:
        """content hash -> (source, row) for every row that has all of ``views``."""
        out: Known = {}
        if self.h5 is None or not set(views) <= set(self.views):
            return out
        for split in self.h5:
            source = _H5Source(self.h5, split)
            hashes = _strings(self.h5[split]["sha256"])
            for rel, sha in zip(_strings(self.h5[split]["paths"]), hashes):
                self.paths[rel] = sha
            for row, sha in enumerate(hashes):
                out.setdefault(sha, (source, row))
        return out

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()


class PartialStore:
    """Finished batches of a run in progress, so a killed run resumes from its last finished batch.

    Each batch is ``NNNNNN.<view>.npy`` files plus ``NNNNNN.sha256.npy``, written last and renamed into
    place: a batch without its hash file was interrupted and is ignored.
    """

    def __init__(self, cache_path: Path, fingerprint: str, views: Sequence[str]) -> None:
        self.dir = cache_path.with_name(cache_path.name + ".partial")
        self.views = tuple(views)
        stamp = self.dir / "fingerprint.json"
        wanted = {"fingerprint": fingerprint, "views": list(self.views)}
        if self.dir.exists():
            try:
                same = json.loads(stamp.read_text()) == wanted
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(stamp, json.dumps(wanted))
        self.next_id = 1 + max((int(p.name.split(".")[0]) for p in self.dir.glob("*.sha256.npy")), default=-1)

    def known(self) -> Known:
        out: Known = {}
        for hash_file in sorted(self.dir.glob("*.sha256.npy")):
            stem = hash_file.name.split(".")[0]
            try:
                hashes = np.load(hash_file, allow_pickle=False)
                arrays = {v: np.load(self.dir / f"{stem}.{v}.npy", mmap_mode="r", allow_pickle=False) for v in self.views}
            except (OSError, ValueError):
                continue  # a damaged batch is recomputed
            if any(len(a) != len(hashes) for a in arrays.values()):
                continue
            source = _NpySource(arrays)
            for row, sha in enumerate(hashes.astype(str)):
                out.setdefault(sha, (source, row))
        return out

    def add(self, hashes: Sequence[str], arrays: dict[str, np.ndarray]) -> None:
        stem = f"{self.next_id:06d}"
        self.next_id += 1
        for view in self.views:
            _atomic_save(self.dir / f"{stem}.{view}.npy", np.ascontiguousarray(arrays[view], dtype=np.float32))
        _atomic_save(self.dir / f"{stem}.sha256.npy", np.array(hashes, dtype="S64"))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Writing


@contextmanager
def writer_lock(cache_path: Path) -> Iterator[None]:
    """Refuse a second writer on the same cache; the OS drops the lock if this process dies."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = cache_path.with_name(cache_path.name + ".lock")
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ClothprobeError(
                f"Another clothprobe run ({holder}) is writing {cache_path}; wait for it to finish, "
                f"or use --out for a different cache."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        for stale in cache_path.parent.glob(cache_path.name + ".tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run; we hold the lock, so it is not live
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()


@dataclass
class SplitRows:
    """What a split of the new cache holds, and where each row's embedding is read from."""

    paths: list[str]
    labels: list[int]
    sha256: list[str]
    skipped: list[tuple[str, str]]


def write_cache(
    path: Path,
    config: CacheConfig,
    class_names: Sequence[str],
    dataset: str,
    views: Sequence[str],
    embedding_dim: int,
    splits: dict[str, SplitRows],
    known: Known,
    extra_attrs: dict[str, Any],
    chunk_rows: int = 2048,
) -> None:
    """Write a new cache to a temporary file, streaming rows from ``known``, and rename it into place."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update(
                {
                    "schema_version": SCHEMA_VERSION,
                    "fingerprint": config.fingerprint(),
                    **asdict(config),
                    "class_names": json.dumps(list(class_names)),
                    "dataset": dataset,
                    "views": json.dumps(list(views)),
                    **extra_attrs,
                }
            )
            for name, rows in splits.items():
                group = h5.create_group(name)
                n = len(rows.paths)
                for view in views:
                    ds = group.create_dataset(
                        view, shape=(n, embedding_dim), dtype="float32", chunks=(min(max(n, 1), 256), embedding_dim)
                    )
                    for start in range(0, n, chunk_rows):
                        ds[start : start + chunk_rows] = _gather(known, rows.sha256[start : start + chunk_rows], view, embedding_dim)
                group.create_dataset("paths", data=np.array(rows.paths, dtype=object), dtype=STR)
                group.create_dataset("labels", data=np.array(rows.labels, dtype=np.int32))
                group.create_dataset("sha256", data=np.array(rows.sha256, dtype="S64"))
                group.create_dataset("skipped_paths", data=np.array([p for p, _ in rows.skipped], dtype=object), dtype=STR)
                group.create_dataset("skipped_reasons", data=np.array([r for _, r in rows.skipped], dtype=object), dtype=STR)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _gather(known: Known, hashes: Sequence[str], view: str, dim: int) -> np.ndarray:
    out = np.empty((len(hashes), dim), dtype=np.float32)
    wanted: dict[RowSource, list[tuple[int, int]]] = defaultdict(list)
    for dest, sha in enumerate(hashes):
        source, row = known[sha]
        wanted[source].append((row, dest))
    for source, pairs in wanted.items():
        rows = np.array([r for r, _ in pairs])
        dests = np.array([d for _, d in pairs])
        unique, inverse = np.unique(rows, return_inverse=True)
        out[dests] = source.read(view, unique)[inverse]
    return out


def write_arrays(path: Path, config: CacheConfig, class_names: Sequence[str], dataset: str,
                 splits: dict[str, SplitFeatures], data_root: str | Path | None = None) -> None:
    """Write in-memory features as a cache (the same schema), e.g. synthetic caches for tests."""
    views = ("embeddings", "flip") if all(s.flip is not None for s in splits.values()) else ("embeddings",)
    known: Known = {}
    rows = {}
    for name, s in splits.items():
        source = _NpySource({"embeddings": s.embeddings, "flip": s.flip})
        for row, sha in enumerate(s.sha256):
            known[str(sha)] = (source, row)
        rows[name] = SplitRows(paths=list(s.paths), labels=[int(v) for v in s.labels],
                               sha256=[str(v) for v in s.sha256], skipped=list(s.skipped))
    dim = next(iter(splits.values())).embeddings.shape[1]
    extra = {"versions": "{}", **({"data_root": str(data_root)} if data_root else {})}
    write_cache(path, config, class_names, dataset, views, dim, rows, known, extra_attrs=extra)
