"""The int8 accuracy guard: before the default int8 model embeds the rest of a dataset for the first time, it
must classify that dataset's validation photos as well as the precision it replaces.

A seeded sample of training photos and the validation photos are embedded with both models: with int8 by the
job itself, first (those embeddings are part of the cache: the guard costs no int8 work of its own), and with
the reference precision on their own. A standardised logistic regression is fitted on each model's training
features and scored on its validation features. int8 passes when its validation accuracy lies inside (or
above) the 95% bootstrap interval of the reference's; otherwise the reference precision runs, with one line
(what int8 embedded is not kept). The outcome is recorded in the int8 store entry under the sample's digest,
so the same photos are never measured twice. The test split is never touched.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.errors import ClothprobeWarning
from clothprobe.featurize.embed import ORIGINAL, Embedder
from clothprobe.featurize.model.recipe import Recipe
from clothprobe.featurize.model.store import AccuracyGuard, ModelStore

TRAIN_PHOTOS = 200  # training photos the quick classifier is fitted on
VALIDATION_PHOTOS = 400  # at most this many validation photos scored
C = 0.1  # fixed, not tuned: the guard compares two feature sets under one classifier setting


@dataclass(frozen=True)
class LabelledPhoto:
    path: Path
    sha256: str
    label: int


@dataclass(frozen=True)
class GuardSample:
    """The photos the guard uses, chosen by content (the same photos give the same sample anywhere)."""

    train: tuple[LabelledPhoto, ...]
    validation: tuple[LabelledPhoto, ...]

    @property
    def digest(self) -> str:
        blob = json.dumps([[p.sha256, p.label] for p in (*self.train, *self.validation)])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def guard_sample(train: Sequence[LabelledPhoto], validation: Sequence[LabelledPhoto],
                 seed: int = 0) -> GuardSample | None:
    """A seeded sample of ``TRAIN_PHOTOS`` training and ``VALIDATION_PHOTOS`` validation photos, picked by
    content hash; None when either split is empty or the training sample has fewer than 2 classes."""
    def pick(photos: Sequence[LabelledPhoto], size: int) -> tuple[LabelledPhoto, ...]:
        by_hash = dict(sorted({p.sha256: p for p in photos}.items()))
        keys = list(by_hash)
        chosen = sorted(np.random.default_rng(seed).choice(len(keys), size=min(size, len(keys)), replace=False))
        return tuple(by_hash[keys[i]] for i in chosen)

    if not train or not validation:
        return None
    sample = GuardSample(pick(train, TRAIN_PHOTOS), pick(validation, VALIDATION_PHOTOS))
    return sample if len({p.label for p in sample.train}) >= 2 else None


def _features(vectors: dict[str, np.ndarray], photos: Sequence[LabelledPhoto],
              precision: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``precision`` embeddings of the photos that have one (``vectors``: content hash -> vector), and their
    labels."""
    kept = [p for p in photos if p.sha256 in vectors]
    X = np.stack([vectors[p.sha256] for p in kept]) if kept else np.empty((0, 0), np.float32)
    return X, np.array([p.label for p in kept], dtype=int)


def embedded(embedder: Embedder, photos: Sequence[LabelledPhoto]) -> dict[str, np.ndarray]:
    """Content hash -> the original view's embedding, for each photo that decodes."""
    vectors = {}
    for batch in embedder.run([p.path for p in photos]):
        vectors.update((photos[i].sha256, row) for i, row in zip(batch.indices, batch.views.get(ORIGINAL, [])))
    return vectors


def _validation_predictions(vectors: dict[str, np.ndarray], sample: GuardSample, precision: str,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _features(vectors, sample.train, precision)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(X, y)
    X_val, y_val = _features(vectors, sample.validation, precision)
    return y_val, model.predict(X_val)


def accuracy_guard(int8: dict[str, np.ndarray], reference: dict[str, np.ndarray], reference_precision: str,
                   sample: GuardSample, n_classes: int, seed: int = 0) -> AccuracyGuard:
    """int8's validation accuracy against the reference's 95% interval (see the module docstring), each side
    the sample photos' embeddings by content hash; photos only one side has are left out of both."""
    from clothprobe.classifiers.stats import bootstrap_intervals

    both = set(int8) & set(reference)
    int8, reference = {k: int8[k] for k in both}, {k: reference[k] for k in both}
    y, ref_pred = _validation_predictions(reference, sample, reference_precision, seed)
    y_int8, int8_pred = _validation_predictions(int8, sample, "int8", seed)
    ref_acc, acc = float((ref_pred == y).mean()), float((int8_pred == y_int8).mean())
    low, high = (float(v) for v in bootstrap_intervals(y, ref_pred, n_classes, seed)["accuracy"])
    return AccuracyGuard(passed=acc >= low, accuracy=acc, reference=reference_precision,
                         reference_accuracy=ref_acc, interval=(low, high), images=len(y), sample=sample.digest,
                         checked=time.time())


def recorded_guard(recipe: Recipe, sample: GuardSample, store: ModelStore) -> AccuracyGuard | None:
    """The guard's outcome recorded for ``recipe``'s int8 model on this sample, if measured before."""
    entry = store.read_for(recipe)
    return entry.guards.get(sample.digest) if entry else None


def measure_guard(recipe: Recipe, sample: GuardSample, int8: dict[str, np.ndarray], n_classes: int, *,
                  batch_size: int, seed: int = 0, store: ModelStore | None = None) -> AccuracyGuard:
    """The guard on ``sample``: ``int8`` holds the int8 model's embeddings of its photos (the job's own, by
    content hash: the guard embeds nothing twice with int8); the reference precision embeds them now, at
    ``batch_size`` images per request. The outcome is recorded in the int8 store entry."""
    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model.selfcheck import fallback_precision

    store = store or ModelStore()
    reference = open_embedder(recipe.with_precision(fallback_precision(recipe)), batch_size=batch_size, store=store)
    vectors = embedded(reference, [*sample.train, *sample.validation])
    guard = accuracy_guard(int8, vectors, reference.recipe.precision, sample, n_classes, seed)
    store.record_guard(store.read_for(recipe), sample.digest, guard)
    return guard


def guarded(recipe: Recipe, guard: AccuracyGuard, store: ModelStore | None = None) -> Recipe:
    """``recipe`` (int8) when it passed ``guard``; else the precision it was measured against, with one
    warning."""
    if guard.passed:
        return recipe
    entry = (store or ModelStore()).read_for(recipe)
    warnings.warn(ClothprobeWarning(
        f"{recipe.label} classified {guard.images} validation photos at {100 * guard.accuracy:.1f}%, below the 95% "
        f"interval of {guard.reference} ({100 * guard.interval[0]:.1f}-{100 * guard.interval[1]:.1f}%): using "
        f"{guard.reference} instead. Recorded in {entry.path if entry else (store or ModelStore()).root}."),
        stacklevel=3)
    return recipe.with_precision(guard.reference)
