"""Synthetic feature caches for the fit tests, written with the featurize schema module (no model run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from clothprobe.featurize.cache.read import SplitFeatures
from clothprobe.featurize.cache.schema import CacheHeader, default_path
from clothprobe.featurize.cache.write import write_arrays
from clothprobe.featurize.model.backbones import TF
from clothprobe.featurize.model.recipe import Recipe

CLASSES = ["dress", "hat", "t-shirt"]
SIZES = {"train": (40, 10, 12), "validation": (14, 5, 6), "test": (14, 5, 6)}  # t-shirt-like imbalance


def recipe(backbone: str, dim: int) -> Recipe:
    return Recipe(backbone=backbone, source="keras-applications", model=backbone, input_size=32,
                  resize="pil-bilinear", preprocess=TF, pooling="avg", layout="NHWC", output="", runtime="keras",
                  precision="float32", weights_sha256=f"synthetic-{backbone}-{dim}")


def make_cache(features_dir: Path, backbone: str = "xception", dim: int = 16, seed: int = 0,
               dataset: str = "clothes", splits: dict = SIZES, shuffle_rows: bool = False,
               separation: float = 1.5, images: Path | None = None) -> Path:
    """Blobs around a per-class centre (same centres for every backbone of the same seed), with a flip view.

    ``images``: also write a tiny image for every row there and record it as the cache's data root."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation, size=(len(CLASSES), dim))
    arrays = {}
    for split, sizes in splits.items():
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
        X = centres[labels] + rng.normal(0, 1, size=(len(labels), dim))
        paths = np.array([f"{split}/{CLASSES[c]}/{i}.jpg" for i, c in enumerate(labels)], dtype=object)
        order = rng.permutation(len(labels)) if shuffle_rows else np.arange(len(labels))
        sha = np.array([hashlib.sha256(p.encode()).hexdigest() for p in paths], dtype=object)
        arrays[split] = SplitFeatures(
            embeddings=X[order].astype(np.float32), labels=labels[order], paths=paths[order], sha256=sha[order],
            flip=(X[order] + rng.normal(0, 0.3, size=X.shape)).astype(np.float32),
        )
    path = default_path(features_dir, dataset, backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images is not None:
        from conftest import make_image

        for k, rel in enumerate(p for s in arrays.values() for p in s.paths):
            make_image(images / rel, seed=k)
    header = CacheHeader(recipe=recipe(backbone, dim), class_names=tuple(CLASSES), dataset=dataset, views=(),
                         data_root=str(images.resolve()) if images is not None else "")
    write_arrays(path, header, arrays)
    return path
