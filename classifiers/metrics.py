"""The metrics every run records, in one place so `fit`, `e2e` and `report` agree on their meaning."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from clothprobe.classifiers.stats import bootstrap_intervals, expected_calibration_error
from clothprobe.runs.directory import SplitMetrics


def classification_metrics(y: np.ndarray, proba: np.ndarray, class_names: list[str], seed: int = 0,
                           source: str = "") -> SplitMetrics:
    """Accuracy, macro-F1, balanced accuracy (each with a seeded 95% bootstrap interval), log loss,
    calibration error, per-class precision/recall/F1 and the confusion matrix."""
    labels = list(range(len(class_names)))
    pred = proba.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return SplitMetrics(
        n=int(len(y)),
        accuracy=float(accuracy_score(y, pred)),
        macro_f1=float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        # scikit-learn's definition (mean recall over the classes present), without its UserWarning when a
        # class is predicted that the split does not hold (a small validation split)
        balanced_accuracy=float(recall[support > 0].mean()),
        log_loss=float(log_loss(y, proba, labels=labels)),
        ece=expected_calibration_error(y, proba),
        per_class={
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        confusion_matrix=confusion_matrix(y, pred, labels=labels).tolist(),
        ci=bootstrap_intervals(y, pred, len(class_names), seed=seed),
        source=source,
    )
