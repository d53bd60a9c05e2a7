"""Model selection that never looks at the test split, the same way for every head.

- ``validation``: each candidate setting is fitted on train and scored on the validation split; the
  chosen model is the one fitted on train.
- ``cv``: repeated stratified k-fold over train + validation (scikit-learn's ``RepeatedStratifiedKFold``);
  each candidate is scored out of fold, and the chosen setting is refitted on train + validation.

Either way, a head that stops early (LightGBM's rounds; the dense head's epochs) stops on rows held out
of the data it is fitted on, never on the rows it is then scored on. With no validation split,
``validation`` falls back to ``cv`` over train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from imblearn.pipeline import Pipeline
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from clothprobe.classifiers.data import FeatureSet, SplitData
from clothprobe.classifiers.proba import full_proba
from clothprobe.classifiers.registry import ClassifierSpec, make_pipeline
from clothprobe.classifiers.shared import Cores, SharedWork, holding
from clothprobe.classifiers.taps import weight_scaler
from clothprobe.errors import ClothprobeError

SELECT_MODES = ("validation", "cv")
DEFAULT_SELECT = "validation"  # see the README ("cli fit") for why
CV_FOLDS = 5
CV_REPEATS = 2
EARLY_STOP_FRACTION = 0.1  # of the rows being fitted, held out for early stopping


def check_select(select: str) -> str:
    if select not in SELECT_MODES:
        raise ClothprobeError(f"Unknown selection {select!r}; choose one of: {', '.join(SELECT_MODES)}")
    return select


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
    seconds: float = 0.0  # fitting this grid entry's estimator (summed over folds; shared scaling/SMOTE not included)


@dataclass
class Held:
    """The predictions the choice rested on (validation split, or out of fold): labels and probabilities.
    ``calibration`` stacks every repeat's out-of-fold predictions (more rows for the temperature)."""

    y: np.ndarray
    proba: np.ndarray
    source: str
    calibration_y: np.ndarray
    calibration_proba: np.ndarray


@dataclass
class Selection:
    params: dict  # the grid settings chosen
    chosen: dict  # settings the fit chose itself (early-stopped rounds, epochs)
    mode: str  # in words
    select: str  # "validation" or "cv"
    candidates: list[Candidate]
    model: Any  # fitted with the chosen settings (on train, or on train + validation for cv)
    held: Held


