"""Reading a cache back: whole or a subset of its taps (``load_features``, for fit) or opened for reuse by an
incremental update (``ExistingCache``: every checksum verified, streamed, and each row's embedding readable by
content hash)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.schema import (
    FAILURES,
    READ_ERRORS,
    READABLE_VERSIONS,
    CacheHeader,
    CacheInfo,
    as_strings,
    damage_reason,
    datasets,
    probe,
    read_verified,
    refusal,
    verify_streamed,
    view_datasets,
)
from clothprobe.featurize.embed import FLIPPED, ORIGINAL
from clothprobe.featurize.model.recipe import Recipe
from clothprobe.featurize.model.taps import ALL, FINAL, tap_names


@dataclass
class SplitFeatures:
    """One split read back: rows of every array are aligned."""

    embeddings: np.ndarray
    labels: np.ndarray
    paths: np.ndarray
    sha256: np.ndarray
    flip: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: np.ndarray | None = None  # each row's group (a table dataset with a group column), else None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureCache:
    """A cache in memory, as ``fit`` uses it: ``taps`` ``(name, columns)`` of what was read, in column order
    (every tap the cache holds, or the subset asked for); ``available`` every tap the cache holds."""

    path: Path
    header: CacheHeader
    splits: dict[str, SplitFeatures]
    taps: tuple[tuple[str, int], ...] = ()
    available: tuple[str, ...] = ()
    size_bytes: int = 0

    @property
    def megabytes(self) -> float:
        return self.size_bytes / 1e6

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
                         featurize_seconds=per_image * n if per_image > 0 else None,
                         taps=tuple(name for name, _ in self.taps), table=dict(self.header.table),
                         calibration_photos=self.header.calibration_photos)

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``, one row per image (see ``featurize/cache/export.py``)."""
        from clothprobe.featurize.cache.export import to_arrow

        return to_arrow(self)

    def to_dataframe(self) -> Any:
        """A pandas DataFrame of ``to_arrow()``: each ``embedding`` cell is a float32 numpy array;
        ``np.stack(df["embedding"])`` is the (n, d) matrix again."""
        from clothprobe.featurize.cache.export import to_dataframe

        return to_dataframe(self)

    def to_parquet(self, path: str | Path) -> Path:
        """Write ``to_arrow()`` as Parquet, atomically. An existing file is replaced only if it is Parquet."""
        from clothprobe.featurize.cache.export import to_parquet

        return to_parquet(self, path)


def load_features(path: str | Path, hint: str = "", taps: str | Sequence[str] | None = None) -> FeatureCache:
    """Read a cache back, every checksum verified (``hint`` is appended to errors). ``taps``: every tap the
    cache holds (None, ``all``), ``final`` (its last) or names, in the cache's order; a tap it lacks is an
    error naming those it has."""
    path = Path(path)
    found = probe(path)
    if found.kind != "cache" and not (found.kind == "other-schema" and found.version in READABLE_VERSIONS):
        why = {"missing": f"No feature cache at {path}.", "folder": f"{path} is a folder, not a feature cache."}
        raise ClothprobeError((why.get(found.kind) or refusal(path, found, rebuild=False) or "") + hint)
    try:
        with h5py.File(path, "r") as h5:
            header, names = CacheHeader.from_attrs(dict(h5.attrs.items()))
            available = tap_names(header.recipe)
            wanted = _wanted_taps(path, available, taps)
            splits = {name: _read_split(h5[name], header.views, available, wanted) for name in names}
            widths = _tap_widths(h5, names, available)
            _read_failures(h5)
    except READ_ERRORS as err:
        raise ClothprobeError(f"Feature cache {path} is damaged ({damage_reason(err)}); run cli featurize again to "
                              f"rebuild it.{hint}") from None
    return FeatureCache(path=path, header=header, splits=splits, taps=tuple((t, widths[t]) for t in wanted),
                        available=available, size_bytes=path.stat().st_size)


