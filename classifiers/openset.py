"""Open-set scores ("none of these"): how much a photo looks like one of the run's classes, higher = more known.

Every score is a function of feature rows ``X`` (final-layer embeddings, or any other pooled layer) and of
the head's answer on them, so it works on whatever features a run is fitted on:

- ``msp``: the maximum softmax probability of the head;
- ``energy``: log-sum-exp of the head's logits (heads that expose them: logistic regression);
- ``knn``: cosine similarity to the k-th nearest training photo (L2-normalized features);
- ``mahalanobis``: minus the smallest Mahalanobis distance to a class mean, after L2 normalization and PCA,
  with one shared Ledoit-Wolf covariance (Mahalanobis++);
- ``knn_negatives`` (with negatives: photos of other garments, ``cli fit --negatives``, outlier exposure):
  ``knn`` minus the cosine similarity to the k-th nearest negative photo;
- ``combined``: a logistic regression over the standardized scores above, fitted on the tuning rows, its weights
  non-negative (each score counts in its own direction only).

``tune`` picks the score with the best AUROC on validation knowns against the tuning part of the unknown
photos (the combiner's AUROC is cross-validated there, so it competes fairly) and puts the threshold as high
as it can go while rejecting at most 1% of the validation photos the head classifies right (an accuracy cost
of at most 1 pp on validation, ``threshold_at_cost``; ``cli fit --unknown-cost`` changes the share).
``OpenSet`` is the fitted result; ``save``/``load`` keep it as numpy arrays (``openset.npz``, never a pickle)
plus the manifest entry this module alone reads.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError

SCORES = ("msp", "energy", "knn", "mahalanobis", "knn_negatives")
COMBINED = "combined"
FILE = "openset.npz"
KNOWN_RECALL = 0.95  # the known-class recall at which FPR is reported (FPR@95)
MAX_ACCURACY_COST = 0.01  # the threshold rejects at most this share of validation photos the head gets right
MAX_BYTES = 1 << 30
DEFAULT_K = 10  # neighbours of the k-NN scores
_CHUNK = 1024  # rows per block of the k-NN similarity matrix


@dataclass
class HeadOutput:
    """What the scores look at for a set of rows: features, the head's probabilities and (if it has them)
    its logits."""

    X: np.ndarray
    proba: np.ndarray
    logits: np.ndarray | None = None


def head_output(model: Any, X: np.ndarray, proba: np.ndarray, logits: bool = True,
                flipped: np.ndarray | None = None) -> HeadOutput:
    """``HeadOutput`` of a fitted head: with ``logits``, those of its ``decision_function`` where it has one (a
    head whose saved model keeps no logits must not use them at fit time either), averaged with the ``flipped``
    view's when ``proba`` is the two views' mean (TTA), so that energy sees what MSP sees."""
    decision = getattr(model, "decision_function", None) if logits else None
    logits = None
    if decision is not None:
        views = [X] if flipped is None else [X, flipped]
        z = np.mean([np.asarray(decision(v), np.float64) for v in views], axis=0)
        logits = np.column_stack([np.zeros(len(z)), z]) if z.ndim == 1 else z
    return HeadOutput(np.asarray(X, np.float32), np.asarray(proba, np.float64), logits)


def _normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


class OpenSetScorer:
    """The distance scores' fitted state (scikit-learn style): ``k`` neighbours, ``pca_components`` kept
    before the Mahalanobis distance. Fitted: ``bank_`` (normalized training rows), ``pca_mean_``,
    ``pca_components_``, ``class_means_``, ``precision_``, ``negatives_`` (normalized negative photos, or None)."""

    def __init__(self, k: int = DEFAULT_K, pca_components: int = 256) -> None:
        self.k = k
        self.pca_components = pca_components

    def fit(self, X: np.ndarray, y: np.ndarray, negatives: np.ndarray | None = None) -> OpenSetScorer:
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a whole number of at least 1, got {self.k!r}")
        Xn, y = _normalize(X), np.asarray(y)
        self.bank_ = Xn
        self.negatives_ = None if negatives is None or not len(negatives) else _normalize(negatives)
        pca = PCA(n_components=min(self.pca_components, len(Xn) - 1, Xn.shape[1]), random_state=0).fit(Xn)
        self.pca_mean_, self.pca_components_ = pca.mean_.astype(np.float64), pca.components_.astype(np.float64)
        Z = self._project(Xn)
        classes = np.unique(y)
        self.class_means_ = np.stack([Z[y == c].mean(0) for c in classes])
        residual = Z - self.class_means_[np.searchsorted(classes, y)]
        self.precision_ = LedoitWolf().fit(residual).precision_
        return self

    def _project(self, Xn: np.ndarray) -> np.ndarray:
        return (np.asarray(Xn, np.float64) - self.pca_mean_) @ self.pca_components_.T

    def knn(self, X: np.ndarray, bank: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of each row to its k-th nearest training row (or row of ``bank``)."""
        bank = self.bank_ if bank is None else bank
        Xn, k = _normalize(X), min(self.k, len(bank))
        out = np.empty(len(Xn))
        for start in range(0, len(Xn), _CHUNK):
            sims = Xn[start:start + _CHUNK] @ bank.T
            out[start:start + _CHUNK] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        return out

    def mahalanobis(self, X: np.ndarray) -> np.ndarray:
        """Minus the smallest squared Mahalanobis distance to a class mean (higher = more known)."""
        Z = self._project(_normalize(X))
        d = Z[:, None, :] - self.class_means_[None, :, :]
        return -np.einsum("ncd,de,nce->nc", d, self.precision_, d).min(1)

    def scores(self, out: HeadOutput) -> dict[str, np.ndarray]:
        """Every score available for ``out`` (``energy`` only when the head gave logits)."""
        from scipy.special import logsumexp

        found = {"msp": out.proba.max(1)}
        if out.logits is not None:
            found["energy"] = logsumexp(out.logits, axis=1)
        found["knn"] = self.knn(out.X)
        found["mahalanobis"] = self.mahalanobis(out.X)
        if self.negatives_ is not None:
            found["knn_negatives"] = found["knn"] - self.knn(out.X, self.negatives_)
        return found

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"bank": self.bank_, "pca_mean": self.pca_mean_, "pca_components": self.pca_components_,
                  "class_means": self.class_means_, "precision": self.precision_}
        return arrays if self.negatives_ is None else {**arrays, "negatives": self.negatives_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], k: int) -> OpenSetScorer:
        scorer = cls(k=k, pca_components=len(arrays["pca_components"]))
        scorer.bank_ = arrays["bank"].astype(np.float32)
        scorer.pca_mean_, scorer.pca_components_ = arrays["pca_mean"], arrays["pca_components"]
        scorer.class_means_, scorer.precision_ = arrays["class_means"], arrays["precision"]
        scorer.negatives_ = arrays["negatives"].astype(np.float32) if "negatives" in arrays else None
        return scorer


