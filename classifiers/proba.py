"""A fitted head's probabilities over every class of the run (numpy only: predict imports it)."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores ``z`` (each row shifted by its maximum first, so nothing overflows)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def full_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over every class, also those absent from the data the model was fitted on."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X)
    return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 only within 1e-6
