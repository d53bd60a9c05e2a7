"""Synthetic feature caches for the fit tests, written with the featurize schema module (no model run)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from clothprobe.featurize.cache.read import SplitFeatures, load_features
from clothprobe.featurize.cache.schema import CacheHeader, default_path
from clothprobe.featurize.cache.write import write_arrays
from clothprobe.featurize.model.backbones import get_backbone
from clothprobe.featurize.model.recipe import Recipe

CLASSES = ["dress", "hat", "t-shirt"]
SIZES = {"train": (40, 10, 12), "validation": (14, 5, 6), "test": (14, 5, 6)}  # t-shirt-like imbalance


def recipe(backbone: str, dim: int) -> Recipe:
    """The registry backbone's recipe (so ``reproduce`` accepts it) with made-up weights and a 32 px input."""
    entry = get_backbone(backbone)
    return Recipe(backbone=backbone, source="keras-applications", model=entry.constructor, input_size=32,
                  resize="pil-bilinear", preprocess=entry.preprocess, pooling="avg", layout="NHWC", output="",
                  runtime="keras", precision="float32", weights_sha256=f"synthetic-{backbone}-{dim}")


def make_cache(features_dir: Path, backbone: str = "xception", dim: int = 16, seed: int = 0,
               dataset: str = "clothes", splits: dict = SIZES, shuffle_rows: bool = False,
               separation: float = 1.5, images: Path | None = None, stand_ins: Path | None = None) -> Path:
    """Blobs around a per-class centre (same centres for every backbone of the same seed), with a flip view.

    ``images``: also write a tiny image for every row there and record it as the cache's data root.
    ``stand_ins``: instead, write a stand-in file for every row there whose bytes are its path, so that its content
    hash is the row's, and put the cache where ``fit --unknown`` keeps that folder's: a folder it finds embedded
    already (no model runs)."""
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
    if stand_ins is not None:
        from clothprobe.classifiers.rejection import unknown_cache_path

        path = unknown_cache_path(features_dir, stand_ins.resolve(), backbone)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images is not None:
        from conftest import make_image

        for k, rel in enumerate(p for s in arrays.values() for p in s.paths):
            make_image(images / rel, seed=k)
    if stand_ins is not None:
        for rel in (p for s in arrays.values() for p in s.paths):
            (stand_ins / rel).parent.mkdir(parents=True, exist_ok=True)
            (stand_ins / rel).write_bytes(rel.encode())
    root = images if images is not None else stand_ins
    header = CacheHeader(recipe=recipe(backbone, dim), class_names=tuple(CLASSES), dataset=dataset, views=(),
                         data_root=str(root.resolve()) if root is not None else "")
    write_arrays(path, header, arrays)
    return path


TAPS = ("block3_pool", "block5_pool")  # 256 + 512 columns: two candidate tap sets (final, and both)


def make_tapped_cache(features_dir: Path, seed: int = 0, dataset: str = "clothes") -> Path:
    """A cache of VGG16 with two taps and the flipped view: the blobs of ``make_cache``, seen through a seeded
    random projection into each tap's columns with noise of its own (the final tap the clearer one)."""
    rng = np.random.default_rng(seed)
    path = make_cache(features_dir, backbone="vgg16", dim=16, seed=seed, dataset=dataset)
    cache = load_features(path)
    widths, noise = (256, 512), (2.0, 0.5)
    project = [rng.normal(0, 1 / 4, size=(16, w)) for w in widths]

    def tapped(X: np.ndarray, draw: np.random.Generator) -> np.ndarray:
        return np.hstack([X @ p + draw.normal(0, s, size=(len(X), p.shape[1])) for p, s in zip(project, noise)]
                         ).astype(np.float32)

    splits = {name: replace(s, embeddings=tapped(s.embeddings, rng), flip=tapped(s.flip, rng))
              for name, s in cache.splits.items()}
    header = replace(cache.header, recipe=replace(recipe("vgg16", 16), taps=TAPS))
    path.unlink()
    write_arrays(path, header, splits)
    return path
