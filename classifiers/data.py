"""Features for fitting: one backbone's cache, or several joined side by side by image path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import FeatureCache, load_features
from clothprobe.featurize.cache.schema import CacheInfo
from clothprobe.featurize.catalog import find_cache
from clothprobe.featurize.model.backbones import get_backbone
from clothprobe.featurize.model.recipe import FILE_PREFIXES


@dataclass
class SplitData:
    """Rows aligned across ``X``, ``X_flip`` (None without a flipped view), ``y`` and ``paths``."""

    X: np.ndarray
    y: np.ndarray
    paths: np.ndarray
    X_flip: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TapBlock:
    """A run of columns: one tap of one backbone's cache."""

    backbone: str
    tap: str
    width: int


@dataclass
class FeatureSet:
    backbones: list[str]
    class_names: list[str]
    splits: dict[str, SplitData]
    caches: dict[str, dict]  # backbone -> what a run's manifest records of its cache (featurize's CacheInfo)
    dataset: str = ""
    blocks: list[TapBlock] = field(default_factory=list)  # the columns of X, in order

    def taps_held(self) -> dict[str, tuple[str, ...]]:
        """backbone -> its taps in the columns, in order."""
        return {b: tuple(k.tap for k in self.blocks if k.backbone == b) for b in self.backbones}

    def block_columns(self, i: int) -> np.ndarray:
        start = sum(k.width for k in self.blocks[:i])
        return np.arange(start, start + self.blocks[i].width)

    @property
    def column_scale(self) -> np.ndarray | None:
        """What each standardized column is divided by so that every tap carries the same total variance,
        ``columns / taps`` (None with one tap): ``sqrt(width * taps / columns)``. The whole input keeps the
        variance plain standardization gives it, so the heads' regularization grids mean what they did
        (``classifiers/taps.py``)."""
        if len(self.blocks) < 2:
            return None
        total, n = sum(k.width for k in self.blocks), len(self.blocks)
        return np.concatenate([np.full(k.width, np.sqrt(k.width * n / total)) for k in self.blocks])

    @property
    def name(self) -> str:
        return "+".join(self.backbones)

    @property
    def data_root(self) -> str | None:
        """The image folder the caches were made from (the first that recorded one)."""
        return next((root for c in self.caches.values() if (root := CacheInfo.from_dict(c).data_root)), None)

    @property
    def featurize_seconds(self) -> float | None:
        """Model time to embed the whole dataset with every backbone used, when the caches recorded it."""
        seconds = [CacheInfo.from_dict(c).featurize_seconds for c in self.caches.values()]
        return None if None in seconds else float(sum(seconds))

    @property
    def has_flip(self) -> bool:
        return all(s.X_flip is not None for s in self.splits.values())


def cache_backbone(name: str) -> str:
    """The backbone a cache records for ``name``: a registry name, or ``onnx:``/``keras:`` and the model file's name
    (``onnx:models/net.onnx`` -> ``onnx:net.onnx``, as featurize writes it; the file need not be here)."""
    prefix = next((p for p in FILE_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        return get_backbone(name).name
    file_name = PurePath(name[len(prefix):]).name
    if not file_name:
        raise ClothprobeError(f"Backbone {name!r} names no model file; give {prefix}PATH as featurize was given it.")
    return prefix + file_name


def parse_backbones(spec: str) -> list[str]:
    """``"vgg16+xception"`` -> validated backbone names as caches record them, in the order given."""
    names = [cache_backbone(part.strip()) for part in spec.split("+") if part.strip()]
    if not names or len(set(names)) != len(names):
        raise ClothprobeError(f"Backbone list {spec!r} must name each backbone once, e.g. vgg16+xception.")
    return names


def _load(features_dir: str | Path, backbone: str, dataset: str, data: str | Path | None) -> FeatureCache:
    hint = f" Make it with: cli featurize --backbone {backbone} --data DIR/{dataset} --tta flip"
    return load_features(find_cache(features_dir, dataset, backbone, data), hint=hint)


def load_feature_set(backbones: str, dataset: str, features_dir: str | Path = "features",
                     data: str | Path | None = None) -> FeatureSet:
    """Load the cache of each backbone for ``dataset`` (``features_dir/dataset/<backbone>.h5``, or where the
    catalog says ``featurize --out`` wrote it), every tap it holds; several are joined by image path. ``data``:
    the dataset's folder, whose photos every cache must hold (``featurize/cache/identity.py``)."""
    names = parse_backbones(backbones)
    return join_caches(names, [_load(features_dir, n, dataset, data) for n in names], dataset)


def join_caches(names: list[str], caches: list[FeatureCache], dataset: str) -> FeatureSet:
    """The caches of backbones ``names`` (the same photos), side by side by image path."""
    blocks = [TapBlock(n, tap, width) for n, c in zip(names, caches) for tap, width in c.taps]
    first = caches[0]
    for other in caches[1:]:
        if other.class_names != first.class_names:
            raise ClothprobeError(
                f"{other.path} has classes {other.class_names} but {first.path} has {first.class_names}; "
                f"featurize both from the same dataset."
            )
        if set(other.splits) != set(first.splits):
            raise ClothprobeError(f"{other.path} and {first.path} hold different splits; featurize both again.")
    splits = {}
    for split, base in first.splits.items():
        order = {p: i for i, p in enumerate(base.paths)}
        X, X_flip = [], []
        for cache in caches:
            part = cache.split(split)
            if len(part) != len(base) or set(part.paths) != set(order):
                missing = sorted(set(order) ^ set(part.paths))[:3]
                raise ClothprobeError(
                    f"{cache.path} and {first.path} do not hold the same {split} images "
                    f"(for example {', '.join(missing)}); run cli featurize for both on the same folder."
                )
            rows = np.argsort([order[p] for p in part.paths])  # this cache's rows in the first cache's order
            X.append(part.embeddings[rows])
            X_flip.append(None if part.flip is None else part.flip[rows])
        splits[split] = SplitData(
            X=np.hstack(X),
            y=base.labels,
            paths=base.paths,
            X_flip=None if any(f is None for f in X_flip) else np.hstack(X_flip),
        )
    return FeatureSet(
        backbones=names,
        class_names=first.class_names,
        splits=splits,
        caches={n: c.info().to_dict() for n, c in zip(names, caches)},
        dataset=dataset,
        blocks=blocks,
    )
