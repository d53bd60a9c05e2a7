"""Run a recipe's network over image files: parallel decoding with prefetch into one compiled model.

Decoding and resizing run in a thread pool (Pillow releases the GIL), a bounded number of batches ahead of
inference, so memory is bounded by the batch size, not the dataset size (tf.data measured 1.7x slower on
2 cores: its threads competed with inference); the network's input (padding, the flipped view, the
backbone's preprocessing) is made in a thread of its own while the network runs the batch before. Every batch is padded to the full batch size, so the model
is compiled for one shape and an embedding does not depend on its batch neighbours.

``open_embedder(recipe)`` is the one way to get an embedder: it takes the compiled model from the store
(``featurize/model/store.py``), exporting it there the first time, and checks a bfloat16 or int8 runtime against
float32 on a fixed probe batch the first time it runs on a machine (``featurize/model/selfcheck.py``).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe._util.ahead import ahead
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, BadImage, decode
from clothprobe.featurize.model.recipe import Recipe
from clothprobe.featurize.model.runtimes import Runner
from clothprobe.featurize.model.taps import round_taps

ORIGINAL = "embeddings"  # the view of the photo as it is
FLIPPED = "flip"  # the view of the photo mirrored left to right (test-time augmentation)


def view_names(flip: bool) -> tuple[str, ...]:
    """The views an embedder makes and a cache holds: the original, and the flipped one with ``flip``."""
    return (ORIGINAL, FLIPPED) if flip else (ORIGINAL,)

PREFETCH_BATCHES = 2
PREPARED_BATCHES = 2  # network inputs made ahead while the network runs


def decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def model_input(recipe: Recipe, pixels: np.ndarray) -> np.ndarray:
    """Decoded RGB uint8 images ``(n, s, s, 3)`` -> the network's float32 input, in its layout."""
    x = recipe.preprocess.apply(pixels)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if recipe.layout == "NCHW" else x


def pool(recipe: Recipe, out: np.ndarray) -> np.ndarray:
    """The network's output -> one vector per image (a 4-D feature map is pooled over its spatial axes)."""
    if out.ndim == 2:
        return out
    if out.ndim != 4 or recipe.pooling == "none":
        raise ValueError(f"{recipe.backbone}: output of shape {out.shape[1:]} with pooling {recipe.pooling!r}; "
                         f"an embedding needs a vector per image (set pooling avg or max for a feature map)")
    axes = (1, 2) if recipe.layout == "NHWC" else (2, 3)
    reduce = np.max if recipe.pooling == "max" else np.mean
    return reduce(out, axis=axes).astype(np.float32)


@dataclass
class Batch:
    """One finished batch: positions into the input list, and each view's embeddings for the good ones."""

    indices: list[int]
    views: dict[str, np.ndarray]
    skipped: dict[int, str]


