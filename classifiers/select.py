"""Model selection that never looks at the test split: each candidate setting is scored on the validation
split, or by stratified k-fold on train when there is no validation split."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from imblearn.pipeline import Pipeline
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


def _fit_grid(spec: ClassifierSpec, grid: tuple[dict, ...] | list[dict], X: np.ndarray, y: np.ndarray,
              held: SplitData | None, balance: str, seed: int, loss: str) -> list[Any]:
    """One fitted pipeline per grid entry. The preprocessing (scaling, SMOTE) is fitted once on ``X`` and
    shared, since it does not depend on the entry; ``spec.path`` heads warm-start along the grid."""
    min_count = int(np.bincount(y)[np.unique(y)].min())
    template = make_pipeline(spec, grid[0], balance, seed, min_count, loss)
    shared = template.steps[:-1]
    for _, step in shared:
        if hasattr(step, "fit_resample"):
            X, y = step.fit_resample(X, y)
        else:
            X = step.fit_transform(X, y)
    extra = {}
    if spec.fit_params and held is not None:
        X_held = held.X
        for _, step in shared:
            if not hasattr(step, "fit_resample"):  # samplers only act while fitting
                X_held = step.transform(X_held)
        extra = spec.fit_params(X_held, held.y)
    models, warm = [], None
    for params in grid:
        estimator = make_pipeline(spec, {**params, "n_jobs": threads_for(X)}, balance, seed, min_count, loss)[-1]
        if spec.path and warm is not None:
            estimator = warm.set_params(**estimator.get_params())
        estimator.fit(X, y, **extra)
        if spec.path:
            warm, estimator = estimator, copy.deepcopy(estimator)
        models.append(Pipeline([*shared, ("clf", estimator)]))
    return models


def select(spec: ClassifierSpec, data: FeatureSet, balance: str, seed: int = 0, tta: bool = False,
           loss: str = "categorical") -> Selection:
    """Search ``spec.grid``; return the chosen settings and a model fitted on train with them."""
    train, n_classes = data.splits["train"], len(data.class_names)
    val = data.splits.get("validation")

    def scored(models: list[Any], held: SplitData) -> list[Candidate]:
        return [Candidate(params, *_score(held.y, predict_split(model, held, n_classes, tta)), spec.chosen(model[-1]))
                for params, model in zip(spec.grid, models)]

    if val is not None and len(val):
        models = _fit_grid(spec, spec.grid, train.X, train.y, val, balance, seed, loss)
        candidates = scored(models, val)
        best = _best(candidates)
        return Selection(spec.grid[best], candidates[best].chosen, "validation split", candidates, models[best])

    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
    per_fold = []
    for tr, te in folds.split(train.X, train.y):
        fold = SplitData(train.X[te], train.y[te], train.paths[te], None if train.X_flip is None else train.X_flip[te])
        per_fold.append(scored(_fit_grid(spec, spec.grid, train.X[tr], train.y[tr], fold, balance, seed, loss), fold))
    candidates = []
    for i, params in enumerate(spec.grid):
        runs = [fold[i] for fold in per_fold]
        chosen = {k: int(round(np.mean([r.chosen[k] for r in runs]))) for k in runs[0].chosen}
        candidates.append(Candidate(params, float(np.mean([r.accuracy for r in runs])),
                                    float(np.mean([r.log_loss for r in runs])), chosen))
    best = _best(candidates)
    params = spec.grid[best]
    # Refit on all of train; settings the folds chose (rounds) are fixed now that no held-out data is left.
    (model,) = _fit_grid(spec, [{**params, **candidates[best].chosen}], train.X, train.y, None, balance, seed, loss)
    return Selection(params, candidates[best].chosen, f"{CV_FOLDS}-fold CV on train", candidates, model)
