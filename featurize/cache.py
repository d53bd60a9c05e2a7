"""The embedding cache: the one module that knows the HDF5 schema.

Layout of ``features/<dataset>/<backbone>.h5`` (schema version 2)::

    /                 attrs: format ("clothprobe-embedding-cache"), schema_version (2), recipe (JSON: the
                             embedding recipe, featurize/recipe.py), fingerprint (the recipe's), class_names,
                             splits, views (JSON lists), dataset, data_root, seconds_per_image, decode (JSON:
                             the decoder settings the remembered failures hold for), versions (JSON),
                             created, content_digest, header_checksum (SHA-256 of all the others)
    /<split>/embeddings   float32 (n, d)   pooled embedding of each image
    /<split>/flip         float32 (n, d)   same, of the horizontally flipped image (only with --tta flip)
    /<split>/paths        utf-8 (n,)       path relative to the dataset root; rows are aligned with it
    /<split>/labels       int32 (n,)       index into class_names
    /<split>/sha256       ascii (n,)       content hash of the image file
    /<split>/skipped_paths, /<split>/skipped_reasons   utf-8   files that could not be used, and why
    /failures/sha256, /failures/reasons               contents that could not be decoded, not retried

Integrity: every dataset carries a ``checksum`` attribute (SHA-256 of its values, numbers as
little-endian bytes, strings length-prefixed UTF-8) that is verified on every read, the reuse path
included (streamed in blocks of rows, so memory stays bounded); fixed-size datasets are also chunked
with HDF5's fletcher32 filter. Embeddings must be finite. A damaged cache is reported and rebuilt.

Ours or not: a file is a clothprobe cache when it opens as HDF5 and its root attributes say so
(``format``, or schema version 1's ``schema_version`` + ``fingerprint`` + ``backbone``). Anything else
(not HDF5, another program's HDF5, a folder) is never replaced; a damaged clothprobe cache is; a cache of
another schema version only with ``rebuild``.

Safety: a writer holds ``<cache>.lock`` (an OS lock through ``filelock``, released even when the process
is killed), writes ``<cache>.tmp-<pid>`` and renames it into place, so a killed run leaves the previous
cache intact; temporaries of dead processes are removed by the next writer.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.extras import require
from clothprobe.featurize.recipe import Recipe
from clothprobe.files import stale_by_pid

FORMAT = "clothprobe-embedding-cache"
SCHEMA_VERSION = 2
VIEWS = ("embeddings", "flip")  # the original view and the horizontally flipped one
STR = h5py.string_dtype("utf-8")
CHECKSUM = "checksum"  # attribute of every dataset
READ_ROWS = 4096  # rows per block when verifying or copying: memory bounded whatever the cache size
FAILURES = "failures"


class CacheDamaged(Exception):
    """A clothprobe cache whose contents cannot be trusted; the message says which part."""


# ---------------------------------------------------------------------------------------------------
# What a cache is: its root attributes, and the record a run manifest keeps of it.


@dataclass(frozen=True)
class CacheHeader:
    """The root attributes of a cache (everything but the arrays)."""

    recipe: Recipe
    class_names: tuple[str, ...]
    dataset: str
    views: tuple[str, ...]
    data_root: str = ""  # absolute path of the image folder
    seconds_per_image: float = 0.0  # model time per image of the last run that computed images
    decode: dict[str, Any] = field(default_factory=dict)  # decoder settings the remembered failures hold for
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    content_digest: str = ""  # what the cache holds (content_digest()), to leave an unchanged cache alone

    @property
    def fingerprint(self) -> str:
        return self.recipe.fingerprint

    def to_attrs(self, splits: Sequence[str]) -> dict[str, Any]:
        attrs = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint,
            "recipe": _json(self.recipe.to_dict()), "class_names": _json(list(self.class_names)),
            "splits": _json(list(splits)), "views": _json(list(self.views)), "dataset": self.dataset,
            "data_root": self.data_root, "seconds_per_image": float(self.seconds_per_image),
            "decode": _json(self.decode), "versions": _json(self.versions), "created": self.created,
            "content_digest": self.content_digest,
        }
        return {**attrs, "header_checksum": _header_checksum(attrs)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> tuple[CacheHeader, list[str]]:
        """The header and the split names; CacheDamaged when the attributes were altered or are incomplete."""
        attrs = {k: _plain(v) for k, v in attrs.items()}
        if attrs.get("header_checksum") != _header_checksum({k: v for k, v in attrs.items() if k != "header_checksum"}):
            raise CacheDamaged("its root attributes do not match their checksum")
        try:
            recipe = Recipe.from_dict(json.loads(attrs["recipe"]))
            header = cls(recipe=recipe, class_names=tuple(json.loads(attrs["class_names"])),
                         dataset=str(attrs["dataset"]), views=tuple(json.loads(attrs["views"])),
                         data_root=str(attrs["data_root"]), seconds_per_image=float(attrs["seconds_per_image"]),
                         decode=json.loads(attrs["decode"]), versions=json.loads(attrs["versions"]),
                         created=str(attrs["created"]), content_digest=str(attrs["content_digest"]))
            return header, list(json.loads(attrs["splits"]))
        except (KeyError, TypeError, ValueError, ClothprobeError) as err:
            raise CacheDamaged(f"its root attributes are incomplete ({err})") from None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _header_checksum(attrs: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_json(attrs).encode()).hexdigest()


@dataclass(frozen=True)
class CacheInfo:
    """What a run manifest records of a cache it was fitted on: enough to embed new images exactly as the
    cache was (predict) and to cost it (report)."""

    path: str
    fingerprint: str
    recipe: Recipe
    views: tuple[str, ...]
    data_root: str | None
    images: int
    featurize_seconds: float | None  # model time for all its images, None when unknown

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "recipe": self.recipe.to_dict(),
                "views": list(self.views), "data_root": self.data_root, "images": self.images,
                "featurize_seconds": self.featurize_seconds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheInfo:
        """The record ``to_dict`` wrote; a ClothprobeError (not a KeyError) for anything else."""
        try:
            seconds = d["featurize_seconds"]
            return cls(path=str(d["path"]), fingerprint=str(d["fingerprint"]), recipe=Recipe.from_dict(d["recipe"]),
                       views=tuple(d["views"]), data_root=d["data_root"], images=int(d["images"]),
                       featurize_seconds=None if seconds is None else float(seconds))
        except (KeyError, TypeError, ValueError, AttributeError, ClothprobeError) as err:
            raise ClothprobeError(f"not a cache record this clothprobe can read ({err})") from None


# ---------------------------------------------------------------------------------------------------
# Reading


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
    header: CacheHeader
    splits: dict[str, SplitFeatures]

    @property
    def recipe(self) -> Recipe:
        return self.header.recipe

    @property
    def fingerprint(self) -> str:
        return self.header.fingerprint

    @property
    def class_names(self) -> list[str]:
        return list(self.header.class_names)

    @property
    def dataset(self) -> str:
        return self.header.dataset

    @property
    def views(self) -> tuple[str, ...]:
        return self.header.views

    def split(self, name: str) -> SplitFeatures:
        if name not in self.splits:
            raise ClothprobeError(
                f"Cache {self.path} has no {name!r} split (it has: {', '.join(self.splits)})."
            )
        return self.splits[name]

    def info(self) -> CacheInfo:
        n = sum(len(s) for s in self.splits.values())
        per_image = self.header.seconds_per_image
        return CacheInfo(path=str(self.path), fingerprint=self.fingerprint, recipe=self.recipe, views=self.views,
                         data_root=self.header.data_root or None, images=n,
                         featurize_seconds=per_image * n if per_image > 0 else None)

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``, one row per image: split, path, label, class, sha256 and one fixed-size
        list<float32> column per view (``embedding``, and ``flip`` with --tta flip); the recipe and class
        names are in the schema metadata."""
        pa = require("pyarrow", "export", f"Exporting {self.path}")
        parts = [self._arrow_split(name, s) for name, s in self.splits.items()]
        meta = {"clothprobe.recipe": _json(self.recipe.to_dict()), "clothprobe.class_names": _json(self.class_names)}
        if not parts:
            raise ClothprobeError(f"Cache {self.path} holds no split to export.")
        return pa.concat_tables(parts).replace_schema_metadata(meta)

    def _arrow_split(self, name: str, s: SplitFeatures) -> Any:
        import pyarrow as pa

        def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).ravel()), x.shape[1])

        columns = {"split": pa.array([name] * len(s), pa.string()), "path": pa.array(list(s.paths), pa.string()),
                   "label": pa.array(s.labels, pa.int32()),
                   "class": pa.array([self.class_names[i] for i in s.labels], pa.string()),
                   "sha256": pa.array(list(s.sha256), pa.string()), "embedding": vectors(s.embeddings)}
        if s.flip is not None:
            columns["flip"] = vectors(s.flip)
        return pa.table(columns)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame of ``to_arrow()``: each ``embedding`` cell is a float32 numpy array;
        ``np.stack(df["embedding"])`` is the (n, d) matrix again."""
        require("pandas", "export", f"Exporting {self.path} to pandas")
        return self.to_arrow().to_pandas()

    def to_parquet(self, path: str | Path) -> Path:
        """Write ``to_arrow()`` as Parquet, atomically. An existing file is replaced only if it is Parquet."""
        pq = require("pyarrow.parquet", "export", f"Exporting {self.path}")

        path = Path(path)
        if path.is_dir() or (path.exists() and not _is_parquet(path)):
            raise ClothprobeError(f"{path} exists and is not a Parquet file; clothprobe will not replace it. "
                                  f"Choose another output path.")
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            pq.write_table(self.to_arrow(), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def default_path(features_dir: str | Path, dataset: str, backbone: str) -> Path:
    """``features_dir/dataset/<backbone>.h5`` (``onnx:model.onnx`` -> ``onnx-model.onnx.h5``)."""
    return Path(features_dir) / dataset / f"{re.sub(r'[^A-Za-z0-9._+-]', '-', backbone)}.h5"


# ---------------------------------------------------------------------------------------------------
# Ours, or not: what is at a cache path, from its root attributes alone.


@dataclass(frozen=True)
class Found:
    """``kind``: missing | cache (ours, this schema) | other-schema (ours, ``version``) | folder | foreign."""

    kind: str
    version: Any = None
    detail: str = ""


def probe(path: Path) -> Found:
    """What is at ``path``; reads only the HDF5 superblock and root attributes."""
    if path.is_dir():
        return Found("folder")
    if not path.exists() and not path.is_symlink():
        return Found("missing")
    try:
        if not h5py.is_hdf5(path):
            return Found("foreign", detail="not an HDF5 file")
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs.items())
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        return Found("foreign", detail=f"an HDF5 file whose attributes cannot be read: {err}")
    version = _plain(attrs.get("schema_version"))
    if _plain(attrs.get("format")) == FORMAT:
        return Found("cache" if version == SCHEMA_VERSION else "other-schema", version)
    if version == 1 and {"fingerprint", "backbone"} <= set(attrs):
        return Found("other-schema", 1)
    return Found("foreign", detail="an HDF5 file without clothprobe's attributes")


def refusal(path: Path, found: Found, rebuild: bool) -> str | None:
    """Why ``featurize`` must not write a cache at ``path`` (None: it may)."""
    if found.kind == "folder":
        return f"--out {path} is a folder; give the path of the cache file to write, e.g. {path / 'cache.h5'}."
    if found.kind == "foreign":
        return (f"{path} is not a clothprobe feature cache ({found.detail}); clothprobe never replaces a file "
                f"it did not write. Move it away or choose another --out. (If it is a clothprobe cache so "
                f"damaged that it no longer opens, delete it.)")
    if found.kind == "other-schema" and not rebuild:
        return (f"{path} is a clothprobe cache of schema version {found.version}; this clothprobe reads and "
                f"writes version {SCHEMA_VERSION}. Run featurize with --rebuild to replace it, or delete it.")
    return None


def check_target(path: Path, rebuild: bool = False) -> Found:
    """Refuse, before any work, a cache path that is a folder, not ours, or (without rebuild) another schema."""
    found = probe(path)
    why = refusal(path, found, rebuild)
    if why:
        raise ClothprobeError(why)
    return found


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------------
# Integrity


class Checksum:
    """SHA-256 of a sequence of values fed block by block; the same values give the same hash however they
    are cut into blocks: numbers as little-endian C-order bytes, strings as length-prefixed UTF-8."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def update(self, block: np.ndarray) -> Checksum:
        block = np.asarray(block)
        if block.dtype.kind in "OU":
            for value in block.ravel():
                raw = value.encode() if isinstance(value, str) else bytes(value)
                self._sha.update(len(raw).to_bytes(8, "little"))
                self._sha.update(raw)
        else:
            self._sha.update(np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes())
        return self

    def hexdigest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def _verify(ds: h5py.Dataset, blocks: Iterable[np.ndarray]) -> None:
    """Raise CacheDamaged unless ``blocks`` (all of ``ds``'s values, in order) match its checksum and,
    for floats, are finite."""
    digest = Checksum()
    for block in blocks:
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise CacheDamaged(f"{ds.name} holds values that are not finite numbers")
        digest.update(block)
    if _plain(ds.attrs.get(CHECKSUM)) != digest.hexdigest():
        raise CacheDamaged(f"{ds.name} does not match its checksum")