def _nonnegative_logistic(Z: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights (each >= 0) and intercept of an L2-penalized logistic regression of ``known`` on ``Z``, with
    balanced class weights: scikit-learn's objective (C = 1) under the bound, solved by L-BFGS-B."""
    from scipy.optimize import minimize
    from scipy.special import expit

    y = np.asarray(known, np.float64)
    w = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))

    def loss(p: np.ndarray) -> tuple[float, np.ndarray]:
        z = Z @ p[:-1] + p[-1]
        g = w * (expit(z) - y)
        value = w @ (y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)) + 0.5 * p[:-1] @ p[:-1]
        return float(value), np.r_[Z.T @ g + p[:-1], g.sum()]

    d = Z.shape[1]
    fitted = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", bounds=[(0, None)] * d + [(None, None)])
    return fitted.x[:-1], float(fitted.x[-1])


@dataclass
class Combiner:
    """A logistic regression over standardized component scores, each weight >= 0: a score counts only in its
    own direction (higher = more known), so the combiner cannot learn that looking *more* like the training
    photos means unknown, a property of one folder of unknown photos that need not hold for the next.
    ``value`` is its log-odds of "known"."""

    names: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, names: list[str], S: np.ndarray, known: np.ndarray) -> Combiner:
        mean, scale = S.mean(0), np.maximum(S.std(0), 1e-12)
        coef, intercept = _nonnegative_logistic((S - mean) / scale, known)
        return cls(list(names), mean, scale, coef, intercept)

    def value(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return self.value_matrix(np.column_stack([scores[n] for n in self.names]))

    def value_matrix(self, S: np.ndarray) -> np.ndarray:
        """``value`` over scores stacked as columns in ``names`` order."""
        return ((S - self.mean) / self.scale) @ self.coef + self.intercept


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that a known row scores above an unknown one (ties count half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def threshold_at_recall(known: np.ndarray, recall: float = KNOWN_RECALL) -> float:
    """The score above which a fraction ``recall`` of ``known`` lies."""
    return float(np.quantile(known, 1 - recall, method="lower"))


def threshold_at_cost(known: np.ndarray, correct: np.ndarray, cost: float = MAX_ACCURACY_COST) -> float:
    """The highest threshold (``is_unknown``: below it) that rejects at most ``cost`` x len(known) of the rows
    ``correct`` marks (photos the head classifies right): rejecting wrong answers costs no accuracy."""
    known, correct = np.asarray(known, np.float64), np.asarray(correct, bool)
    right = np.sort(known[correct])
    allowed = int(np.floor(cost * len(known) + 1e-9))
    return float(right[allowed]) if allowed < len(right) else float(np.inf)


@dataclass
class OpenSet:
    """A fitted reject option: ``score`` (one of SCORES or ``combined``), its threshold, the state behind it."""

    score: str
    threshold: float
    scorer: OpenSetScorer
    combiner: Combiner | None = None
    tuning_auroc: dict[str, float] = field(default_factory=dict)  # every candidate, on the tuning rows
    # logits averaged over every view the head's probabilities use (False: runs saved before, original view only)
    logits_of_every_view: bool = True

    def every_value(self, out: HeadOutput) -> dict[str, np.ndarray]:
        """Every score for ``out``: the components and, when fitted, the combiner's."""
        scores = self.scorer.scores(out)
        if self.combiner is not None:
            scores[COMBINED] = self.combiner.value(scores)
        return scores

    def values(self, out: HeadOutput) -> np.ndarray:
        scores = self.every_value(out)
        if self.score not in scores:
            raise ClothprobeError(f"The open-set score {self.score!r} needs the head's logits, which it does not give.")
        return scores[self.score]

    def is_unknown(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values) < self.threshold


def _cv_combined(S: np.ndarray, known: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold log-odds of the combiner on the tuning rows (to compare it fairly with single scores)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(known))
    folds = min(5, int(np.bincount(known).min()))
    for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(S, known):
        out[held] = Combiner.fit([], S[fit_rows], known[fit_rows]).value_matrix(S[held])
    return out


def tune(scorer: OpenSetScorer, known: HeadOutput, unknown: HeadOutput, *, known_y: np.ndarray, seed: int = 0,
         max_cost: float = MAX_ACCURACY_COST, allowed: tuple[str, ...] | None = None) -> OpenSet:
    """Choose the score with the best AUROC of ``known`` (validation knowns, labels ``known_y``) against
    ``unknown`` (the tuning part of the unknown photos), and its threshold: the highest that costs at most
    ``max_cost`` of validation accuracy (``threshold_at_cost``). ``allowed``: the candidates (default: every
    score available and ``combined``). Nothing else is looked at."""
    k_scores, u_scores = scorer.scores(known), scorer.scores(unknown)
    names = [n for n in SCORES if n in k_scores]
    candidates = [n for n in (*names, COMBINED) if allowed is None or n in allowed]
    if min(len(known.proba), len(unknown.proba)) < 2:  # too few rows to cross-validate the combiner
        candidates = [n for n in candidates if n != COMBINED]
    if not candidates:
        raise ClothprobeError(f"No open-set score among {allowed}; choose from {', '.join((*names, COMBINED))}.")
    tuning = {n: auroc(k_scores[n], u_scores[n]) for n in candidates if n != COMBINED}
    S = np.vstack([np.column_stack([k_scores[n] for n in names]), np.column_stack([u_scores[n] for n in names])])
    is_known = np.r_[np.ones(len(known.proba)), np.zeros(len(unknown.proba))].astype(int)
    if COMBINED in candidates:
        oof = _cv_combined(S, is_known, seed)
        tuning[COMBINED] = auroc(oof[is_known == 1], oof[is_known == 0])
    best = max(candidates, key=lambda n: (tuning[n], -candidates.index(n)))
    combiner = Combiner.fit(names, S, is_known) if COMBINED in candidates else None
    chosen = combiner.value(k_scores) if best == COMBINED else k_scores[best]
    correct = known.proba.argmax(1) == np.asarray(known_y)
    return OpenSet(best, threshold_at_cost(chosen, correct, max_cost), scorer, combiner, tuning)


def split_unknown(types: np.ndarray, seed: int = 0, tuning_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the tuning and the reporting part of the unknown photos: by photo, seeded, stratified
    by garment type."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(types))
    counts = np.bincount(types)
    stratify = types if counts[counts > 0].min() >= 2 else None
    tuning, report = train_test_split(rows, train_size=tuning_fraction, random_state=seed, stratify=stratify)
    return np.sort(tuning), np.sort(report)


# --- figures with intervals -------------------------------------------------------------------------------


def _fpr_at(known: np.ndarray, unknown: np.ndarray, recall: float) -> float:
    return float(np.mean(unknown >= threshold_at_recall(known, recall)))


def evaluate(known: np.ndarray, unknown: np.ndarray, *, seed: int = 0, resamples: int = 1000,
             recall: float = KNOWN_RECALL) -> dict[str, Any]:
    """AUROC and FPR at ``recall`` known recall, each with a 95% percentile bootstrap interval (knowns and
    unknowns resampled separately, seeded)."""
    rng = np.random.default_rng(seed)
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    above = (known[:, None] > unknown[None, :]) + 0.5 * (known[:, None] == unknown[None, :])
    wk = np.stack([np.bincount(rng.integers(0, len(known), len(known)), minlength=len(known)) for _ in range(resamples)])
    wu = np.stack([np.bincount(rng.integers(0, len(unknown), len(unknown)), minlength=len(unknown))
                   for _ in range(resamples)])
    aurocs = ((wk @ above) * wu).sum(1) / (len(known) * len(unknown))
    fprs = [_fpr_at(np.repeat(known, a), np.repeat(unknown, b), recall) for a, b in zip(wk, wu)]
    return {"auroc": auroc(known, unknown), "auroc_ci": np.percentile(aurocs, [2.5, 97.5]).tolist(),
            "fpr95": _fpr_at(known, unknown, recall), "fpr95_ci": np.percentile(fprs, [2.5, 97.5]).tolist(),
            "n_known": len(known), "n_unknown": len(unknown)}


# --- the run's files (this module alone reads the manifest's ``openset`` entry) -----------------------------


def save(openset: OpenSet, directory: Path) -> dict:
    """Write ``openset.npz`` into ``directory``; return the manifest's ``openset`` entry."""
    arrays = openset.scorer.arrays()
    entry: dict[str, Any] = {"file": FILE, "score": openset.score, "threshold": openset.threshold,
                             "k": openset.scorer.k, "tuning_auroc": openset.tuning_auroc,
                             "logits_of_every_view": openset.logits_of_every_view}
    if openset.combiner is not None:
        c = openset.combiner
        arrays.update(comb_mean=c.mean, comb_scale=c.scale, comb_coef=c.coef, comb_intercept=np.array([c.intercept]))
        entry["components"] = c.names
    np.savez(directory / FILE, **arrays)
    return entry


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:  # a bound before numpy allocates
            if sum(info.file_size for info in z.infolist()) > MAX_BYTES:
                raise ValueError("larger than any open-set state")
        with np.load(path, allow_pickle=False) as f:
            return {name: np.asarray(f[name]) for name in f.files}
    except Exception as err:  # noqa: BLE001 - any failure to read an untrusted file is a refusal
        raise ClothprobeError(f"{path} is not a readable open-set file ({type(err).__name__}: {str(err)[:200]}); "
                              f"refusing it. Fit the run again with --unknown.") from None


def _shapes_ok(a: dict[str, np.ndarray], entry: dict) -> bool:
    base = {"bank", "pca_mean", "pca_components", "class_means", "precision"}
    comb = {"comb_mean", "comb_scale", "comb_coef", "comb_intercept"}
    expected = (base | comb if "components" in entry else base) | ({"negatives"} if "negatives" in a else set())
    if set(a) != expected or any(v.dtype.kind != "f" for v in a.values()):
        return False
    d, p = a["bank"].shape[1] if a["bank"].ndim == 2 else -1, len(a["pca_components"])
    return (a["pca_components"].shape[1:] == (d,) and a.get("negatives", a["bank"]).shape[1:] == (d,)
            and a["pca_mean"].shape == (d,) and a["class_means"].ndim == 2
            and a["class_means"].shape[1] == p and a["precision"].shape == (p, p)
            and all(a[k].shape == (len(entry.get("components", [])),) for k in comb & set(a) - {"comb_intercept"}))


def _number(value: Any) -> bool:
    """A real number as JSON holds one (not a bool, not a string), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_entry_values(entry: dict, bank_rows: int) -> tuple[float, int]:
    """The threshold and k of a manifest's open-set entry, or an error: the threshold a finite number (NaN or
    infinity would make the reject option never or always fire), k a whole number from 1 to the training rows (or
    ``DEFAULT_K``, which a fit on fewer rows saves), the combiner's components names of scores."""
    threshold, k = entry.get("threshold"), entry.get("k")
    if not _number(threshold):
        raise ClothprobeError(f"the open-set threshold must be a finite number, got {threshold!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max(bank_rows, DEFAULT_K):
        raise ClothprobeError(f"the open-set k must be a whole number from 1 to {max(bank_rows, DEFAULT_K)}, got {k!r}")
    components = entry.get("components", [])
    if not isinstance(components, list) or not set(components) <= set(SCORES) or len(set(components)) < len(components):
        raise ClothprobeError(f"the open-set components must be distinct names among {', '.join(SCORES)}, got "
                              f"{components!r}")
    if not isinstance(entry.get("tuning_auroc", {}), dict):
        raise ClothprobeError(f"the open-set tuning_auroc must be a map, got {entry['tuning_auroc']!r}")
    return float(threshold), k


def load(directory: Path, entry: dict) -> OpenSet:
    """The ``OpenSet`` a run saved (the run's sha256 values are checked by its reader before this); every value is
    checked, since a manifest's hashes can be recomputed by whoever edits it."""
    where = directory / "manifest.json"
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise ClothprobeError(f"{where}: the open-set entry is damaged (no file named); fit again.")
    score, every_view = entry.get("score"), entry.get("logits_of_every_view", False)
    if Path(entry["file"]).name != entry["file"] or score not in (*SCORES, COMBINED) or not isinstance(every_view, bool):
        raise ClothprobeError(f"{where}: the open-set entry names {entry['file']!r} / score "
                              f"{score!r} / logits_of_every_view {every_view!r}; fit again.")
    path = directory / entry["file"]
    arrays = _read_arrays(path)
    try:
        threshold, k = check_entry_values(entry, len(arrays.get("bank", ())))
    except ClothprobeError as err:
        raise ClothprobeError(f"{where}: {err}; refusing the reject option. Fit the run again with --unknown.") from None
    if not _shapes_ok(arrays, entry) or (score == COMBINED and "components" not in entry):
        raise ClothprobeError(f"{path} does not hold the open-set state its manifest describes; refusing it. "
                              f"Fit the run again with --unknown.")
    if not all(np.isfinite(v).all() for v in arrays.values()):
        raise ClothprobeError(f"{path} holds values that are not finite numbers; refusing it. Fit the run again with "
                              f"--unknown.")
    combiner = None
    if "components" in entry:
        combiner = Combiner(list(entry["components"]), arrays["comb_mean"], arrays["comb_scale"], arrays["comb_coef"],
                            float(arrays["comb_intercept"][0]))
    return OpenSet(score, threshold, OpenSetScorer.from_arrays(arrays, k), combiner, dict(entry.get("tuning_auroc", {})),
                   every_view)
