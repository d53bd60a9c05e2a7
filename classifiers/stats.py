"""How sure a figure is: seeded bootstrap intervals, a paired test between two runs on the same photos,
calibration error and temperature scaling. Pure numpy/scipy, no model code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clothprobe.classifiers.proba import softmax

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
ECE_BINS = 15
NOISE_ALPHA = 0.05  # a paired difference with p above this is "within noise"
_CHUNK_CELLS = 4_000_000  # resample x row cells per block, to bound memory


def _scores(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and balanced accuracy of each row of ``y``/``pred`` (resamples x photos), with the
    same definitions as scikit-learn's (macro-F1 over every class, 0 for a class with no true or predicted
    photo; balanced accuracy over the classes present)."""
    b = y.shape[0]
    offset = (np.arange(b) * n_classes)[:, None]
    count = lambda v, w=None: np.bincount((v + offset).ravel(), weights=None if w is None else w.ravel(),  # noqa: E731
                                          minlength=b * n_classes).reshape(b, n_classes)
    correct = y == pred
    tp = count(y, correct.astype(np.float64))
    true, predicted = count(y), count(pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(true + predicted > 0, 2 * tp / (true + predicted), 0.0)
        recall = np.where(true > 0, tp / true, np.nan)
    return {"accuracy": correct.mean(1), "macro_f1": f1.mean(1), "balanced_accuracy": np.nanmean(recall, 1)}


def bootstrap_intervals(y: np.ndarray, pred: np.ndarray, n_classes: int, seed: int = 0,
                        resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, list[float]]:
    """95% percentile bootstrap intervals (photos resampled with replacement, seeded) for accuracy,
    macro-F1 and balanced accuracy."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    n = len(y)
    if n == 0:
        return {}
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_CELLS // n)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, step):
        rows = rng.integers(0, n, size=(min(step, resamples - start), n))
        for key, values in _scores(y[rows], pred[rows], n_classes).items():
            parts.setdefault(key, []).append(values)
    tail = 100 * (1 - CONFIDENCE) / 2
    return {key: [float(v) for v in np.percentile(np.concatenate(chunks), [tail, 100 - tail])]
            for key, chunks in parts.items()}


@dataclass
class PairedTest:
    """Two runs' answers on the same photos: exact McNemar test on the photos where exactly one is right."""

    n: int  # photos both runs predicted
    only_a: int  # a right, b wrong
    only_b: int  # b right, a wrong
    p_value: float

    @property
    def difference(self) -> float:
        """Accuracy of a minus accuracy of b on the shared photos."""
        return (self.only_a - self.only_b) / self.n if self.n else 0.0

    @property
    def within_noise(self) -> bool:
        return self.p_value >= NOISE_ALPHA


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedTest:
    """Exact (binomial) McNemar test of two runs' per-photo correctness, rows aligned."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return PairedTest(len(a), only_a, only_b, p)


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and photo count (empty bins dropped)."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        total = self.count.sum()
        return float(np.sum(self.count * np.abs(self.accuracy - self.confidence)) / total) if total else 0.0


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    confidence = proba.max(1)
    correct = proba.argmax(1) == np.asarray(y)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)  # equal-width bins on [0, 1]
    count = np.bincount(which, minlength=bins)
    keep = count > 0
    conf = np.bincount(which, weights=confidence, minlength=bins)[keep] / count[keep]
    acc = np.bincount(which, weights=correct.astype(float), minlength=bins)[keep] / count[keep]
    return Reliability(conf, acc, count[keep])


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    return reliability(y, proba, bins).ece


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): T > 1 softens over-confident probabilities, T < 1 sharpens them."""
    return softmax(np.log(np.clip(proba, 1e-12, 1.0)) / temperature)


def fit_temperature(y: np.ndarray, proba: np.ndarray) -> float:
    """The temperature that minimises the log loss of ``proba`` on labels ``y`` (between 0.05 and 20)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.log(np.clip(apply_temperature(proba, float(np.exp(log_t)))[rows, y], 1e-12, 1)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))
