"""Every head is chosen the same way: its fitting (early stopping included) never sees the rows it is
then scored on. Spies record what each estimator's ``fit`` is given, as the SMOTE test does."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler
from synthetic import make_cache

from clothprobe.classifiers import fit, load_feature_set, select
from clothprobe.classifiers.registry import CLASSIFIERS


@pytest.fixture(autouse=True)
def short_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """One dense candidate, few epochs: what is tested is what the fit is given, not how well it learns."""
    from clothprobe.classifiers import dense

    monkeypatch.setitem(CLASSIFIERS, "dense", replace(CLASSIFIERS["dense"], grid=CLASSIFIERS["dense"].grid[:1]))
    monkeypatch.setattr(dense.DenseHeadClassifier, "__init__", _with_epochs(dense.DenseHeadClassifier.__init__, 5))


def _with_epochs(init, epochs: int):  # noqa: ANN001, ANN202
    def wrapped(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        init(self, *args, **{**kwargs, "epochs": epochs})

    wrapped.__signature__ = __import__("inspect").signature(init)
    return wrapped


def _rows(X: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.asarray(X, np.float64)}


ESTIMATORS = {
    "logreg": ("sklearn.linear_model", "LogisticRegression"),
    "lgbm": ("clothprobe.classifiers.boosting", "BoostedTrees"),
    "dense": ("clothprobe.classifiers.dense", "DenseHeadClassifier"),
}


def _spy(monkeypatch: pytest.MonkeyPatch, clf: str) -> list[dict]:
    """Record the rows each fit of ``clf``'s estimator gets, and the rows it may stop early on (LightGBM's are
    binned once for the whole grid: recorded as they are binned, with the rows binned for fitting)."""
    import importlib

    from clothprobe.classifiers import boosting

    module, name = ESTIMATORS[clf]
    cls = getattr(importlib.import_module(module), name)
    original, binning = cls.fit, boosting.BinnedRows.__init__
    seen: list[dict] = []

    def spy(self, X, y, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append({"kind": "fit", "fit": np.asarray(X, np.float64).copy(), "stop": []})
        return original(self, X, y, **kw)

    def bin_spy(self, X, y, X_stop=None, y_stop=None, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append({"kind": "bin", "fit": np.asarray(X, np.float64).copy(),
                     "stop": [] if X_stop is None else [np.asarray(X_stop, np.float64)]})
        return binning(self, X, y, X_stop, y_stop, **kw)

    monkeypatch.setattr(cls, "fit", spy)
    monkeypatch.setattr(boosting.BinnedRows, "__init__", bin_spy)
    return seen


@pytest.mark.parametrize("clf", ["logreg", "lgbm", "dense"])
def test_validation_rows_never_reach_a_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clf: str) -> None:
    make_cache(tmp_path / "f")
    data = load_feature_set("xception", "clothes", tmp_path / "f").splits
    seen = _spy(monkeypatch, clf)
    (result,) = fit("clothes", clf=clf, balance="none", select="validation", features_dir=tmp_path / "f",
                    models_dir=tmp_path / "m")
    assert seen and result.metrics.selection == "validation split"
    scale = CLASSIFIERS[clf].scale  # the estimator gets scaled rows; the scaler is fitted on train alone
    to_model = StandardScaler().fit(data["train"].X).transform if scale else (lambda X: X)
    train, val, test = (_rows(to_model(data[s].X)) for s in ("train", "validation", "test"))
    for call in seen:
        fitted = _rows(call["fit"])
        assert fitted <= train and not fitted & val and not fitted & test
        for stop in call["stop"]:  # LightGBM's early stopping: held-out training rows
            assert _rows(stop) <= train and not _rows(stop) & fitted and not _rows(stop) & val
    if clf == "lgbm":  # the rows are binned once, with their early-stopping rows, for every grid entry
        assert sum(1 for call in seen if call["stop"]) == 1


@pytest.mark.parametrize("clf", ["logreg", "lgbm"])
@pytest.mark.slow
def test_cross_validation_never_fits_on_the_rows_it_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           clf: str) -> None:
    make_cache(tmp_path / "f")
    data = load_feature_set("xception", "clothes", tmp_path / "f").splits
    events: list[tuple[str, set[bytes]]] = []
    fit_grid, predict_split = select._fit_grid, select.predict_split

    def grid_spy(spec, grid, X, y, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        events.append(("fit", _rows(X)))
        return fit_grid(spec, grid, X, y, *a, **k)

    def predict_spy(model, split, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        events.append(("score", _rows(split.X)))
        return predict_split(model, split, *a, **k)

    monkeypatch.setattr(select, "_fit_grid", grid_spy)
    monkeypatch.setattr(select, "predict_split", predict_spy)
    monkeypatch.setattr(sys.modules["clothprobe.classifiers.fitting"], "predict_split", predict_spy)
    seen = _spy(monkeypatch, clf)
    (result,) = fit("clothes", clf=clf, balance="none", select="cv", features_dir=tmp_path / "f",
                    models_dir=tmp_path / "m")
    assert result.metrics.selection == "5-fold CV x2 on train + validation" and result.metrics.selection_n == 87
    folds = [rows for kind, rows in events[:-2] if kind == "fit"]
    assert len(folds) == 10  # 5 folds x 2 repeats, then the refit on every row
    pool = _rows(data["train"].X) | _rows(data["validation"].X)
    current = None
    for kind, rows in events:
        if kind == "fit":
            current = rows
        elif current is not None and rows != _rows(data["test"].X):
            assert not rows & current, "a fold was scored on rows it was fitted on"
    assert events[-2] == ("fit", pool) and events[-1] == ("score", _rows(data["test"].X))  # test: once, at the end
    if clf == "lgbm":  # no scaler: the estimator's own rows, early stopping included, stay inside each fold
        for call in seen[:-1]:
            assert _rows(call["fit"]) <= pool and all(not _rows(s) & _rows(call["fit"]) for s in call["stop"])
        assert [c for c in seen if c["kind"] == "bin"][-1]["stop"] == []  # the refit: the rounds the folds chose


def test_cv_refits_on_train_and_validation(tmp_path: Path) -> None:
    make_cache(tmp_path / "f")
    (cv,) = fit("clothes", clf="logreg", select="cv", features_dir=tmp_path / "f", models_dir=tmp_path / "cv")
    (val,) = fit("clothes", clf="logreg", select="validation", features_dir=tmp_path / "f", models_dir=tmp_path / "v")
    assert cv.metrics.validation.n == 87 and val.metrics.validation.n == 25
    assert cv.metrics.calibration.n == 174 and cv.metrics.calibration.fitted_on == "out-of-fold predictions"
    assert len(cv.metrics.candidates) == len(CLASSIFIERS["logreg"].grid)


def test_steps_side_by_side_never_hold_more_cores_than_there_are() -> None:
    """``Cores``: steps of 1 and of several cores from many threads at once never hold more than ``n`` between
    them, a step asking for more than ``n`` gets ``n``, and every one of them runs."""
    import threading
    import time

    from clothprobe.classifiers.shared import Cores

    cores, lock = Cores(3), threading.Lock()
    held, peak, ran = [0], [0], []

    def step(k: int) -> None:
        with cores.hold(k):
            with lock:
                held[0] += min(k, 3)
                peak[0] = max(peak[0], held[0])
            time.sleep(0.002)
            with lock:
                held[0] -= min(k, 3)
                ran.append(k)

    threads = [threading.Thread(target=step, args=(k,)) for k in [1, 2, 5, 1, 3, 1, 2] * 6]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ran) == len(threads) and peak[0] == 3 and held[0] == 0
