"""The classifier registry: one entry per head. Each maps a name to an imbalanced-learn ``Pipeline``
(scaling, the sampler when asked, the estimator), the small grid of settings searched on validation data,
and the format its fitted estimator is saved in. Adding a classifier is one entry in ``CLASSIFIERS``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clothprobe.classifiers.dense import LOSSES
from clothprobe.errors import ClothprobeError

BALANCES = ("none", "weights", "smote")
TAP_SEARCHES = ("joint", "first-entry")  # how --taps auto searches a head's grid (ClassifierSpec.tap_search)
SMOTE_NEIGHBOURS = 5
LGBM_MAX_ROUNDS = 2000
LOGREG_TOL = 1e-3
LGBM_PATIENCE = 50
LGBM_MIN_DELTA = 1e-3
LGBM_COLSAMPLE = 0.05  # share of the columns each tree sees...
LGBM_COLSAMPLE_WIDTH = 2048  # ...up to this many columns; wider inputs (tap sets) give each tree the same
# count, 102: trees on Xception's last 4 taps (5,336 columns) fitted in 16-18 s instead of 37 s, all 14 taps
# (11,544) in 28-29 s, at the same validation accuracy (docs/guide/taps.md)


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _logreg(params: dict, balanced: bool, seed: int, loss: str) -> Any:
    from sklearn.linear_model import LogisticRegression

    # warm_start: the grid is a path over C, each fit starting from the previous solution. tol 1e-3 instead of
    # 1e-4: 3-4x faster on 2,048-d embeddings, validation accuracy within 1-2 images (bench/fit.py history).
    return LogisticRegression(C=params["C"], max_iter=3000, tol=LOGREG_TOL, class_weight="balanced" if balanced else None,
                              random_state=seed, warm_start=True)


def _lgbm(params: dict, balanced: bool, seed: int, loss: str) -> Any:
    from clothprobe.classifiers.boosting import BoostedTrees

    # Feature subsampling (5% of the columns per tree: 2x faster than 20%, the same validation accuracy within
    # 1-2 images), few bins and early stopping keep 2,048-d embeddings fast: 358 s for 300 trees -> ~8 s.
    # ``columns`` (the input's width, given by the fit) caps the columns per tree for wide tap sets. One thread
    # per fit: the search runs its fits side by side instead (a fit's trees are too small to share out, and
    # under a second load two threads per fit ran 12x slower than one, measured on the real cache).
    columns = params.get("columns", LGBM_COLSAMPLE_WIDTH)
    return BoostedTrees(
        n_estimators=params.get("n_estimators", LGBM_MAX_ROUNDS),
        learning_rate=params["learning_rate"],
        num_leaves=params["num_leaves"],
        colsample_bytree=LGBM_COLSAMPLE * min(1.0, LGBM_COLSAMPLE_WIDTH / columns),
        subsample=0.8,
        subsample_freq=1,
        min_child_samples=10,
        reg_lambda=1.0,
        class_weight="balanced" if balanced else None,
        patience=LGBM_PATIENCE,
        min_delta=LGBM_MIN_DELTA,
        random_state=seed,
        n_jobs=1,
    )


def _lgbm_prepare(estimator: Any, X: np.ndarray, y: np.ndarray, X_stop: np.ndarray | None,
                  y_stop: np.ndarray | None, threads: int, made_from: dict | None) -> dict:
    """The rows binned once for every grid entry; early stopping on ``X_stop`` (held out of ``X``), so the
    number of rounds is chosen without the rows the candidates are then ranked on. Gains under
    ``LGBM_MIN_DELTA`` in log loss do not count, so separable data does not run to the cap. Resampled rows
    (``made_from``: what this gave for the rows they were made from) are binned on those rows' edges."""
    from clothprobe.classifiers.boosting import BinnedRows

    return {"binned": BinnedRows(X, y, X_stop, y_stop, params=estimator.dataset_params(), threads=threads,
                                 on=None if made_from is None else made_from["binned"])}


def _lgbm_chosen(estimator: Any) -> dict:
    return {"n_estimators": int(estimator.best_iteration_ or estimator.n_estimators)}


def _dense(params: dict, balanced: bool, seed: int, loss: str) -> Any:
    from clothprobe.classifiers.dense import DenseHeadClassifier

    return DenseHeadClassifier(learning_rate=params["learning_rate"], dropout=params["dropout"],
                               class_weight="balanced" if balanced else None, loss=loss, random_state=seed)


def _dense_chosen(estimator: Any) -> dict:
    return {"epochs_run": int(estimator.n_epochs_)}


