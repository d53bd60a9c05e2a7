"""A finished run as a scikit-learn classifier over image paths: ``clothprobe.load_run(RUN)``.

    clf = clothprobe.load_run("models/clothing-dataset-small/xception/logreg-weights")
    clf.predict(["shirt.jpg", "hat.png"])        # -> array(['shirt', 'hat'])
    clf.predict_proba(paths)                     # columns in clf.classes_ order
    clf.score(paths, true_class_names)           # accuracy
    clf.openset_score(paths)                     # a run fitted with --unknown: higher = more like its classes
    clothprobe.load_run(RUN, unknown=True).predict(paths)   # 'unknown' below the run's open-set threshold

The run is already trained: ``fit`` loads and verifies it (every file's sha256, safe model formats) and
ignores ``X`` and ``y``, as scikit-learn's ``FrozenEstimator`` does, so the estimator clones, nests in a
``Pipeline`` and scores like any other. Predictions reuse ``clothprobe.runs.predicting``'s machinery: photos are
embedded with the run's own recipe (or fed to its end-to-end network).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS


def _paths(X: Sequence[str | Path]) -> list[Path]:
    """A 1-D sequence of image file paths; anything else is an error saying what is expected."""
    items = X.tolist() if isinstance(X, np.ndarray) and X.ndim == 1 else X
    if isinstance(items, (str, Path)) or not isinstance(items, Sequence) or not all(isinstance(x, (str, Path)) for x in items):
        raise ValueError(f"RunClassifier takes a 1-D list of image file paths, got {type(X).__name__}.")
    files = [Path(x).expanduser() for x in items]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ClothprobeError(f"No such image file(s): {', '.join(missing[:5])}.")
    return files


class RunClassifier(ClassifierMixin, BaseEstimator):
    """A run written by ``cli fit`` or ``cli e2e`` as a classifier whose ``X`` is a list of image paths.

    Parameters: ``run_dir`` (the run folder), ``weights`` (backbone weights file or folder, if not found as
    featurize finds them; checked against the run's sha256), ``batch_size``, ``max_pixels`` (decompression
    bomb guard), ``calibrate`` (temperature-scaled probabilities, fitted at fit time on validation or
    out-of-fold predictions), ``unknown`` (``predict`` answers ``"unknown"`` below the open-set threshold of a run
    fitted with ``--unknown``; off by default, so that ``predict`` names only the run's classes). Fitted:
    ``classes_`` (class names), ``predictor_``, ``unknown_threshold_`` (None without a reject option).
    """

    def __init__(self, run_dir: str | Path | None = None, *, weights: str | None = None, batch_size: int = 16,
                 max_pixels: int = DEFAULT_MAX_PIXELS, calibrate: bool = False, unknown: bool = False) -> None:
        self.run_dir = run_dir
        self.weights = weights
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.calibrate = calibrate
        self.unknown = unknown

    def fit(self, X=None, y=None):  # noqa: ANN001, ANN201, ARG002 - scikit-learn signature; the run is trained
        """Load and verify the run; ``X`` and ``y`` are not used (the run is already trained)."""
        from clothprobe.runs.predicting import Predictor

        if self.run_dir is None:
            raise ValueError("RunClassifier needs run_dir: a run folder written by cli fit or cli e2e.")
        self.predictor_ = Predictor(self.run_dir, weights=self.weights, batch_size=self.batch_size,
                                    max_pixels=self.max_pixels, calibrate=self.calibrate)
        self.classes_ = np.asarray(self.predictor_.classes)
        openset = self.predictor_.openset
        self.unknown_threshold_ = None if openset is None else openset.threshold
        if self.unknown and openset is None:
            raise ClothprobeError(f"{self.run_dir} has no open-set threshold; fit it with --unknown DIR to use "
                                  f"unknown=True.")
        return self

    def _scored(self, X):  # noqa: ANN001, ANN202 - a Scored
        check_is_fitted(self, "predictor_")
        files = _paths(X)
        scored = self.predictor_.score(files)
        if scored.skipped:
            listed = "; ".join(f"{files[i]}: {why}" for i, why in sorted(scored.skipped.items())[:5])
            raise ClothprobeError(f"{len(scored.skipped)} image(s) cannot be used ({listed}). Remove them from X.")
        return scored

    def predict_proba(self, X) -> np.ndarray:  # noqa: ANN001
        """Probabilities over ``classes_``, one row per path; a file that cannot be decoded is an error."""
        return self._scored(X).proba

    def openset_score(self, X) -> np.ndarray:  # noqa: ANN001
        """The run's open-set score per path (higher = more like its classes; below ``unknown_threshold_``:
        unknown)."""
        check_is_fitted(self, "predictor_")
        if self.predictor_.openset is None:
            raise ClothprobeError(f"{self.run_dir} has no open-set score; fit it with --unknown DIR.")
        return self._scored(X).openset

    def predict(self, X) -> np.ndarray:  # noqa: ANN001
        scored = self._scored(X)
        answers = self.classes_[np.argmax(scored.proba, axis=1)]
        if self.unknown:
            answers = np.where(self.predictor_.openset.is_unknown(scored.openset), "unknown", answers.astype(object))
        return answers

    def __sklearn_tags__(self):  # noqa: ANN204
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False
        return tags


def load_run(run_dir: str | Path, **params) -> RunClassifier:  # noqa: ANN003
    """The run in ``run_dir`` as a fitted scikit-learn classifier over image paths (see ``RunClassifier``)."""
    return RunClassifier(run_dir, **params).fit()