def _score(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    return accuracy_score(y, proba.argmax(1)), log_loss(y, proba, labels=range(proba.shape[1]))


def best_candidate(candidates: list[Candidate]) -> int:
    """Highest accuracy, then lowest log loss, then the earliest grid entry (deterministic)."""
    return max(range(len(candidates)), key=lambda i: (candidates[i].accuracy, -candidates[i].log_loss, -i))


def _hold_out(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows to fit on and rows to stop early on: a stratified, seeded share of the rows given."""
    rows = np.arange(len(y))
    stratify = y if np.bincount(y)[np.unique(y)].min() >= 2 else None
    n_held = max(int(round(EARLY_STOP_FRACTION * len(y))), len(np.unique(y)) if stratify is not None else 1)
    return train_test_split(rows, test_size=n_held, stratify=stratify, random_state=seed)


@dataclass
class _Rows:
    """The rows a search's grid entries are fitted on, after the steps they share (fitted), and the rows early
    stopping watches (through the same steps)."""

    steps: list[tuple[str, Any]]
    X: np.ndarray
    y: np.ndarray
    X_stop: np.ndarray | None = None
    y_stop: np.ndarray | None = None


def _base_rows(spec: ClassifierSpec, X: np.ndarray, y: np.ndarray, seed: int, early_stop: bool,
               column_scale: np.ndarray | None) -> _Rows:
    """Rows held out for early stopping (heads that stop early) and the scaler fitted on the rest: the work
    every balance mode and grid entry of a search shares."""
    X_stop = y_stop = None
    if spec.stops_early and early_stop:
        fit_rows, stop_rows = _hold_out(X, y, seed)
        X, y, X_stop, y_stop = X[fit_rows], y[fit_rows], X[stop_rows], y[stop_rows]
    steps: list[tuple[str, Any]] = []
    if spec.scale:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        weight_scaler(scaler, column_scale)
        steps.append(("scale", scaler))
        X = scaler.transform(X)
        X_stop = None if X_stop is None else scaler.transform(X_stop)
    return _Rows(steps, X, y, X_stop, y_stop)


def _rows(spec: ClassifierSpec, grid: tuple[dict, ...] | list[dict], X: np.ndarray, y: np.ndarray, balance: str,
          seed: int, loss: str, early_stop: bool, column_scale: np.ndarray | None, shared: SharedWork,
          key: Hashable | None, threads: int, cores: Cores | None = None) -> tuple[_Rows, dict]:
    """The shared steps fitted (each computed once per ``key`` in ``shared``), the balance mode's sampler, and
    the fit arguments every grid entry shares (``spec.prepare``, on ``threads``; for resampled rows, on what it
    gave the rows they were made from); each step holding the ``cores`` it runs on."""
    shape = key and (key, spec.scale, spec.stops_early and early_stop, seed)

    def on(k: int, make: Callable[[], Any]) -> Callable[[], Any]:
        def held() -> Any:
            with holding(cores, k):
                return make()
        return held

    base = shared.get(shape and ("rows", shape), on(1, lambda: _base_rows(spec, X, y, seed, early_stop, column_scale)))
    rows = _Rows(list(base.steps), base.X, base.y, base.X_stop, base.y_stop)
    min_count = int(np.bincount(rows.y)[np.unique(rows.y)].min())
    sampler = [(n, s) for n, s in make_pipeline(spec, grid[0], balance, seed, min_count, loss).steps[:-1]
               if hasattr(s, "fit_resample")]
    for name, step in sampler:  # resampling only acts while fitting, on the rows fitted
        rows.X, rows.y = on(1, lambda step=step: step.fit_resample(rows.X, rows.y))()
        rows.steps.append((name, step))
    extra: dict = {}
    if spec.prepare is not None:
        first = spec.build({**grid[0], "columns": rows.X.shape[1]}, balance == "weights", seed, loss)
        plain = shared.get(shape and ("prepare", spec.name, shape, False),
                           on(threads, lambda: spec.prepare(first, base.X, base.y, base.X_stop, base.y_stop, threads,
                                                            None)))
        extra = plain if not sampler else shared.get(
            shape and ("prepare", spec.name, shape, True),
            on(threads, lambda: spec.prepare(first, rows.X, rows.y, rows.X_stop, rows.y_stop, threads, plain)))
    return rows, extra


def _fit_grid(spec: ClassifierSpec, grid: tuple[dict, ...] | list[dict], X: np.ndarray, y: np.ndarray,
              balance: str, seed: int, loss: str, early_stop: bool = True,
              column_scale: np.ndarray | None = None, *, shared: SharedWork | None = None,
              key: Hashable | None = None, workers: int = 1,
              cores: Cores | None = None) -> tuple[list[Any], list[float]]:
    """One fitted pipeline per grid entry, fitted on ``X``/``y`` only, and the seconds each estimator took. A
    head that stops early stops on a seeded, stratified share of these rows, held out of its fitting. The
    preprocessing (scaling, SMOTE, ``spec.prepare``) is fitted once for the grid, and once per ``key`` in
    ``shared`` (the same rows under the same key: balance modes share it); ``spec.path`` heads warm-start
    along the grid; other heads that may run concurrently fit ``workers`` entries at a time. Each step holds the
    ``cores`` it runs on (shared with other searches side by side: no more threads at once than cores).
    ``column_scale``: each tap's weight, folded into the scaler (``classifiers/taps.py``)."""
    rows, extra = _rows(spec, grid, X, y, balance, seed, loss, early_stop, column_scale,
                        SharedWork() if shared is None else shared, key, workers, cores=cores)
    min_count = int(np.bincount(rows.y)[np.unique(rows.y)].min())

    def build(params: dict) -> Any:
        return make_pipeline(spec, {**params, "columns": rows.X.shape[1]}, balance, seed, min_count, loss)[-1]

    def timed_fit(estimator: Any) -> tuple[Any, float]:
        with holding(cores):
            started = time.perf_counter()
            estimator.fit(rows.X, rows.y, **extra)
            return estimator, time.perf_counter() - started

    if spec.path:  # one estimator along the grid, each entry starting from the previous solution
        fitted, warm = [], None
        for params in grid:
            estimator = build(params) if warm is None else warm.set_params(**build(params).get_params())
            warm, took = timed_fit(estimator)
            fitted.append((copy.deepcopy(warm), took))
    elif workers > 1 and spec.concurrent and len(grid) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(grid))) as pool:
            fitted = list(pool.map(lambda params: timed_fit(build(params)), grid))
    else:
        fitted = [timed_fit(build(params)) for params in grid]
    return [Pipeline([*rows.steps, ("clf", est)]) for est, _ in fitted], [took for _, took in fitted]


@dataclass(frozen=True)
class Sharing:
    """How a search shares work: ``shared`` holds what other searches of the same rows computed (``key`` names
    those rows: searches of other rows must not share a key), ``workers`` fits may run at once, and the
    ``cores`` searches side by side share (None: not shared)."""

    shared: SharedWork = field(default_factory=SharedWork)
    key: Hashable | None = None
    workers: int = 1
    cores: Cores | None = None

    def under(self, *part: Hashable) -> dict:
        """``_fit_grid``'s sharing arguments for the rows named ``part`` within these."""
        return {"shared": self.shared, "key": self.key and (self.key, *part), "workers": self.workers,
                "cores": self.cores}


