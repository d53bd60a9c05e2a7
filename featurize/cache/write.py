"""Writing a cache: one writer at a time (an OS lock), streamed into a temporary file, every dataset
checksummed, renamed into place; temporaries of killed writers removed."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clothprobe._util.files import atomic_path, stale_by_pid, temporaries_glob
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import ArraySource, Known, RowSource, SplitFeatures
from clothprobe.featurize.cache.schema import (
    CHECKSUM,
    FAILURES,
    READ_ROWS,
    SCHEMA_VERSION,
    STR,
    CacheHeader,
    Checksum,
    canonical_json,
)
from clothprobe.featurize.embed import FLIPPED, ORIGINAL, view_names
from clothprobe.featurize.model.taps import tap_dtype, tap_layout, tap_names


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
        remove_stale(cache_path.parent, temporaries_glob(cache_path))
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
    groups: list[str] | None = None  # each row's group: a table dataset with a group column only


def content_digest(header: CacheHeader, splits: dict[str, SplitRows], failures: dict[str, str]) -> str:
    """A hash of everything a cache holds, so that an unchanged dataset is not rewritten."""
    digest = hashlib.sha256(canonical_json([SCHEMA_VERSION, header.fingerprint, list(header.class_names), list(header.views),
                                   header.dataset, header.data_root, header.decode, sorted(failures.items()),
                                   header.data_fingerprint]).encode())
    if header.table:  # a table dataset's record and groups; a folder dataset's digest is as before
        digest.update(canonical_json(["table", header.table]).encode())
    for name in sorted(splits):
        rows = splits[name]
        digest.update(canonical_json([name, rows.paths, rows.labels, rows.sha256, rows.skipped]).encode())
        if rows.groups is not None:
            digest.update(canonical_json(["groups", rows.groups]).encode())
    return digest.hexdigest()


def write_cache(path: Path, header: CacheHeader, splits: dict[str, SplitRows], known: Known,
                failures: dict[str, str], chunk_rows: int = READ_ROWS, release: Callable[[], None] | None = None) -> None:
    """Write a new cache to a temporary file, streaming rows from ``known`` in blocks of ``chunk_rows``,
    checksum every dataset, and rename it into place. ``release`` is called just before the rename (close
    the old cache there: Windows renames nothing over an open file)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            for name, rows in splits.items():
                _write_split(h5.create_group(name), rows, header, known, chunk_rows)
            group = h5.create_group(FAILURES)
            _dataset(group, "sha256", np.array(sorted(failures), dtype="S64"))
            _dataset(group, "reasons", np.array([failures[k] for k in sorted(failures)], dtype=object), STR)
            h5.attrs.update(header.to_attrs(list(splits)))
        if release is not None:
            release()


def _dataset(group: h5py.Group, name: str, data: np.ndarray, dtype: Any = None) -> None:
    fixed = data.dtype.kind != "O" and len(data) > 0
    ds = group.create_dataset(name, data=data, dtype=dtype, chunks=True if fixed else None, fletcher32=fixed)
    ds.attrs[CHECKSUM] = Checksum().update(data).hexdigest()


def _write_split(group: h5py.Group, rows: SplitRows, header: CacheHeader, known: Known, chunk_rows: int) -> None:
    n = len(rows.paths)
    for view in header.views:
        dim = _dim(known, view)
        layout = tap_layout(header.recipe, dim) if dim else [(name, 0) for name in tap_names(header.recipe)]
        taps = group.create_group(view)
        parts = [_tap_dataset(taps, name, n, width, tap_dtype(header.recipe, name)) for name, width in layout]
        digests = [Checksum() for _ in layout]
        for start in range(0, n, chunk_rows):
            block = _gather(known, rows.sha256[start : start + chunk_rows], view, dim)
            column = 0
            for ds, digest, (_, width) in zip(parts, digests, layout):
                values = block[:, column : column + width].astype(ds.dtype, copy=False)  # round_taps made them exact
                if not np.isfinite(values).all():
                    raise ClothprobeError(f"Refusing to write non-finite embeddings into {group.file.filename}.")
                ds[start : start + len(block)] = values
                digest.update(values)
                column += width
        for ds, digest in zip(parts, digests):
            ds.attrs[CHECKSUM] = digest.hexdigest()
    _dataset(group, "paths", np.array(rows.paths, dtype=object), STR)
    _dataset(group, "labels", np.array(rows.labels, dtype="<i4"))
    _dataset(group, "sha256", np.array(rows.sha256, dtype="S64"))
    if rows.groups is not None:
        _dataset(group, "groups", np.array(rows.groups, dtype=object), STR)
    _dataset(group, "skipped_paths", np.array([p for p, _ in rows.skipped], dtype=object), STR)
    _dataset(group, "skipped_reasons", np.array([r for _, r in rows.skipped], dtype=object), STR)


def _tap_dataset(group: h5py.Group, name: str, n: int, width: int, dtype: str) -> h5py.Dataset:
    chunked = n > 0 and width > 0
    return group.create_dataset(name, shape=(n, width), dtype=dtype, fletcher32=chunked,
                                chunks=(min(n, 256), width) if chunked else None)


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
    views = view_names(flip=all(s.flip is not None for s in splits.values()))
    known: Known = {}
    rows = {}
    for name, s in splits.items():
        source = ArraySource({ORIGINAL: s.embeddings, FLIPPED: s.flip})
        for row, sha in enumerate(s.sha256):
            known[str(sha)] = (source, row)
        rows[name] = SplitRows(paths=list(s.paths), labels=[int(v) for v in s.labels],
                               sha256=[str(v) for v in s.sha256], skipped=list(s.skipped),
                               groups=None if s.groups is None else [str(v) for v in s.groups])
    header = replace(header, views=views)
    header = replace(header, content_digest=content_digest(header, rows, failures or {}))
    write_cache(path, header, rows, known, failures or {})