class Embedder:
    """A recipe's compiled network, reusable over many calls; ``flip`` adds the mirrored view."""

    def __init__(self, recipe: Recipe, runner: Runner, batch_size: int, flip: bool = False) -> None:
        self.recipe = recipe
        self.batch_size = batch_size
        self.flip = flip
        self._runner = runner
        self.network_seconds = 0.0  # inside the network, summed over calls: its busy share of a run
    @property
    def view_names(self) -> tuple[str, ...]:
        return view_names(self.flip)

    def embed_array(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Embeddings of up to ``batch_size`` decoded uint8 images, one array per view."""
        return self._infer(self._input(images), len(images))

    def _input(self, images: np.ndarray) -> np.ndarray:
        """The network's input for up to ``batch_size`` images: padded to the batch size, each view."""
        size = self.recipe.input_size
        padded = np.zeros((self.batch_size, size, size, 3), np.uint8)
        padded[: len(images)] = images
        views = [padded, padded[:, :, ::-1]] if self.flip else [padded]
        return model_input(self.recipe, np.concatenate(views))

    def _infer(self, x: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """The first ``n`` images' embeddings of input ``x`` (``_input``), one array per view."""
        started = time.perf_counter()
        raw = self._runner(x)
        self.network_seconds += time.perf_counter() - started
        out = round_taps(self.recipe, pool(self.recipe, raw))
        b = self.batch_size
        return {view: out[i * b : i * b + n] for i, view in enumerate(self.view_names)}

    def run(self, files: Sequence[Path], max_pixels: int = DEFAULT_MAX_PIXELS,
            groups: Sequence[int] | None = None) -> Iterator[Batch]:
        """Embed ``files`` in order, batch by batch; files that cannot be decoded are reported, not fatal.
        ``groups``: sizes of consecutive runs of ``files`` that no batch may straddle (shards). The network's
        input is made in a thread of its own, ``PREPARED_BATCHES`` ahead, while the network runs."""
        def prepared() -> Iterator[tuple[int, list, np.ndarray | None]]:
            for start, decoded in decoded_batches(files, self.recipe.input_size, self.batch_size, max_pixels,
                                                  groups=groups):
                good = [image for image, _ in decoded if image is not None]
                yield start, decoded, self._input(np.stack(good)) if good else None

        for start, decoded, x in ahead(prepared(), PREPARED_BATCHES):
            good = [i for i, (image, _) in enumerate(decoded) if image is not None]
            views = (self._infer(x, len(good)) if good
                     else {v: np.empty((0, 0), np.float32) for v in self.view_names})
            yield Batch(
                indices=[start + i for i in good],
                views=views,
                skipped={start + i: reason for i, (image, reason) in enumerate(decoded) if image is None},
            )


def _load(path: Path, size: int, max_pixels: int) -> tuple[np.ndarray | None, str]:
    try:
        return decode(path, size, max_pixels), ""
    except BadImage as err:
        return None, str(err)


def batch_bounds(total: int, batch_size: int, groups: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each batch of ``total`` items, ``batch_size`` at most, none straddling two of the
    consecutive ``groups`` (their sizes; None: one group)."""
    bounds, begin = [], 0
    for size in groups if groups is not None else [total]:
        bounds += [(s, min(s + batch_size, begin + size)) for s in range(begin, begin + size, batch_size)]
        begin += size
    return bounds


def decoded_batches(files: Sequence[Path], size: int, batch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                    prefetch: int = PREFETCH_BATCHES, groups: Sequence[int] | None = None,
                    ) -> Iterator[tuple[int, list[tuple[np.ndarray | None, str]]]]:
    """Decode and resize in parallel threads (Pillow releases the GIL), ``prefetch`` batches ahead of the
    consumer, in order, across ``groups`` too (batches never straddle two: ``batch_bounds``). At most
    ``prefetch + 1`` batches are in memory, whatever the dataset size."""
    bounds = batch_bounds(len(files), batch_size, groups)
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool_:
        def submit(start: int, end: int) -> list[Future]:
            return [pool_.submit(_load, f, size, max_pixels) for f in files[start:end]]

        queue = deque(submit(*b) for b in bounds[: prefetch + 1])
        for k, (start, _) in enumerate(bounds):
            futures = queue.popleft()
            if k + prefetch + 1 < len(bounds):
                queue.append(submit(*bounds[k + prefetch + 1]))
            yield start, [f.result() for f in futures]


@dataclass
class Embedded:
    """Embeddings of a list of files: ``views[v][k]`` belongs to ``files[good[k]]``; ``skipped`` maps the
    position of each file that could not be decoded to the reason; ``recipe`` is the one that ran."""

    recipe: Recipe
    views: dict[str, np.ndarray]
    good: list[int]
    skipped: dict[int, str]


def embed_files(recipe: Recipe, files: Sequence[Path], *, flip: bool = False, batch_size: int = 32,
                max_pixels: int = DEFAULT_MAX_PIXELS, weights: object = None) -> Embedded:
    """Embed ``files`` with ``recipe`` (compiled model from the store), in memory: for predictions and
    scikit-learn pipelines, where ``featurize`` is for datasets and caches."""
    embedder = open_embedder(recipe, batch_size=max(1, min(batch_size, len(files))), flip=flip, weights=weights)
    parts: dict[str, list[np.ndarray]] = {v: [] for v in embedder.view_names}
    good: list[int] = []
    skipped: dict[int, str] = {}
    for batch in embedder.run(files, max_pixels):
        good += batch.indices
        skipped.update(batch.skipped)
        for view, array in batch.views.items():
            if len(array):
                parts[view].append(array)
    views = {v: np.concatenate(a) if a else np.empty((0, 0), np.float32) for v, a in parts.items()}
    return Embedded(embedder.recipe, views, good, skipped)


def open_embedder(recipe: Recipe, *, batch_size: int | None = None, flip: bool = False,
                  calibration_files: Sequence[Path] = (), weights: object = None, store: object = None,
                  threads: int | None = None, time_rows: bool = True) -> Embedder:
    """The embedder for ``recipe``, its model from the store (made there the first time). ``.recipe``
    of the result is the one that really runs: a wider precision when a bfloat16 or int8 runtime failed its
    self-check on this machine (with a ``ClothprobeWarning``). ``batch_size`` None: images per batch from
    the rows per request measured for this model on this machine (``featurize/model/rows.py``), measured
    now if never measured, unless ``time_rows`` is False (a job too small to repay the timing)."""
    from clothprobe.featurize.model.selfcheck import checked_runner

    if batch_size is not None and batch_size < 1:
        from clothprobe.errors import ClothprobeError

        raise ClothprobeError(f"--batch-size must be at least 1, got {batch_size}.")
    views = 2 if flip else 1
    checked = checked_runner(recipe, rows=None if batch_size is None else batch_size * views,
                             calibration_files=calibration_files, weights=weights, store=store, threads=threads,
                             time_rows=time_rows)
    return Embedder(checked.recipe, checked.runner, checked.rows // views, flip)
