"""``ImageEmbedder``: image paths in, embeddings out, as a scikit-learn transformer, so clothprobe's
backbones go into a user's own ``Pipeline`` (``ImageEmbedder("xception") | LogisticRegression()``).

It embeds with the same recipe, compiled-model store and decoder as ``cli featurize``; given ``cache=`` (a
featurize cache made with the same recipe) it reads the embeddings of photos the cache already holds, by
content hash, and computes only the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from clothprobe._util.files import file_sha256
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import ORIGINAL
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS
from clothprobe.featurize.model.backbones import DEFAULT_BACKBONE
from clothprobe.featurize.model.recipe import Recipe, resolve_recipe


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Embed image files with a frozen backbone.

    ``backbone``: a registry name (``"xception"``), ``"onnx:PATH"``/``"keras:PATH"``, or a ``Recipe`` (e.g. the
    one a cache or run recorded). ``weights``, ``image_size``, ``runtime``, ``precision`` and ``seed`` are as
    for ``cli featurize`` (ignored when ``backbone`` is a recipe). ``cache``: a featurize cache to reuse.
    ``taps``: ``final`` (default), ``all`` or tap names: their pooled outputs side by side (``featurize --taps``).

    ``fit`` resolves the recipe (``recipe_``); ``transform(X)`` takes a sequence of paths and returns a
    float32 array with one row per path, or raises naming the files that cannot be decoded.
    """

    def __init__(self, backbone: str | Recipe = DEFAULT_BACKBONE, *, weights: Any = "imagenet", image_size: int | None = None,
                 runtime: str = "auto", precision: str = "auto", seed: int = 0, batch_size: int = 32,
                 max_pixels: int = DEFAULT_MAX_PIXELS, cache: str | Path | None = None, taps: str | None = None) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.runtime = runtime
        self.precision = precision
        self.seed = seed
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.cache = cache
        self.taps = taps

    def fit(self, X: Any = None, y: Any = None) -> ImageEmbedder:
        """Resolve the recipe (nothing is learned from ``X``)."""
        if isinstance(self.backbone, Recipe):
            self.recipe_ = self.backbone
        else:
            self.recipe_ = resolve_recipe(self.backbone, weights=self.weights, image_size=self.image_size,
                                          runtime=self.runtime, precision=self.precision, seed=self.seed,
                                          taps=self.taps)
        self.cache_rows_ = self._cached_rows()
        self.n_features_out_ = self._dim()
        return self

    def _cached_rows(self) -> dict[str, np.ndarray]:
        if self.cache is None:
            return {}
        from clothprobe.featurize.cache.read import load_features
        from clothprobe.featurize.model.taps import backbone_taps

        features = load_features(self.cache)
        if features.recipe != self.recipe_:
            offered = tuple(t.name for t in backbone_taps(features.recipe))
            theirs = "all" if features.recipe.taps == offered else ",".join(features.recipe.taps) or "final"
            hint = (f" ImageEmbedder(..., taps={theirs!r}) reuses it." if features.recipe.with_taps(self.recipe_.taps)
                    == self.recipe_ else "")
            raise ClothprobeError(f"{self.cache} was embedded with another recipe "
                                  f"({'; '.join(self.recipe_.differences(features.recipe))}); it cannot be reused."
                                  + hint)
        return {str(sha): row for split in features.splits.values() for sha, row in zip(split.sha256, split.embeddings)}

    def transform(self, X: Any) -> np.ndarray:
        from clothprobe.featurize.embed import embed_files

        check_is_fitted(self, "recipe_")
        paths = [Path(str(p)) for p in np.asarray(X, dtype=object).ravel()]
        hashes = [file_sha256(p) if p.is_file() else "" for p in paths]
        todo = [i for i, sha in enumerate(hashes) if sha not in self.cache_rows_]
        rows: dict[int, np.ndarray] = {i: self.cache_rows_[sha] for i, sha in enumerate(hashes) if sha in self.cache_rows_}
        if todo:
            missing = [i for i in todo if not hashes[i]]
            if missing:
                raise ClothprobeError(f"No image file at {paths[missing[0]]} ({len(missing)} path(s) missing).")
            done = embed_files(self.recipe_, [paths[i] for i in todo], batch_size=self.batch_size,
                               max_pixels=self.max_pixels)
            if done.skipped:
                listed = "; ".join(f"{paths[todo[k]]}: {why}" for k, why in sorted(done.skipped.items())[:5])
                raise ClothprobeError(f"{len(done.skipped)} image(s) cannot be embedded ({listed}). Remove them "
                                      f"from X, or use cli featurize, which skips and reports them.")
            rows.update({todo[k]: row for k, row in zip(done.good, done.views[ORIGINAL])})
        if not paths:
            return np.empty((0, 0), np.float32)
        return np.stack([rows[i] for i in range(len(paths))]).astype(np.float32)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "recipe_")
        from clothprobe.featurize.model.taps import tap_layout

        if not self.recipe_.taps:
            return np.array([f"{self.recipe_.backbone}_{i}" for i in range(self.n_features_out_)], dtype=object)
        return np.array([f"{self.recipe_.backbone}_{tap}_{i}" for tap, width in tap_layout(self.recipe_, self.n_features_out_)
                         for i in range(width)], dtype=object)

    def _dim(self) -> int:
        """The embedding size, from one probe image (this also compiles the model, once, into the store)."""
        from clothprobe.featurize.embed import open_embedder
        from clothprobe.featurize.model.selfcheck import probe_batch

        embedder = open_embedder(self.recipe_, batch_size=1)
        return int(embedder.embed_array(probe_batch(self.recipe_.input_size)[:1])[ORIGINAL].shape[1])
