"""Model selection that never looks at the test split: each candidate setting is scored on the validation
split, or by stratified k-fold on train when there is no validation split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold

from clothprobe.classifiers.data import FeatureSet, SplitData
from clothprobe.classifiers.registry import ClassifierSpec, make_pipeline, threads_for

CV_FOLDS = 5


def full_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over every class, also those absent from the data the model was fitted on."""
    proba = np.zeros((len(X), n_classes))
    proba[:, np.asarray(model.classes_, dtype=int)] = model.predict_proba(X)
    return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums to 1 only within 1e-6


def predict_split(model: Any, split: SplitData, n_classes: int, tta: bool) -> np.ndarray:
    """Class probabilities; with ``tta`` the mean over the original and the horizontally flipped view."""
    proba = full_proba(model, split.X, n_classes)
    if tta:
        proba = (proba + full_proba(model, split.X_flip, n_classes)) / 2
    return proba


@dataclass
class Candidate:
    params: dict
    accuracy: float
    log_loss: float
    chosen: dict = field(default_factory=dict)


@dataclass
class Selection:
    params: dict  # the grid settings chosen
    chosen: dict  # settings the fit chose itself (early-stopped rounds, epochs)
    mode: str
    candidates: list[Candidate]
    model: Any  # fitted on the training split with the chosen settings


def _score(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    return accuracy_score(y, proba.argmax(1)), log_loss(y, proba, labels=range(proba.shape[1]))


def _best(candidates: list[Candidate]) -> int:
    """Highest accuracy, then lowest log loss, then the earliest grid entry (deterministic)."""
    return max(range(len(candidates)), key=lambda i: (candidates[i].accuracy, -candidates[i].log_loss, -i))


def select(spec: ClassifierSpec, data: FeatureSet, balance: str, seed: int = 0, tta: bool = False,
           loss: str = "categorical") -> Selection:
    """Search ``spec.grid``; return the chosen settings and a model fitted on train with them."""
    train, n_classes = data.splits["train"], len(data.class_names)
    val = data.splits.get("validation")
    min_count = int(np.bincount(train.y)[np.unique(train.y)].min())

    def fitted(params: dict, X: np.ndarray, y: np.ndarray, held: tuple | None) -> Any:
        pipe = make_pipeline(spec, {**params, "n_jobs": threads_for(X)}, balance, seed, min_count, loss)
        extra = spec.fit_params(*held) if spec.fit_params and held is not None else {}
        return pipe.fit(X, y, **extra)

    candidates, models = [], []
    if val is not None and len(val):
        for params in spec.grid:
            model = fitted(params, train.X, train.y, (val.X, val.y))
            acc, ll = _score(val.y, predict_split(model, val, n_classes, tta))
            candidates.append(Candidate(params, acc, ll, spec.chosen(model[-1])))
            models.append(model)
        best = _best(candidates)
        return Selection(spec.grid[best], candidates[best].chosen, "validation split", candidates, models[best])

    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
    for params in spec.grid:
        scores, chosen = [], []
        for tr, te in folds.split(train.X, train.y):
            fold = SplitData(train.X[te], train.y[te], train.paths[te],
                             None if train.X_flip is None else train.X_flip[te])
            model = fitted(params, train.X[tr], train.y[tr], (fold.X, fold.y))
            scores.append(_score(fold.y, predict_split(model, fold, n_classes, tta)))
            chosen.append(spec.chosen(model[-1]))
        mean_chosen = {k: int(round(np.mean([c[k] for c in chosen]))) for k in chosen[0]}
        candidates.append(Candidate(params, float(np.mean([s[0] for s in scores])),
                                    float(np.mean([s[1] for s in scores])), mean_chosen))
    best = _best(candidates)
    params = spec.grid[best]
    # Refit on all of train; settings the folds chose (rounds) are fixed now that no held-out data is left.
    model = fitted({**params, **candidates[best].chosen}, train.X, train.y, None)
    return Selection(params, candidates[best].chosen, f"{CV_FOLDS}-fold CV on train", candidates, model)
