"""The LightGBM head as a scikit-learn estimator that bins its rows once for a whole search.

LightGBM's scikit-learn wrapper (``LGBMClassifier``) bins the training rows (each column's bin edges, then
every value's bin) on every ``fit``, so a search of 4 settings on 4 tap sets binned the same rows 16 times;
on Xception's 14 taps (11,544 columns) one binning cost 11 CPU seconds, about what the ~330 rounds of a
whole early-stopped fit cost (measured on the real cache). ``BinnedRows`` bins the rows once (LightGBM's own ``Dataset``) and
the rows early stopping watches on the same edges; ``BoostedTrees.fit(X, y, binned=...)`` then trains on
them through LightGBM's native API with the parameters ``LGBMClassifier`` passes for the same settings, so the
trees are the ones ``LGBMClassifier`` would grow on those rows. Feature bundling is off: on these dense
embeddings it made binning 1.8x and each round 1.4x slower on every Xception tap, for the same trees.

A ``BinnedRows`` is read-only once made: each fit trains on a copy of its bins (``Dataset.subset``: binned
values are copied, nothing is binned again) that carries that fit's own row weights, so fits running at the
same time, or with another balance mode's weights, never see each other's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.validation import check_is_fitted, validate_data

MAX_BIN = 63


class BinnedRows:
    """Rows binned once by LightGBM: ``X`` (with labels ``y``) and, when given, ``X_stop``/``y_stop`` (the rows
    early stopping watches) on the same bin edges. ``params``: LightGBM's dataset parameters; ``threads``: for
    the binning (each column on its own: it shares out well), the fits keep their own. ``on``: rows made from
    another ``BinnedRows``' rows (SMOTE's, from the training rows) take its bin edges and its early-stopping
    rows instead of finding their own: edges from the real rows, not the synthetic ones, and 30% less binning
    (finding the edges of 11,544 columns is that share of binning them)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, X_stop: np.ndarray | None = None,
                 y_stop: np.ndarray | None = None, *, params: dict, threads: int = 1,
                 on: BinnedRows | None = None) -> None:
        import lightgbm

        self.shape = X.shape
        self.classes = np.unique(y)
        self.params = {**params, "num_threads": threads}  # every Dataset made from these bins: the same params
        self._bins = lightgbm.Dataset(X, np.searchsorted(self.classes, y), params=self.params, free_raw_data=True,
                                      reference=None if on is None else on._bins).construct()
        self._stop = None if on is None else on._stop
        if X_stop is not None and on is None:
            self._stop = lightgbm.Dataset(X_stop, np.searchsorted(self.classes, y_stop), reference=self._bins,
                                          params=self.params, free_raw_data=True).construct()

    @property
    def has_stop(self) -> bool:
        return self._stop is not None

    def matches(self, X: np.ndarray, y: np.ndarray) -> bool:
        return X.shape == self.shape and np.array_equal(np.unique(y), self.classes)

    def training(self, weight: np.ndarray | None) -> Any:
        """A ``Dataset`` of its own over the binned training rows, with ``weight`` (None: unweighted)."""
        data = self._bins.subset(np.arange(self.shape[0]), params=self.params).construct()
        if weight is not None:
            data.set_weight(np.asarray(weight, np.float64))
        return data

    def stopping(self) -> Any:
        """A ``Dataset`` of its own over the binned early-stopping rows (unweighted, as LGBMClassifier's)."""
        return self._stop.subset(np.arange(self._stop.num_data()), params=self.params).construct()


class BoostedTrees(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (LightGBM), with ``LGBMClassifier``'s parameters and defaults for those it has.

    ``fit(X, y, binned=None, X_stop=None, y_stop=None)``: ``binned`` (a ``BinnedRows`` of these rows, its
    early-stopping rows inside) skips the binning; with early-stopping rows, the boosting stops once their
    log loss has not improved by ``min_delta`` for ``patience`` rounds, and the best round is kept.
    ``booster_``: the LightGBM model; ``best_iteration_``: the round kept (0: all of them).
    """

    def __init__(self, num_leaves: int = 31, learning_rate: float = 0.1, n_estimators: int = 100,
                 colsample_bytree: float = 1.0, subsample: float = 1.0, subsample_freq: int = 0,
                 min_child_samples: int = 20, reg_lambda: float = 0.0, class_weight: str | dict | None = None,
                 patience: int = 50, min_delta: float = 0.0, random_state: int = 0, n_jobs: int = 1) -> None:
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.n_estimators = n_estimators
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.class_weight = class_weight
        self.patience = patience
        self.min_delta = min_delta
        self.random_state = random_state
        self.n_jobs = n_jobs

    def dataset_params(self) -> dict:
        """LightGBM's parameters that shape the binned rows (the same for every setting of a search)."""
        return {"max_bin": MAX_BIN, "min_data_in_leaf": self.min_child_samples, "enable_bundle": False,
                "num_threads": self.n_jobs, "seed": self.random_state, "verbose": -1}

    def _train_params(self, n_classes: int) -> dict:
        objective = {"objective": "multiclass", "num_class": n_classes, "metric": "multi_logloss"} if n_classes > 2 \
            else {"objective": "binary", "metric": "binary_logloss"}
        return {**self.dataset_params(), **objective, "boosting_type": "gbdt", "num_leaves": self.num_leaves,
                "learning_rate": self.learning_rate, "feature_fraction": self.colsample_bytree,
                "bagging_fraction": self.subsample, "bagging_freq": self.subsample_freq, "lambda_l2": self.reg_lambda,
                "lambda_l1": 0.0, "min_sum_hessian_in_leaf": 1e-3, "min_gain_to_split": 0.0,
                "deterministic": True, "force_col_wise": True}

    def fit(self, X, y, sample_weight=None, *, binned: BinnedRows | None = None,
            X_stop=None, y_stop=None):
        import lightgbm

        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        if binned is None or not binned.matches(X, y):
            binned = BinnedRows(X, y, X_stop, y_stop, params=self.dataset_params())
        self.classes_ = binned.classes
        weight = None if sample_weight is None else np.asarray(sample_weight, np.float64)
        if self.class_weight is not None:
            balanced = compute_sample_weight(self.class_weight, y)
            weight = balanced if weight is None else weight * balanced
        params = self._train_params(len(self.classes_))
        valid, callbacks = [], []
        if binned.has_stop:
            valid = [binned.stopping()]
            callbacks = [lightgbm.early_stopping(self.patience, verbose=False, min_delta=self.min_delta)]
        self.booster_ = lightgbm.train(params, binned.training(weight), num_boost_round=self.n_estimators,
                                       valid_sets=valid, callbacks=callbacks)
        self.best_iteration_ = int(self.booster_.best_iteration or 0)
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        p = np.asarray(self.booster_.predict(X, num_iteration=self.best_iteration_ or None))
        return np.column_stack([1 - p, p]) if p.ndim == 1 else p

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