def select(spec: ClassifierSpec, data: FeatureSet, balance: str, seed: int = 0, tta: bool = False,
           loss: str = "categorical", mode: str = DEFAULT_SELECT, sharing: Sharing | None = None) -> Selection:
    """Search ``spec.grid`` as ``mode`` says; return the chosen settings and the model fitted with them.
    ``sharing``: work shared with other searches of the same rows (other balance modes), and the workers."""
    check_select(mode)
    sharing = sharing or Sharing()
    val = data.splits.get("validation")
    if mode == "validation" and val is not None and len(val):
        return _on_validation(spec, data, balance, seed, tta, loss, sharing)
    return _cross_validated(spec, data, balance, seed, tta, loss, sharing)


def _on_validation(spec: ClassifierSpec, data: FeatureSet, balance: str, seed: int, tta: bool,
                   loss: str, sharing: Sharing) -> Selection:
    train, val, n_classes = data.splits["train"], data.splits["validation"], len(data.class_names)
    models, seconds = _fit_grid(spec, spec.grid, train.X, train.y, balance, seed, loss,
                                column_scale=data.column_scale, **sharing.under("train"))
    probas = [predict_split(model, val, n_classes, tta) for model in models]
    candidates = [Candidate(params, *_score(val.y, proba), spec.chosen(model[-1]), took)
                  for params, model, proba, took in zip(spec.grid, models, probas, seconds)]
    best = best_candidate(candidates)
    held = Held(val.y, probas[best], "validation split", val.y, probas[best])
    return Selection(spec.grid[best], candidates[best].chosen, "validation split", "validation", candidates,
                     models[best], held)


def _joined(data: FeatureSet) -> SplitData:
    parts = [s for name in ("train", "validation") if (s := data.splits.get(name)) is not None and len(s)]
    flips = [s.X_flip for s in parts]
    return SplitData(np.vstack([s.X for s in parts]), np.concatenate([s.y for s in parts]),
                     np.concatenate([s.paths for s in parts]),
                     None if any(f is None for f in flips) else np.vstack(flips))


def _cross_validated(spec: ClassifierSpec, data: FeatureSet, balance: str, seed: int, tta: bool,
                     loss: str, sharing: Sharing) -> Selection:
    rows, n_classes = _joined(data), len(data.class_names)
    folds = min(CV_FOLDS, int(np.bincount(rows.y)[np.unique(rows.y)].min()))
    if folds < 2:
        raise ClothprobeError("Cross-validation needs at least 2 training images in every class; add images or "
                              "give a validation split.")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=CV_REPEATS, random_state=seed)
    oof = np.zeros((len(spec.grid), CV_REPEATS, len(rows), n_classes))
    scores: list[list[Candidate]] = []
    for k, (fit_rows, out_rows) in enumerate(splitter.split(rows.X, rows.y)):
        held = SplitData(rows.X[out_rows], rows.y[out_rows], rows.paths[out_rows],
                         None if rows.X_flip is None else rows.X_flip[out_rows])
        models, seconds = _fit_grid(spec, spec.grid, rows.X[fit_rows], rows.y[fit_rows], balance, seed, loss,
                                    column_scale=data.column_scale, **sharing.under("fold", k))
        for i, model in enumerate(models):
            oof[i, k // folds, out_rows] = predict_split(model, held, n_classes, tta)
        scores.append([Candidate(p, *_score(held.y, oof[i, k // folds, out_rows]), spec.chosen(m[-1]), took)
                       for i, (p, m, took) in enumerate(zip(spec.grid, models, seconds))])
    candidates = []
    for i, params in enumerate(spec.grid):
        runs = [fold[i] for fold in scores]
        chosen = {key: int(round(np.mean([r.chosen[key] for r in runs]))) for key in runs[0].chosen}
        candidates.append(Candidate(params, float(np.mean([r.accuracy for r in runs])),
                                    float(np.mean([r.log_loss for r in runs])), chosen,
                                    float(sum(r.seconds for r in runs))))
    best = best_candidate(candidates)
    params, chosen = spec.grid[best], candidates[best].chosen
    # Refit on every row; settings the folds chose (rounds) are fixed now that no held-out data is left.
    (model,), _ = _fit_grid(spec, [{**params, **chosen}], rows.X, rows.y, balance, seed, loss, early_stop=False,
                            column_scale=data.column_scale, **sharing.under("train + validation"))
    where = "train + validation" if "validation" in data.splits and len(data.splits["validation"]) else "train"
    mode = f"{folds}-fold CV x{CV_REPEATS} on {where}"
    held = Held(rows.y, oof[best, 0], f"out of fold ({mode}, first repeat)", np.tile(rows.y, CV_REPEATS),
                oof[best].reshape(-1, n_classes))
    return Selection(params, chosen, mode, "cv", candidates, model, held)
