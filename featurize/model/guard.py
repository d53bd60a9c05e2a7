"""The int8 accuracy guard: before the default int8 model embeds a dataset for the first time, it must
classify that dataset's validation photos as well as the precision it replaces.

A seeded sample of training photos and the validation photos are embedded with both models; a standardised
logistic regression is fitted on each model's training features and scored on its validation features. int8
passes when its validation accuracy lies inside (or above) the 95% bootstrap interval of the reference's;
otherwise the reference precision runs, with one line. The outcome is recorded in the int8 store entry under
the sample's digest, so the same photos are never measured twice. The test split is never touched.
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


def _features(embedder: Embedder, photos: Sequence[LabelledPhoto]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the photos that decode, and their labels."""
    xs, ys = [], []
    for batch in embedder.run([p.path for p in photos]):
        if batch.indices:
            xs.append(batch.views[ORIGINAL])
            ys += [photos[i].label for i in batch.indices]
    return (np.concatenate(xs) if xs else np.empty((0, 0), np.float32)), np.array(ys, dtype=int)


def _validation_predictions(embedder: Embedder, sample: GuardSample, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _features(embedder, sample.train)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(X, y)
    X_val, y_val = _features(embedder, sample.validation)
    return y_val, model.predict(X_val)


def accuracy_guard(int8: Embedder, reference: Embedder, sample: GuardSample, n_classes: int,
                   seed: int = 0) -> AccuracyGuard:
    """int8's validation accuracy against the reference's 95% interval (see the module docstring)."""
    from clothprobe.classifiers.stats import bootstrap_intervals

    y, ref_pred = _validation_predictions(reference, sample, seed)
    y_int8, int8_pred = _validation_predictions(int8, sample, seed)
    ref_acc, acc = float((ref_pred == y).mean()), float((int8_pred == y_int8).mean())
    low, high = (float(v) for v in bootstrap_intervals(y, ref_pred, n_classes, seed)["accuracy"])
    return AccuracyGuard(passed=acc >= low, accuracy=acc, reference=reference.recipe.precision,
                         reference_accuracy=ref_acc, interval=(low, high), images=len(y), sample=sample.digest,
                         checked=time.time())


def guarded_recipe(recipe: Recipe, sample: GuardSample | None, n_classes: int, *, calibration_files: Sequence[Path] = (),
                   seed: int = 0, store: ModelStore | None = None) -> Recipe:
    """``recipe`` (int8) when it passes the guard on ``sample`` (measured now, or recorded earlier); else
    the precision it was measured against, with one warning. Without a sample (no validation split),
    ``recipe`` as it is: the runtime self-check alone stands."""
    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model.selfcheck import fallback_precision

    if sample is None:
        return recipe
    store = store or ModelStore()
    entry = store.read_for(recipe)
    guard = entry.guards.get(sample.digest) if entry else None
    if guard is None:
        # its sample (at most 600 photos) is not worth timing rows for; the job that follows may be
        int8 = open_embedder(recipe, calibration_files=calibration_files, store=store, time_rows=False)
        if int8.recipe != recipe:  # the self-check already chose another precision here
            return int8.recipe
        reference = open_embedder(recipe.with_precision(fallback_precision(recipe)), batch_size=int8.batch_size,
                                  store=store)
        guard = accuracy_guard(int8, reference, sample, n_classes, seed)
        entry = store.read_for(recipe)
        store.record_guard(entry, sample.digest, guard)
    if guard.passed:
        return recipe
    warnings.warn(ClothprobeWarning(
        f"{recipe.label} classified {guard.images} validation photos at {100 * guard.accuracy:.1f}%, below the 95% "
        f"interval of {guard.reference} ({100 * guard.interval[0]:.1f}-{100 * guard.interval[1]:.1f}%): using "
        f"{guard.reference} instead. Recorded in {entry.path if entry else store.root}."), stacklevel=3)
    return recipe.with_precision(guard.reference)