def _verify_streamed(ds: h5py.Dataset) -> None:
    n = ds.shape[0] if ds.shape else 0
    with _naming(ds):
        _verify(ds, (ds[start : start + READ_ROWS] for start in range(0, n, READ_ROWS)))


def _read(ds: h5py.Dataset) -> np.ndarray:
    with _naming(ds):
        values = ds[()]
        _verify(ds, [values])
    return values


@contextmanager
def _naming(ds: h5py.Dataset) -> Iterator[None]:
    """HDF5's read errors (fletcher32 included) as CacheDamaged naming the dataset."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise CacheDamaged(f"{ds.name} cannot be read ({err})") from None


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in values], dtype=object)


READ_ERRORS = (CacheDamaged, OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises on damage


def _damage(err: Exception) -> str:
    return str(err) if isinstance(err, CacheDamaged) else f"cannot be read: {type(err).__name__}: {err}"


def load_features(path: str | Path, hint: str = "") -> FeatureCache:
    """Read a whole cache back, every checksum verified (``hint`` is appended to errors)."""
    path = Path(path)
    found = probe(path)
    if found.kind != "cache":
        why = {"missing": f"No feature cache at {path}.", "folder": f"{path} is a folder, not a feature cache."}
        raise ClothprobeError((why.get(found.kind) or refusal(path, found, rebuild=False) or "") + hint)
    try:
        with h5py.File(path, "r") as h5:
            header, names = CacheHeader.from_attrs(dict(h5.attrs.items()))
            splits = {name: _read_split(h5[name], header.views) for name in names}
            _read_failures(h5)
    except READ_ERRORS as err:
        raise ClothprobeError(f"Feature cache {path} is damaged ({_damage(err)}); run cli featurize again to "
                              f"rebuild it.{hint}") from None
    return FeatureCache(path=path, header=header, splits=splits)


def _read_split(group: h5py.Group, views: Sequence[str]) -> SplitFeatures:
    return SplitFeatures(
        embeddings=_read(group["embeddings"]),
        labels=_read(group["labels"]).astype(np.int64),
        paths=_strings(_read(group["paths"])),
        sha256=_strings(_read(group["sha256"])),
        flip=_read(group["flip"]) if "flip" in views else None,
        skipped=list(zip(_strings(_read(group["skipped_paths"])), _strings(_read(group["skipped_reasons"])))),
    )


def _read_failures(h5: h5py.File) -> dict[str, str]:
    group = h5[FAILURES]
    return dict(zip(_strings(_read(group["sha256"])), _strings(_read(group["reasons"]))))


# ---------------------------------------------------------------------------------------------------
# Row sources for an incremental update: where an already-computed embedding can be read from.


class RowSource:
    """Rows of embeddings, readable by view."""

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:  # rows: sorted, unique
        raise NotImplementedError

    def dim(self, view: str) -> int:
        raise NotImplementedError


class _H5Source(RowSource):
    def __init__(self, group: h5py.Group) -> None:
        self.group = group

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        first, last = int(rows[0]), int(rows[-1])
        if last - first < 4 * len(rows):  # mostly contiguous: one slice read beats HDF5's point selection
            return self.group[view][first : last + 1][rows - first]
        return self.group[view][rows]

    def dim(self, view: str) -> int:
        return int(self.group[view].shape[1])


class ArraySource(RowSource):
    """Rows of in-memory (or memory-mapped) arrays, one per view."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.arrays[view][rows])

    def dim(self, view: str) -> int:
        return int(self.arrays[view].shape[1])


