"""The embedding cache's schema: the one module that knows what a cache file is.

Layout of ``features/<dataset>/<backbone>.h5`` (schema version 3)::

    /                 attrs: format ("clothprobe-embedding-cache"), schema_version (3), recipe (JSON: the
                             embedding recipe, featurize/model/recipe.py), fingerprint (the recipe's), class_names,
                             splits, views (JSON lists), dataset, data_root, seconds_per_image, decode (JSON:
                             the decoder settings the remembered failures hold for), versions (JSON),
                             created, content_digest, data_fingerprint (the dataset's photos, identity.py;
                             written since 2026-12-07, absent before), calibration_photos (int8: JSON [path,
                             sha256] of each photo that calibrated the network, in order), header_checksum
                             (SHA-256 of all the others);
                             table (JSON, only for a dataset read from a labels table: how it was read and
                             split, featurize/table.py's TableRecord; absent otherwise, and in older caches)
    /<split>/embeddings/<tap>   float32 (n, d_tap)   pooled output of each tap the recipe embeds
                                 (featurize/model/taps.py; one tap, named after the final layer, by default);
                                 float16 for every tap but the final layer (``taps.tap_dtype``; written since
                                 2026-12-06, float32 before): readers return float32
    /<split>/flip/<tap>         float32 (n, d_tap)   same, of the horizontally flipped image (--tta flip)
    /<split>/paths        utf-8 (n,)       path relative to the dataset root; rows are aligned with it
    /<split>/labels       int32 (n,)       index into class_names
    /<split>/sha256       ascii (n,)       content hash of the image file
    /<split>/groups       utf-8 (n,)       each photo's group (a table dataset with a group column only)
    /<split>/skipped_paths, /<split>/skipped_reasons   utf-8   files that could not be used, and why
    /failures/sha256, /failures/reasons               contents that could not be decoded, not retried

Integrity: every dataset carries a ``checksum`` attribute (SHA-256 of its values, numbers as
little-endian bytes, strings length-prefixed UTF-8) that is verified on every read, the reuse path
included (streamed in blocks of rows, so memory stays bounded); fixed-size datasets are also chunked
with HDF5's fletcher32 filter. Embeddings must be finite. A damaged cache is reported and rebuilt.

Version 2 (one ``/<split>/embeddings`` dataset, the final layer) is still read, as one tap; featurize
replaces it only with ``--rebuild``.

Ours or not: a file is a clothprobe cache when it opens as HDF5 and its root attributes say so
(``format``, or schema version 1's ``schema_version`` + ``fingerprint`` + ``backbone``). Anything else
(not HDF5, another program's HDF5, a folder) is never replaced; a damaged clothprobe cache is; a cache of
another schema version only with ``rebuild``.

Safety: a writer holds ``<cache>.lock`` (an OS lock through ``filelock``, released even when the process
is killed), writes ``<cache>.tmp-<pid>`` and renames it into place, so a killed run leaves the previous
cache intact; temporaries of dead processes are removed by the next writer (``write.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from clothprobe._util.files import kind_of
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import view_names
from clothprobe.featurize.model.recipe import Recipe

FORMAT = "clothprobe-embedding-cache"
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: one dataset per view, the final layer only
VIEWS = view_names(flip=True)  # the original view and the horizontally flipped one
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
    data_fingerprint: str = ""  # the dataset folder's photos (identity.py); "" in caches written before it
    # int8: (absolute path, sha256) of each photo that calibrated the quantized network, in the order it saw them,
    # so the network can be made again where the model store lacks it (a new machine); () otherwise
    calibration_photos: tuple[tuple[str, str], ...] = ()
    table: dict[str, Any] = field(default_factory=dict)  # a table dataset's TableRecord.to_dict(); {}: folders

    @property
    def fingerprint(self) -> str:
        return self.recipe.fingerprint

    def to_attrs(self, splits: Sequence[str]) -> dict[str, Any]:
        attrs = {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": self.fingerprint,
            "recipe": canonical_json(self.recipe.to_dict()), "class_names": canonical_json(list(self.class_names)),
            "splits": canonical_json(list(splits)), "views": canonical_json(list(self.views)), "dataset": self.dataset,
            "data_root": self.data_root, "seconds_per_image": float(self.seconds_per_image),
            "decode": canonical_json(self.decode), "versions": canonical_json(self.versions), "created": self.created,
            "content_digest": self.content_digest, "data_fingerprint": self.data_fingerprint,
        }
        if self.calibration_photos:  # absent from caches made before it was recorded, and from float caches
            attrs["calibration_photos"] = canonical_json([list(p) for p in self.calibration_photos])
        if self.table:  # written only for table datasets: a folder dataset's cache is as before
            attrs["table"] = canonical_json(self.table)
        return {**attrs, "header_checksum": _header_checksum(attrs)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> tuple[CacheHeader, list[str]]:
        """The header and the split names; CacheDamaged when the attributes were altered or are incomplete."""
        attrs = {k: attr_value(v) for k, v in attrs.items()}
        if attrs.get("header_checksum") != _header_checksum({k: v for k, v in attrs.items() if k != "header_checksum"}):
            raise CacheDamaged("its root attributes do not match their checksum")
        try:
            recipe = Recipe.from_dict(json.loads(attrs["recipe"]))
            header = cls(recipe=recipe, class_names=tuple(json.loads(attrs["class_names"])),
                         dataset=str(attrs["dataset"]), views=tuple(json.loads(attrs["views"])),
                         data_root=str(attrs["data_root"]), seconds_per_image=float(attrs["seconds_per_image"]),
                         decode=json.loads(attrs["decode"]), versions=json.loads(attrs["versions"]),
                         created=str(attrs["created"]), content_digest=str(attrs["content_digest"]),
                         data_fingerprint=str(attrs.get("data_fingerprint", "")),
                         calibration_photos=calibration_photos(json.loads(attrs.get("calibration_photos", "[]"))),
                         table=_json_object(attrs.get("table", "{}")))
            return header, list(json.loads(attrs["splits"]))
        except (KeyError, TypeError, ValueError, ClothprobeError) as err:
            raise CacheDamaged(f"its root attributes are incomplete ({err})") from None


def calibration_photos(value: Any) -> tuple[tuple[str, str], ...]:
    """A record of calibration photos as read back (a cache's attribute, a run manifest's entry): a list of
    ``[path, sha256]`` pairs, checked; a ValueError for anything else."""
    if not isinstance(value, list):
        raise ValueError(f"calibration_photos should be a list of [path, sha256] pairs, got {type(value).__name__}")
    pairs = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, str) for v in item)
                or not re.fullmatch(r"[0-9a-f]{64}", item[1])):
            raise ValueError(f"calibration_photos holds {str(item)[:80]!r}, not a [path, sha256] pair")
        pairs.append((item[0], item[1]))
    return tuple(pairs)


def _json_object(text: Any) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _header_checksum(attrs: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(attrs).encode()).hexdigest()


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
    taps: tuple[str, ...] = ()  # the taps used (a subset of the recipe's, in its order); () = all of them
    calibration_photos: tuple[tuple[str, str], ...] = ()  # the cache's record (CacheHeader), for predict
    table: dict[str, Any] = field(default_factory=dict)  # the cache's table record ({}: a folder dataset)

    def tap_columns(self) -> np.ndarray | None:
        """The columns of the taps used, in an embedding made with ``recipe`` (the cache's own network, so new
        images are embedded by the very model in the store that made the cache); None: every column."""
        from clothprobe.featurize.model.taps import tap_widths

        if not self.taps or tuple(self.taps) == tuple(self.recipe.taps) or not self.recipe.taps:
            return None
        layout = tap_widths(self.recipe)
        starts = np.cumsum([0, *(width for _, width in layout)])
        return np.concatenate([np.arange(starts[i], starts[i + 1]) for i, (name, _) in enumerate(layout)
                               if name in self.taps])

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "fingerprint": self.fingerprint, "recipe": self.recipe.to_dict(),
                "views": list(self.views), "data_root": self.data_root, "images": self.images,
                "featurize_seconds": self.featurize_seconds, "taps": list(self.taps),
                "calibration_photos": [list(p) for p in self.calibration_photos],
                **({"table": self.table} if self.table else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheInfo:
        """The record ``to_dict`` wrote; a ClothprobeError (not a KeyError) for anything else."""
        try:
            seconds = d["featurize_seconds"]
            return cls(path=str(d["path"]), fingerprint=str(d["fingerprint"]), recipe=Recipe.from_dict(d["recipe"]),
                       views=tuple(d["views"]), data_root=d["data_root"], images=int(d["images"]),
                       featurize_seconds=None if seconds is None else float(seconds),
                       taps=tuple(str(t) for t in d.get("taps", ())), table=dict(d.get("table", {})),
                       calibration_photos=calibration_photos(d.get("calibration_photos", [])))
        except (KeyError, TypeError, ValueError, AttributeError, ClothprobeError) as err:
            raise ClothprobeError(f"not a cache record this clothprobe can read ({err})") from None



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
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):  # never opened: a FIFO would hang HDF5's open
            return Found("foreign", detail=f"not a regular file but {kind_of(path, mode)}")
        if not h5py.is_hdf5(path):
            return Found("foreign", detail="not an HDF5 file")
        with h5py.File(path, "r") as h5:
            attrs = dict(h5.attrs.items())
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        return Found("foreign", detail=f"an HDF5 file whose attributes cannot be read: {err}")
    version = attr_value(attrs.get("schema_version"))
    if attr_value(attrs.get("format")) == FORMAT:
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


def read_header(path: Path) -> CacheHeader | None:
    """The header of the clothprobe cache at ``path`` (root attributes only), or None when there is none or
    it cannot be trusted (the full read says why)."""
    if probe(path).kind not in ("cache", "other-schema"):
        return None
    try:
        with h5py.File(path, "r") as h5:
            return CacheHeader.from_attrs(dict(h5.attrs.items()))[0]
    except (CacheDamaged, OSError, RuntimeError, KeyError, ValueError):
        return None


def attr_value(value: Any) -> Any:
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


def verify_values(ds: h5py.Dataset, blocks: Iterable[np.ndarray]) -> None:
    """Raise CacheDamaged unless ``blocks`` (all of ``ds``'s values, in order) match its checksum and,
    for floats, are finite."""
    digest = Checksum()
    for block in blocks:
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise CacheDamaged(f"{ds.name} holds values that are not finite numbers")
        digest.update(block)
    if attr_value(ds.attrs.get(CHECKSUM)) != digest.hexdigest():
        raise CacheDamaged(f"{ds.name} does not match its checksum")


def verify_streamed(ds: h5py.Dataset) -> None:
    n = ds.shape[0] if ds.shape else 0
    with _naming(ds):
        verify_values(ds, (ds[start : start + READ_ROWS] for start in range(0, n, READ_ROWS)))


def read_verified(ds: h5py.Dataset) -> np.ndarray:
    with _naming(ds):
        values = ds[()]
        verify_values(ds, [values])
    return values


@contextmanager
def _naming(ds: h5py.Dataset) -> Iterator[None]:
    """HDF5's read errors (fletcher32 included) as CacheDamaged naming the dataset."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise CacheDamaged(f"{ds.name} cannot be read ({err})") from None


def datasets(group: h5py.Group) -> list[h5py.Dataset]:
    """Every dataset under ``group``, the taps of each view included."""
    found: list[h5py.Dataset] = []
    group.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def view_datasets(group: h5py.Group, view: str, names: Sequence[str]) -> list[h5py.Dataset]:
    """The per-tap datasets of ``view`` in ``group`` (a split), in the order of ``names``; a schema 2 view
    is one dataset, its only tap."""
    node = group[view]
    return [node] if isinstance(node, h5py.Dataset) else [node[name] for name in names]


def as_strings(values: np.ndarray) -> np.ndarray:
    return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in values], dtype=object)


READ_ERRORS = (CacheDamaged, OSError, RuntimeError, KeyError, ValueError, TypeError)  # what h5py raises on damage


def damage_reason(err: Exception) -> str:
    return str(err) if isinstance(err, CacheDamaged) else f"cannot be read: {type(err).__name__}: {err}"