@dataclass(frozen=True, kw_only=True)
class ClassifierSpec:
    """One head: how to build it, what to search, how its fitted estimator is stored.

    ``build(params, balanced, seed, loss)``: ``params`` is a grid entry plus, from the fit, ``columns`` (the
    input's width).
    ``prepare(estimator, X, y, X_stop, y_stop, threads, made_from)`` (optional): work every grid entry shares,
    done once per search on the first entry's estimator (LightGBM's binning), on ``threads`` threads; it
    returns extra ``fit`` arguments. For resampled rows (SMOTE's), ``made_from`` is what it returned for the
    rows they were made from (else None).
    ``stops_early``: a share of the training rows is held out of the fit for early stopping (``X_stop``).
    ``chosen`` reports settings the fit itself chose (rounds, epochs). ``scale`` puts a StandardScaler first.
    ``path``: the grid is fitted in order on one estimator that warm-starts from the previous entry.
    ``concurrent``: its fits keep no process-wide state, so a search may run them in threads side by side
    (not the Keras head, whose seeding is process-wide).
    ``tap_search``: how ``--taps auto`` searches: ``joint`` fits every grid entry on every candidate tap set;
    ``first-entry`` compares the tap sets at the grid's first entry (a SMOTE run's with class weights) and
    searches the rest of the grid on the tap set kept (for heads whose fits cost seconds each: a quarter to a
    half of the fits; the grid's cheapest entry goes first).
    ``run_taps``: the ``--taps`` request ``cli run`` fits this head with (``auto`` everywhere else): a head
    whose wide tap sets cost several times its fit takes the final tap there, to keep the main job in its
    minutes (docs/guide/run.md).
    """

    name: str
    build: Callable[[dict, bool, int, str], Any]
    grid: tuple[dict, ...]
    file_format: str  # "linear" | "lightgbm" | "keras": see classifiers/modelio.py
    scale: bool = True
    path: bool = False
    stops_early: bool = False
    prepare: Callable[[Any, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int, dict | None], dict] | None = None
    chosen: Callable[[Any], dict] = field(default=lambda est: {})
    concurrent: bool = True
    tap_search: str = "joint"

    def __post_init__(self) -> None:
        if self.tap_search not in TAP_SEARCHES:
            raise ValueError(f"{self.name}: tap_search must be one of {', '.join(TAP_SEARCHES)}, not {self.tap_search!r}")
    run_taps: str = "auto"


CLASSIFIERS: dict[str, ClassifierSpec] = {
    s.name: s
    for s in (
        ClassifierSpec(name="logreg", build=_logreg, grid=tuple({"C": c} for c in (0.003, 0.01, 0.03, 0.1)),
                       file_format="linear", path=True),
        ClassifierSpec(
            name="lgbm", build=_lgbm,
            # the faster learning rate first: --taps auto compares the tap sets at the first entry, and 0.1 needs
            # about half the rounds of 0.05 (docs/guide/taps.md)
            grid=tuple({"num_leaves": nl, "learning_rate": lr} for nl in (7, 15) for lr in (0.1, 0.05)),
            file_format="lightgbm", scale=False, stops_early=True, prepare=_lgbm_prepare, chosen=_lgbm_chosen,
            tap_search="first-entry",
            run_taps="final",  # auto: 7 early-stopped fits on up to 5.6x the columns where the final tap
            # takes 4, for +1-2 pp on validation; cli run fits it 3 times (docs/guide/taps.md)
        ),
        ClassifierSpec(
            name="dense", build=_dense, grid=tuple({"learning_rate": 1e-3, "dropout": d} for d in (0.2, 0.5)),
            file_format="keras", chosen=_dense_chosen, concurrent=False, tap_search="first-entry",
            run_taps="final",  # auto: 5 fits on up to 5.6x the
            # columns where the final tap takes 2, for +1-5 pp on validation (docs/guide/taps.md)
        ),
    )
}


def _choice(kind: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ClothprobeError(f"Unknown {kind} {value!r}; choose one of: {', '.join(choices)}")
    return value


def get_classifier(name: str) -> ClassifierSpec:
    return CLASSIFIERS[_choice("classifier", name, list(CLASSIFIERS))]


def check_balance(balance: str) -> str:
    return _choice("balance", balance, BALANCES)


def check_loss(loss: str) -> str:
    return _choice("loss", loss, LOSSES)


def make_pipeline(spec: ClassifierSpec, params: dict, balance: str, seed: int, min_class_count: int,
                  loss: str = "categorical") -> Any:
    """An imbalanced-learn Pipeline, so SMOTE resamples only the data ``fit`` is given (training rows)."""
    from imblearn.over_sampling import SMOTE
    from imblearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = []
    if spec.scale:
        steps.append(("scale", StandardScaler()))
    if balance == "smote":
        if min_class_count < 2:
            raise ClothprobeError("SMOTE needs at least 2 training images in every class; use --balance weights.")
        steps.append(("smote", SMOTE(k_neighbors=min(SMOTE_NEIGHBOURS, min_class_count - 1), random_state=seed)))
    steps.append(("clf", spec.build(params, balance == "weights", seed, loss)))
    return Pipeline(steps)