Known = dict[str, tuple[RowSource, int]]  # content hash -> where its embedding is


class ExistingCache:
    """The cache at ``path`` opened for reuse. ``usable`` once every checksum was verified (streamed);
    ``damage`` says what is wrong otherwise. Callers refused foreign files and other schemas before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.h5: h5py.File | None = None
        self.header: CacheHeader | None = None
        self.damage = ""
        self._splits: list[str] = []
        if probe(path).kind != "cache":
            return
        try:
            self.h5 = h5py.File(path, "r")
            self.header, self._splits = CacheHeader.from_attrs(dict(self.h5.attrs.items()))
            for name in [*self._splits, FAILURES]:
                for ds in self.h5[name].values():
                    _verify_streamed(ds)
        except READ_ERRORS as err:
            self.damage = _damage(err)
            self.header = None
            self.close()

    def __enter__(self) -> ExistingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def usable(self) -> bool:
        return self.h5 is not None

    def paths(self) -> set[str]:
        """Every image path the cache holds."""
        if self.h5 is None:
            return set()
        return {p for name in self._splits for p in _strings(self.h5[name]["paths"][()])}

    def known(self, views: Sequence[str]) -> Known:
        """content hash -> (source, row) for every row, if the cache has all of ``views``."""
        out: Known = {}
        if self.h5 is None or not set(views) <= set(self.header.views):
            return out
        for name in self._splits:
            source = _H5Source(self.h5[name])
            for row, sha in enumerate(_strings(self.h5[name]["sha256"][()])):
                out.setdefault(sha, (source, row))
        return out

    def failures(self, decode: dict[str, Any]) -> dict[str, str]:
        """content hash -> why it could not be decoded, if the failures were seen with these ``decode`` settings."""
        if self.h5 is None or self.header.decode != decode:
            return {}
        return _read_failures(self.h5)

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None


# ---------------------------------------------------------------------------------------------------
# Writing


@contextmanager
def writer_lock(cache_path: Path) -> Iterator[None]:
    """Refuse a second writer on the same cache; the OS drops the lock if this process dies. Temporary
    files of writers that died are removed once the lock is held."""
    from filelock import FileLock, Timeout

    lock_path = cache_path.with_name(cache_path.name + ".lock")
    lock = FileLock(lock_path, timeout=0, preserve_lock_file=True)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise ClothprobeError(
            f"Another clothprobe run is writing {cache_path} (it holds {lock_path}); wait for it to finish, "
            f"or use --out for a different cache."
        ) from None
    except OSError as err:
        raise ClothprobeError(f"Cannot write a cache at {cache_path}: {err.strerror or err}.") from None
    try:
        remove_stale(cache_path.parent, glob.escape(cache_path.name) + ".tmp-*")
        yield
    finally:
        lock.release()


def remove_stale(directory: Path, pattern: str) -> None:
    """Remove files matching the glob ``pattern`` and named ``...-<pid>`` (``x.h5.tmp-123``) whose process
    is gone: what a killed writer left."""
    for stale in directory.glob(pattern):
        if stale.is_file() and stale_by_pid(stale.name):
            stale.unlink(missing_ok=True)


@dataclass
class SplitRows:
    """What a split of the new cache holds; each row's embedding is read from ``Known`` by its hash."""

    paths: list[str]
    labels: list[int]
    sha256: list[str]
    skipped: list[tuple[str, str]]