def _wanted_taps(path: Path, available: tuple[str, ...], taps: str | Sequence[str] | None) -> tuple[str, ...]:
    if taps is None or taps == ALL:
        return available
    asked = [t.strip() for t in (taps.split(",") if isinstance(taps, str) else taps) if t.strip()]
    asked = [available[-1] if t == FINAL else t for t in asked]
    missing = [t for t in asked if t not in available]
    if missing or not asked:
        raise ClothprobeError(f"{path} has no tap {', '.join(missing) or repr(taps)}; it holds: "
                              f"{', '.join(available)} (featurize again with --taps all for every tap).")
    return tuple(t for t in available if t in asked)


def _tap_widths(h5: h5py.File, splits: Sequence[str], available: Sequence[str]) -> dict[str, int]:
    if not splits:
        return {t: 0 for t in available}
    parts = view_datasets(h5[splits[0]], ORIGINAL, available)
    return dict(zip(available, (int(ds.shape[1]) for ds in parts)))


def _read_view(group: h5py.Group, view: str, available: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
    parts = view_datasets(group, view, available)
    chosen = [read_verified(ds) for name, ds in zip(available, parts) if name in wanted]
    return (chosen[0] if len(chosen) == 1 else np.hstack(chosen)).astype(np.float32, copy=False)  # float16 taps


def _read_split(group: h5py.Group, views: Sequence[str], available: Sequence[str], wanted: Sequence[str]) -> SplitFeatures:
    return SplitFeatures(
        embeddings=_read_view(group, ORIGINAL, available, wanted),
        labels=read_verified(group["labels"]).astype(np.int64),
        paths=as_strings(read_verified(group["paths"])),
        sha256=as_strings(read_verified(group["sha256"])),
        flip=_read_view(group, FLIPPED, available, wanted) if FLIPPED in views else None,
        skipped=list(zip(as_strings(read_verified(group["skipped_paths"])), as_strings(read_verified(group["skipped_reasons"])))),
        groups=as_strings(read_verified(group["groups"])) if "groups" in group else None,
    )


def _read_failures(h5: h5py.File) -> dict[str, str]:
    group = h5[FAILURES]
    return dict(zip(as_strings(read_verified(group["sha256"])), as_strings(read_verified(group["reasons"]))))


# ---------------------------------------------------------------------------------------------------
# Row sources for an incremental update: where an already-computed embedding can be read from.


class RowSource:
    """Rows of embeddings, readable by view."""

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:  # rows: sorted, unique
        raise NotImplementedError

    def dim(self, view: str) -> int:
        raise NotImplementedError


class _H5Source(RowSource):
    """Rows of a split of an existing cache: each view's taps side by side, in the recipe's order."""

    def __init__(self, group: h5py.Group, taps: Sequence[str]) -> None:
        self.group, self.taps = group, list(taps)

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        first, last = int(rows[0]), int(rows[-1])
        parts = view_datasets(self.group, view, self.taps)
        if last - first < 4 * len(rows):  # mostly contiguous: one slice read beats HDF5's point selection
            return np.hstack([ds[first : last + 1][rows - first] for ds in parts]).astype(np.float32, copy=False)
        return np.hstack([ds[rows] for ds in parts]).astype(np.float32, copy=False)

    def dim(self, view: str) -> int:
        return sum(int(ds.shape[1]) for ds in view_datasets(self.group, view, self.taps))


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
                for ds in datasets(self.h5[name]):
                    verify_streamed(ds)
        except READ_ERRORS as err:
            self.damage = damage_reason(err)
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
        return {p for name in self._splits for p in as_strings(self.h5[name]["paths"][()])}

    def known(self, views: Sequence[str]) -> Known:
        """content hash -> (source, row) for every row, if the cache has all of ``views``."""
        out: Known = {}
        if self.h5 is None or not set(views) <= set(self.header.views):
            return out
        for name in self._splits:
            source = _H5Source(self.h5[name], tap_names(self.header.recipe))
            for row, sha in enumerate(as_strings(self.h5[name]["sha256"][()])):
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