def content_digest(header: CacheHeader, splits: dict[str, SplitRows], failures: dict[str, str]) -> str:
    """A hash of everything a cache holds, so that an unchanged dataset is not rewritten."""
    digest = hashlib.sha256(_json([SCHEMA_VERSION, header.fingerprint, list(header.class_names), list(header.views),
                                   header.dataset, header.data_root, header.decode, sorted(failures.items())]).encode())
    for name in sorted(splits):
        rows = splits[name]
        digest.update(_json([name, rows.paths, rows.labels, rows.sha256, rows.skipped]).encode())
    return digest.hexdigest()


def write_cache(path: Path, header: CacheHeader, splits: dict[str, SplitRows], known: Known,
                failures: dict[str, str], chunk_rows: int = READ_ROWS, release: Callable[[], None] | None = None) -> None:
    """Write a new cache to a temporary file, streaming rows from ``known`` in blocks of ``chunk_rows``,
    checksum every dataset, and rename it into place. ``release`` is called just before the rename (close
    the old cache there: Windows renames nothing over an open file)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h5:
            for name, rows in splits.items():
                _write_split(h5.create_group(name), rows, header.views, known, chunk_rows)
            group = h5.create_group(FAILURES)
            _dataset(group, "sha256", np.array(sorted(failures), dtype="S64"))
            _dataset(group, "reasons", np.array([failures[k] for k in sorted(failures)], dtype=object), STR)
            h5.attrs.update(header.to_attrs(list(splits)))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if release is not None:
            release()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _dataset(group: h5py.Group, name: str, data: np.ndarray, dtype: Any = None) -> None:
    fixed = data.dtype.kind != "O" and len(data) > 0
    ds = group.create_dataset(name, data=data, dtype=dtype, chunks=True if fixed else None, fletcher32=fixed)
    ds.attrs[CHECKSUM] = Checksum().update(data).hexdigest()


def _write_split(group: h5py.Group, rows: SplitRows, views: Sequence[str], known: Known, chunk_rows: int) -> None:
    n = len(rows.paths)
    for view in views:
        dim = _dim(known, view)
        chunked = n > 0 and dim > 0
        ds = group.create_dataset(view, shape=(n, dim), dtype="<f4", fletcher32=chunked,
                                  chunks=(min(n, 256), dim) if chunked else None)
        digest = Checksum()
        for start in range(0, n, chunk_rows):
            block = _gather(known, rows.sha256[start : start + chunk_rows], view, dim)
            if not np.isfinite(block).all():
                raise ClothprobeError(f"Refusing to write non-finite embeddings into {group.file.filename}.")
            ds[start : start + len(block)] = block
            digest.update(block)
        ds.attrs[CHECKSUM] = digest.hexdigest()
    _dataset(group, "paths", np.array(rows.paths, dtype=object), STR)
    _dataset(group, "labels", np.array(rows.labels, dtype="<i4"))
    _dataset(group, "sha256", np.array(rows.sha256, dtype="S64"))
    _dataset(group, "skipped_paths", np.array([p for p, _ in rows.skipped], dtype=object), STR)
    _dataset(group, "skipped_reasons", np.array([r for _, r in rows.skipped], dtype=object), STR)


def _dim(known: Known, view: str) -> int:
    return next((source.dim(view) for source, _ in known.values()), 0)


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


def write_arrays(path: Path, header: CacheHeader, splits: dict[str, SplitFeatures],
                 failures: dict[str, str] | None = None) -> None:
    """Write in-memory features as a cache (the same schema), e.g. synthetic caches for tests."""
    views = ("embeddings", "flip") if all(s.flip is not None for s in splits.values()) else ("embeddings",)
    known: Known = {}
    rows = {}
    for name, s in splits.items():
        source = ArraySource({"embeddings": s.embeddings, "flip": s.flip})
        for row, sha in enumerate(s.sha256):
            known[str(sha)] = (source, row)
        rows[name] = SplitRows(paths=list(s.paths), labels=[int(v) for v in s.labels],
                               sha256=[str(v) for v in s.sha256], skipped=list(s.skipped))
    header = replace(header, views=views)
    header = replace(header, content_digest=content_digest(header, rows, failures or {}))
    write_cache(path, header, rows, known, failures or {})
