"""fit() on small synthetic caches: every head and balance mode, honest selection, safe model files."""

from __future__ import annotations

import csv
import json
import pickle
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from synthetic import CLASSES, SIZES, make_cache

from clothprobe.classifiers import fit, load_feature_set, load_model
from clothprobe.classifiers.registry import BALANCES, CLASSIFIERS, LGBM_MAX_ROUNDS
from clothprobe.errors import ClothprobeError
from clothprobe.runs import directory as rundir


def majority(split: str) -> float:
    """What predicting the largest class scores on a synthetic split: the bar any honest head must clear."""
    return max(SIZES[split]) / sum(SIZES[split])


@pytest.fixture(autouse=True)
def one_dense_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense head trains for seconds per candidate; one candidate is enough to test its plumbing."""
    monkeypatch.setitem(CLASSIFIERS, "dense", replace(CLASSIFIERS["dense"], grid=CLASSIFIERS["dense"].grid[:1]))


@pytest.fixture
def features(tmp_path: Path) -> Path:
    make_cache(tmp_path / "features")
    return tmp_path / "features"


def run(features: Path, tmp_path: Path, **kw):
    return fit("clothes", features_dir=features, models_dir=tmp_path / "models", **kw)


@pytest.mark.parametrize("clf", list(CLASSIFIERS))
@pytest.mark.parametrize("balance", BALANCES)
@pytest.mark.slow
def test_every_classifier_and_balance(features: Path, tmp_path: Path, clf: str, balance: str) -> None:
    (result,) = run(features, tmp_path, clf=clf, balance=balance)
    m = result.metrics
    assert result.run_dir == tmp_path / "models" / "clothes" / "xception" / f"{clf}-{balance}"
    assert m.selection == "validation split" and m.selection_n == 25
    # well-separated blobs: far above predicting the majority class (56% here), on both splits
    assert m.validation.accuracy >= majority("validation") + 0.3 and m.test.accuracy >= majority("test") + 0.3
    assert m.test.macro_f1 > 0.8 and m.test.balanced_accuracy > 0.8  # the majority class would give 0.24 / 0.33
    assert m.params in [c["params"] for c in m.candidates]
    assert set(m.test.per_class) == set(CLASSES)
    assert np.array(m.test.confusion_matrix).sum() == 25
    assert m.test.interval("accuracy")[0] <= m.test.accuracy <= m.test.interval("accuracy")[1]
    assert m.calibration.fitted_on == "validation split" and m.calibration.temperature > 0
    for name in ("manifest.json", "metrics.json", "predictions.csv"):
        assert (result.run_dir / name).is_file()
    loaded = load_model(result.run_dir)
    test = load_feature_set("xception", "clothes", features).splits["test"]
    proba = loaded.predict_proba(test.X)
    with open(result.run_dir / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    saved = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(proba, saved, atol=1e-5)
    assert [r["path"] for r in rows] == list(test.paths)


def test_smote_sees_training_rows_only(features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imblearn.over_sampling import SMOTE

    seen: list[np.ndarray] = []
    original = SMOTE.fit_resample

    def spy(self, X, y):  # noqa: ANN001, ANN202
        seen.append(np.asarray(X).copy())
        return original(self, X, y)

    monkeypatch.setattr(SMOTE, "fit_resample", spy)
    run(features, tmp_path, clf="logreg", balance="smote")
    data = load_feature_set("xception", "clothes", features).splits
    scaled_train_rows = len(data["train"])
    assert seen and all(len(X) == scaled_train_rows for X in seen)
    # SMOTE gets scaled features; compare after the same scaling, fitted on train
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(data["train"].X)
    train_rows = {r.tobytes() for r in scaler.transform(data["train"].X).astype(seen[0].dtype)}
    for split in ("validation", "test"):
        other = {r.tobytes() for r in scaler.transform(data[split].X).astype(seen[0].dtype)}
        assert all(r.tobytes() not in other for X in seen for r in X)
    assert all(r.tobytes() in train_rows for X in seen for r in X)


@pytest.mark.parametrize("clf", ["logreg", "lgbm"])
def test_selection_never_looks_at_test(tmp_path: Path, clf: str) -> None:
    make_cache(tmp_path / "a", seed=3)
    # b: the same cache with the test labels shuffled and the test features replaced by noise
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.cache.write import write_arrays

    cache = load_features(tmp_path / "a" / "clothes" / "xception.h5")
    rng = np.random.default_rng(0)
    test = cache.splits["test"]
    splits = {**cache.splits, "test": replace(test, labels=rng.permutation(test.labels),
                                              embeddings=rng.normal(size=test.embeddings.shape).astype(np.float32))}
    (tmp_path / "b" / "clothes").mkdir(parents=True)
    write_arrays(tmp_path / "b" / "clothes" / "xception.h5", cache.header, splits)
    (a,) = fit("clothes", clf=clf, features_dir=tmp_path / "a", models_dir=tmp_path / "ma")
    (b,) = fit("clothes", clf=clf, features_dir=tmp_path / "b", models_dir=tmp_path / "mb")
    assert a.metrics.params == b.metrics.params and a.metrics.chosen == b.metrics.chosen
    untimed = [[{k: v for k, v in c.items() if k != "seconds"} for c in r.metrics.candidates] for r in (a, b)]
    assert untimed[0] == untimed[1]
    assert a.metrics.validation == b.metrics.validation and a.metrics.calibration == b.metrics.calibration
    assert a.metrics.test != b.metrics.test


@pytest.mark.slow
def test_cross_validation_without_validation_split(tmp_path: Path) -> None:
    make_cache(tmp_path / "f", splits={"train": (40, 12, 14), "test": (10, 5, 5)})
    (result,) = fit("clothes", clf="lgbm", features_dir=tmp_path / "f", models_dir=tmp_path / "m")
    m = result.metrics
    assert m.selection == "5-fold CV x2 on train" and m.selection_n == 66
    assert m.validation.source.startswith("out of fold") and m.calibration.fitted_on == "out-of-fold predictions"
    assert m.test.accuracy >= 0.5 + 0.3  # majority class: 50%
    # the rounds are early-stopped in each fold (well under the cap), and the saved refit has exactly as many
    import lightgbm

    assert 1 <= m.chosen["n_estimators"] < LGBM_MAX_ROUNDS
    saved = lightgbm.Booster(model_file=str(result.run_dir / rundir.read_manifest(result.run_dir).model["file"]))
    assert saved.current_iteration() == m.chosen["n_estimators"]


@pytest.mark.parametrize("clf", list(CLASSIFIERS))
@pytest.mark.slow
def test_same_seed_same_model_and_metrics(features: Path, tmp_path: Path, clf: str) -> None:
    (a,) = fit("clothes", clf=clf, features_dir=features, models_dir=tmp_path / "a")
    (b,) = fit("clothes", clf=clf, features_dir=features, models_dir=tmp_path / "b")
    drop = ("fit_seconds", "predict_seconds")
    same = [{k: v for k, v in asdict(r.metrics).items() if k not in drop} for r in (a, b)]
    for metrics in same:  # timings differ run to run
        metrics["candidates"] = [{k: v for k, v in c.items() if k != "seconds"} for c in metrics["candidates"]]
    assert same[0] == same[1]
    assert (a.run_dir / "predictions.csv").read_text() == (b.run_dir / "predictions.csv").read_text()


@pytest.mark.parametrize("select_mode", ["validation", "cv"])
def test_each_grid_entry_is_timed_in_the_metrics(features: Path, tmp_path: Path, select_mode: str) -> None:
    (result,) = fit("clothes", clf="logreg", select=select_mode, features_dir=features, models_dir=tmp_path / "m")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    seconds = [c["seconds"] for c in metrics["candidates"]]
    assert len(seconds) == len(CLASSIFIERS["logreg"].grid) and all(s > 0 for s in seconds)
    assert sum(seconds) <= metrics["fit_seconds"]  # the estimators alone, within the whole search


def _untimed(result) -> dict:  # a FitResult: what must not depend on how the fits were scheduled
    metrics = {k: v for k, v in asdict(result.metrics).items() if k not in ("fit_seconds", "predict_seconds")}
    metrics["candidates"] = [{k: v for k, v in c.items() if k != "seconds"} for c in metrics["candidates"]]
    return {"metrics": metrics, "predictions": (result.run_dir / "predictions.csv").read_text()}


def test_fits_side_by_side_give_what_one_core_gives(features: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Logistic regression's searches and LightGBM's grid entries run side by side on two cores; one core,
    one fit at a time, gives the same runs."""
    from clothprobe.classifiers import search

    monkeypatch.setattr(search, "available_cores", lambda: 2)
    order: list[str] = []
    together = fit("clothes", clf="all", balance="all", features_dir=features, models_dir=tmp_path / "a",
                   on_result=lambda r: order.append(r.metrics.run))
    monkeypatch.setattr(search, "available_cores", lambda: 1)
    alone = fit("clothes", clf="all", balance="all", features_dir=features, models_dir=tmp_path / "b")
    assert order == [r.metrics.run for r in alone] == [f"{c}-{b}" for c in CLASSIFIERS for b in BALANCES]
    assert [_untimed(r) for r in together] == [_untimed(r) for r in alone]


@pytest.mark.parametrize("clf", ["logreg", "lgbm"])
def test_balance_modes_fitted_together_give_what_each_gives_alone(tmp_path: Path, clf: str) -> None:
    """The work the three balance modes share (scaling, rows held out for early stopping, LightGBM's binned
    rows) leaks nothing from one mode's fit into another's: each run is what fitting its mode alone gives,
    and the modes do differ (each fits its own rows or weights). Several tap sets, so that each is shared."""
    from synthetic import make_tapped_cache

    make_tapped_cache(tmp_path / "f")
    kw = {"clf": clf, "backbone": "vgg16", "features_dir": tmp_path / "f", "tta": True}
    together = fit("clothes", balance="all", models_dir=tmp_path / "all", **kw)
    alone = [fit("clothes", balance=b, models_dir=tmp_path / b, **kw)[0] for b in BALANCES]
    assert [_untimed(r) for r in together] == [_untimed(r) for r in alone]
    assert len({r.metrics.taps["chosen"] for r in together}) >= 1 and len(together[0].metrics.taps["candidates"]) > 1
    assert len({(r.run_dir / "predictions.csv").read_text().split("\n", 1)[1] for r in together}) == 3


def test_lgbm_bins_its_rows_once_per_tap_set_for_unweighted_and_weighted_fits(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A tap set's training rows are binned once for every grid entry of balance modes none and weights, and
    SMOTE's rows once more, on the tap set kept only (its tap sets are compared by the weighted fits); never
    per fit."""
    from synthetic import make_tapped_cache

    from clothprobe.classifiers import boosting

    make_tapped_cache(tmp_path / "f")
    binned: list[tuple[int, int]] = []
    original = boosting.BinnedRows.__init__

    def spy(self, X, y, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        binned.append(X.shape)
        original(self, X, y, *a, **k)

    monkeypatch.setattr(boosting.BinnedRows, "__init__", spy)
    results = fit("clothes", backbone="vgg16", clf="lgbm", balance="all", features_dir=tmp_path / "f",
                  models_dir=tmp_path / "m")
    tap_sets = len(results[0].metrics.taps["candidates"])
    assert tap_sets > 1 and len(binned) == tap_sets + 1
    assert sum(len(r.metrics.candidates) for r in results) == 3 * len(CLASSIFIERS["lgbm"].grid)


def test_a_smote_run_compares_tap_sets_by_class_weighted_fits_then_searches_its_grid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First-entry heads: a SMOTE run's candidate tap sets are each fitted once with class weights on the
    training rows (no synthetic rows), its record says so, and its whole grid is then searched with SMOTE's
    rows on the tap set kept; SMOTE's rows are binned on the training rows' edges."""
    from synthetic import make_tapped_cache

    from clothprobe.classifiers import boosting

    make_tapped_cache(tmp_path / "f")
    fitted: list[tuple[int, int, object, float]] = []
    original = boosting.BoostedTrees.fit

    def spy(self, X, y, **kw):  # noqa: ANN001, ANN003, ANN202
        fitted.append((X.shape[0], X.shape[1], self.class_weight, self.learning_rate, kw["binned"]))
        return original(self, X, y, **kw)

    monkeypatch.setattr(boosting.BoostedTrees, "fit", spy)
    (result,) = fit("clothes", backbone="vgg16", clf="lgbm", balance="smote", features_dir=tmp_path / "f",
                    models_dir=tmp_path / "m")
    grid, taps = CLASSIFIERS["lgbm"].grid, result.metrics.taps
    widths = [c["columns"] for c in taps["candidates"]]
    kept = widths[[c["name"] for c in taps["candidates"]].index(taps["chosen"])]
    compared, searched = fitted[: len(widths)], fitted[len(widths) :]
    assert taps["compared_with"] == "weights" and len(widths) > 1
    assert sorted(f[1] for f in compared) == sorted(widths)
    assert {(f[2], f[3]) for f in compared} == {("balanced", grid[0]["learning_rate"])}
    assert [(f[1], f[2], f[3]) for f in searched] == [(kept, None, g["learning_rate"]) for g in grid]
    assert searched[0][0] > compared[0][0]  # SMOTE's synthetic rows, only once the tap set is kept
    assert [c["params"] for c in result.metrics.candidates] == list(grid)
    plain, synthetic = compared[[f[1] for f in compared].index(kept)][4], searched[0][4]
    assert synthetic._bins.reference is plain._bins  # the real rows' bin edges
    from clothprobe.report import build_report

    build_report(tmp_path / "m", tmp_path / "report")
    assert "lgbm-smote (weights fits)" in (tmp_path / "report" / "report.md").read_text()


def test_smote_rows_take_the_bin_edges_of_the_rows_they_were_made_from() -> None:
    """``BinnedRows(on=...)``: a column the real rows hold 3 values of keeps their 3 bins, however many values
    the synthetic rows between them take (binned on their own, they get many more), and early stopping watches
    the same binned rows."""
    from clothprobe.classifiers.boosting import MAX_BIN, BinnedRows

    rng = np.random.default_rng(0)
    real = rng.choice([0.0, 1.0, 2.0], size=(300, 2)).astype(np.float32)
    synthetic = rng.uniform(0, 2, size=(600, 2)).astype(np.float32)
    y, y_syn = np.arange(300) % 3, np.arange(600) % 3
    params = {"max_bin": MAX_BIN, "min_data_in_leaf": 5, "enable_bundle": False, "verbose": -1}
    plain = BinnedRows(real, y, real[:30], y[:30], params=params)
    alone = BinnedRows(synthetic, y_syn, params=params)
    on = BinnedRows(synthetic, y_syn, params=params, on=plain)
    assert alone._bins.feature_num_bin(0) > 10 and on._bins.feature_num_bin(0) == plain._bins.feature_num_bin(0) <= 4
    assert on.has_stop and on.stopping().num_data() == 30


def test_lgbm_compares_tap_sets_at_its_first_setting_then_searches_its_grid_on_the_kept_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tap_search="first-entry"``: every candidate tap set is fitted with the grid's first entry and scored on
    validation; the rest of the grid is fitted on the best tap set only; the run's settings are the best of the
    whole grid there, chosen as ``select`` chooses."""
    from synthetic import make_tapped_cache

    from clothprobe.classifiers import boosting
    from clothprobe.classifiers.select import best_candidate

    make_tapped_cache(tmp_path / "f")
    fitted: list[tuple[int, int, float]] = []
    original = boosting.BoostedTrees.fit

    def spy(self, X, y, **kw):  # noqa: ANN001, ANN003, ANN202
        fitted.append((X.shape[1], self.num_leaves, self.learning_rate))
        return original(self, X, y, **kw)

    monkeypatch.setattr(boosting.BoostedTrees, "fit", spy)
    (result,) = fit("clothes", backbone="vgg16", clf="lgbm", balance="none", features_dir=tmp_path / "f",
                    models_dir=tmp_path / "m")
    grid, taps = CLASSIFIERS["lgbm"].grid, result.metrics.taps
    first = (grid[0]["num_leaves"], grid[0]["learning_rate"])
    widths = [c["columns"] for c in taps["candidates"]]
    kept = max(range(len(widths)), key=lambda i: (taps["candidates"][i]["accuracy"], -taps["candidates"][i]["log_loss"], -i))
    assert taps["chosen"] == taps["candidates"][kept]["name"] and len(widths) == 2
    assert sorted(fitted[: len(widths)]) == sorted((w, *first) for w in widths)
    assert fitted[len(widths) :] == [(widths[kept], g["num_leaves"], g["learning_rate"]) for g in grid[1:]]
    candidates = result.metrics.candidates
    assert [c["params"] for c in candidates] == list(grid)
    assert result.metrics.params == candidates[best_candidate([_candidate(c) for c in candidates])]["params"]


def _candidate(record: dict):  # a metrics.json candidate as a select.Candidate
    from clothprobe.classifiers.select import Candidate

    return Candidate(record["params"], record["accuracy"], record["log_loss"], record["chosen"], record["seconds"])


def test_boosted_trees_grow_the_trees_lgbmclassifier_grows(features: Path) -> None:
    """The LightGBM head trains through the native API on rows binned once; with the same rows, settings and
    early-stopping rows, it is the model LightGBM's own scikit-learn estimator fits."""
    from lightgbm import LGBMClassifier, early_stopping

    from clothprobe.classifiers.boosting import BinnedRows, BoostedTrees

    train = load_feature_set("xception", "clothes", features).splits["train"]
    X, y, X_stop, y_stop = train.X[::2], train.y[::2], train.X[1::2], train.y[1::2]  # every class in both
    settings = {"num_leaves": 7, "learning_rate": 0.1, "n_estimators": 300, "colsample_bytree": 0.5,
                "subsample": 0.8, "subsample_freq": 1, "min_child_samples": 5, "reg_lambda": 1.0,
                "class_weight": "balanced", "random_state": 3}
    ours = BoostedTrees(**settings, patience=10, min_delta=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bins' copies and the fit agree on LightGBM's parameters: no warning
        ours.fit(X, y, binned=BinnedRows(X, y, X_stop, y_stop, params=ours.dataset_params(), threads=2))
    theirs = LGBMClassifier(**settings, max_bin=63, n_jobs=1, deterministic=True, force_col_wise=True,
                            enable_bundle=False, verbose=-1)
    theirs.fit(X, y, eval_X=(X_stop,), eval_y=(y_stop,), callbacks=[early_stopping(10, verbose=False, min_delta=1e-3)])
    assert 1 <= ours.best_iteration_ == theirs.best_iteration_ < 300
    assert np.allclose(ours.predict_proba(train.X), theirs.predict_proba(train.X), rtol=0, atol=1e-12)
    alone = BoostedTrees(**settings, patience=10, min_delta=1e-3).fit(X, y, X_stop=X_stop, y_stop=y_stop)
    assert np.array_equal(alone.predict_proba(train.X), ours.predict_proba(train.X))  # binning inside fit: the same


def test_tta_and_joined_backbones(tmp_path: Path) -> None:
    make_cache(tmp_path / "f", backbone="xception", dim=16, seed=1)
    make_cache(tmp_path / "f", backbone="vgg16", dim=8, seed=1, shuffle_rows=True)
    data = load_feature_set("vgg16+xception", "clothes", tmp_path / "f")
    assert data.splits["train"].X.shape[1] == 24 and data.has_flip
    vgg = load_feature_set("vgg16", "clothes", tmp_path / "f").splits["train"]
    row = list(vgg.paths).index(data.splits["train"].paths[5])
    assert np.array_equal(data.splits["train"].X[5, :8], vgg.X[row])  # rows matched by path, not position
    (result,) = fit("clothes", backbone="vgg16+xception", tta=True, features_dir=tmp_path / "f",
                    models_dir=tmp_path / "m")
    assert result.run_dir.name == "logreg-weights-tta" and result.run_dir.parent.name == "vgg16+xception"
    assert set(rundir.read_manifest(result.run_dir).caches) == {"vgg16", "xception"}


def test_joined_caches_with_different_images_refused(tmp_path: Path) -> None:
    make_cache(tmp_path / "f", backbone="xception")
    make_cache(tmp_path / "f", backbone="vgg16", splits={"train": (40, 10, 11), "validation": (14, 5, 6),
                                                         "test": (14, 5, 6)})
    with pytest.raises(ClothprobeError, match="do not hold the same train images"):
        load_feature_set("xception+vgg16", "clothes", tmp_path / "f")


def test_tampered_model_file_refused(features: Path, tmp_path: Path) -> None:
    (result,) = run(features, tmp_path, clf="lgbm")
    model_file = result.run_dir / "model.lgbm.txt"
    model_file.write_text(model_file.read_text().replace("learning_rate", "learning_rate ", 1))
    with pytest.raises(ClothprobeError, match="model.lgbm.txt does not match the sha256"):
        load_model(result.run_dir)


def test_wrong_cache_fingerprint_refused(features: Path, tmp_path: Path) -> None:
    (result,) = run(features, tmp_path, clf="logreg")
    with pytest.raises(ClothprobeError, match="fitted on a xception cache with fingerprint"):
        load_model(result.run_dir, fingerprints={"xception": "0000"})
    fp = load_feature_set("xception", "clothes", features).caches["xception"]["fingerprint"]
    assert load_model(result.run_dir, fingerprints={"xception": fp}).classes_.tolist() == [0, 1, 2]


@pytest.mark.slow
def test_no_pickle_written_or_read(features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("pickle used")

    results = run(features, tmp_path, clf="all", balance="weights")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    import joblib

    monkeypatch.setattr(joblib, "load", forbidden)
    for result in results:
        for f in result.run_dir.iterdir():
            head = f.read_bytes()[:2]
            assert head[:1] != b"\x80", f"{f} looks like a pickle"
        load_model(result.run_dir).predict_proba(np.zeros((2, 16), np.float32))
    assert {r.run_dir.name for r in results} == {"logreg-weights", "lgbm-weights", "dense-weights"}


def test_errors_name_file_and_choices(features: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match=r"No vgg16 cache for dataset 'clothes': not at .*vgg16.h5.*"
                                              r"Make it with: cli featurize --backbone vgg16"):
        run(features, tmp_path, backbone="vgg16")
    with pytest.raises(ClothprobeError, match="Unknown classifier 'svm'; choose one of: logreg, lgbm, dense"):
        run(features, tmp_path, clf="svm")
    with pytest.raises(ClothprobeError, match="Unknown balance 'oversample'; choose one of: none, weights, smote"):
        run(features, tmp_path, balance="oversample")
    with pytest.raises(ClothprobeError, match="Unknown backbone 'resnet'"):
        run(features, tmp_path, backbone="resnet")
    with pytest.raises(ClothprobeError, match="focal applies to the dense head"):
        run(features, tmp_path, clf="logreg", loss="focal")


@pytest.mark.slow
def test_focal_loss_dense(features: Path, tmp_path: Path) -> None:
    (result,) = run(features, tmp_path, clf="dense", loss="focal")
    assert result.run_dir.name == "dense-weights-focal" and result.metrics.loss == "focal"
    assert result.metrics.test.accuracy >= majority("test") + 0.3


def test_warm_started_path_matches_cold_fits(features: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """logreg fits its C grid as a warm-started path; each entry must still be that C's solution
    (checked at a tight tolerance, so the comparison is about the path, not the stopping rule)."""
    from dataclasses import replace as dc_replace

    from clothprobe.classifiers import registry
    from clothprobe.classifiers.select import _fit_grid

    monkeypatch.setattr(registry, "LOGREG_TOL", 1e-8)

    spec = CLASSIFIERS["logreg"]
    train = load_feature_set("xception", "clothes", features).splits["train"]
    warm, _ = _fit_grid(spec, spec.grid, train.X, train.y, "none", 0, "categorical")
    for params, model in zip(spec.grid, warm):
        (cold,), _ = _fit_grid(dc_replace(spec, path=False), [params], train.X, train.y, "none", 0, "categorical")
        assert model[-1].C == params["C"]
        assert np.allclose(model.predict_proba(train.X), cold.predict_proba(train.X), atol=1e-3)


def test_one_class_dataset_is_refused(tmp_path: Path) -> None:
    make_cache(tmp_path / "f", splits={"train": (10, 0, 0), "validation": (3, 0, 0)})
    with pytest.raises(ClothprobeError, match="images of 1 class.*dress.*at least 2 classes"):
        fit("clothes", features_dir=tmp_path / "f", models_dir=tmp_path / "m")


def test_the_only_dataset_needs_no_flag(tmp_path: Path) -> None:
    make_cache(tmp_path / "f")
    (result,) = fit(features_dir=tmp_path / "f", models_dir=tmp_path / "m")
    assert result.metrics.dataset == "clothes"
    make_cache(tmp_path / "f", dataset="shop")
    with pytest.raises(ClothprobeError, match="Several datasets are featurized under .*: clothes, shop.*--dataset"):
        fit(features_dir=tmp_path / "f", models_dir=tmp_path / "m")
    with pytest.raises(ClothprobeError, match="No feature caches under .*cli featurize --data DIR"):
        fit(features_dir=tmp_path / "none", models_dir=tmp_path / "m")


def test_cache_written_elsewhere_is_found_through_the_catalog(tmp_path: Path) -> None:
    from clothprobe.featurize import catalog

    path = make_cache(tmp_path / "elsewhere")
    moved = tmp_path / "my-cache.h5"
    path.rename(moved)
    catalog.record(tmp_path / "features", dataset="clothes", backbone="xception", cache_path=moved,
                   data_root=tmp_path)
    (result,) = fit(features_dir=tmp_path / "features", models_dir=tmp_path / "m")
    assert result.metrics.dataset == "clothes" and catalog.last_data(tmp_path / "features") == tmp_path
    assert catalog.datasets(tmp_path / "features") == ["clothes"]


def test_options_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="Unknown selection 'holdout'; choose one of: validation, cv"):
        fit("clothes", select="holdout", features_dir=tmp_path / "nothing-here")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(ClothprobeError, match="is not a clothprobe run"):
        fit("clothes", out=tmp_path / "photos", features_dir=tmp_path / "nothing-here")


def _rehash(run_dir: Path) -> None:
    """Make the manifest's hashes match the files again, as an attacker who can write the folder would."""
    manifest = rundir.read_manifest(run_dir)
    manifest.sha256 = {name: rundir.file_sha256(run_dir / name) for name in manifest.sha256}
    (run_dir / "manifest.json").write_text(rundir._dump(manifest))


def test_a_pickle_or_a_bomb_behind_a_matching_hash_is_refused(features: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from clothprobe.classifiers import modelio

    (result,) = run(features, tmp_path, clf="logreg")
    model = result.run_dir / "model.npz"
    model.write_bytes(pickle.dumps({"a": 1}))
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="model.npz is not a readable linear model"):
        load_model(result.run_dir)
    np.savez(model, coef=np.array([{"a": 1}], dtype=object), intercept=np.zeros(3))  # an object array is a pickle
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="model.npz is not a readable linear model"):
        load_model(result.run_dir)
    monkeypatch.setattr(modelio, "LINEAR_MAX_BYTES", 1 << 20)
    with zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as z:  # 2 MB of zeros in a few kB
        z.writestr("coef.npy", bytes(2 << 20))
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="model.npz is not a readable linear model.*larger than any"):
        load_model(result.run_dir)
    np.savez(model, coef=np.zeros((7, 16)), intercept=np.zeros(7))
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match=r"not a linear model of this run's 3 classes.*\(7, 16\)"):
        load_model(result.run_dir)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("scale", [True, False])
def test_a_linear_head_predicts_what_scikit_learn_does(tmp_path: Path, n_classes: int, scale: bool) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from clothprobe.classifiers import modelio

    rng = np.random.default_rng(0)
    X, y = rng.normal(3, 2, (60, 5)).astype(np.float32), np.arange(60) % n_classes
    X[np.arange(60), y] += 2
    steps = [("scale", StandardScaler())] if scale else []
    pipeline = Pipeline([*steps, ("clf", LogisticRegression(C=0.5))]).fit(X, y)
    entry = modelio.save_model(pipeline, "linear", tmp_path)
    predict, logits = modelio._load_linear(tmp_path / entry["file"], n_classes)
    new = rng.normal(3, 2, (20, 5)).astype(np.float32)
    assert np.allclose(predict(new), pipeline.predict_proba(new), rtol=0, atol=1e-6)
    assert np.allclose(logits(new), pipeline.decision_function(new), rtol=0, atol=1e-6)
    with pytest.raises(ClothprobeError, match=r"expects 5-d embeddings, got an array of shape \(20, 4\)"):
        predict(new[:, :4])


def test_a_run_written_before_the_linear_format_still_loads(features: Path, tmp_path: Path) -> None:
    """Runs of format ``skops`` (the whole pipeline in ``model.skops``) stay usable."""
    import skops.io
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    (result,) = run(features, tmp_path, clf="logreg")
    before = load_model(result.run_dir).predict_proba(np.ones((2, 16), np.float32))
    arrays = np.load(result.run_dir / "model.npz")
    scaler, clf = StandardScaler().fit(np.zeros((2, 16))), LogisticRegression()
    scaler.mean_, scaler.scale_ = arrays["mean"], arrays["scale"]
    clf.coef_, clf.intercept_, clf.classes_ = arrays["coef"], arrays["intercept"], np.arange(3)
    skops.io.dump(Pipeline([("scale", scaler), ("clf", clf)]), result.run_dir / "model.skops")
    (result.run_dir / "model.npz").unlink()
    manifest = rundir.read_manifest(result.run_dir)
    manifest.model = {**manifest.model, "format": "skops", "file": "model.skops"}
    manifest.sha256 = {"model.skops" if k == "model.npz" else k: v for k, v in manifest.sha256.items()}
    (result.run_dir / "manifest.json").write_text(rundir._dump(manifest))
    _rehash(result.run_dir)
    assert np.allclose(load_model(result.run_dir).predict_proba(np.ones((2, 16), np.float32)), before, atol=1e-6)
    (result.run_dir / "model.skops").write_bytes(pickle.dumps({"a": 1}))
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="model.skops is not a readable skops file"):
        load_model(result.run_dir)


@pytest.mark.slow
def test_a_keras_lambda_behind_a_matching_hash_is_refused(features: Path, tmp_path: Path) -> None:
    import keras

    (result,) = run(features, tmp_path, clf="dense", balance="none")
    inputs = keras.Input((16,))
    evil = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(keras.layers.Dense(3)(inputs)))
    evil.save(result.run_dir / "model.keras")
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="Cannot load .*model.keras as a safe Keras model"):
        load_model(result.run_dir)


def test_damaged_lightgbm_files_are_refused_before_lightgbm_reads_them(features: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import lightgbm

    (result,) = run(features, tmp_path, clf="lgbm")
    model = result.run_dir / "model.lgbm.txt"
    text = model.read_text()
    assert "num_class=3" in text
    model.write_text(text.replace("num_class=3", "num_class=999999999"))
    _rehash(result.run_dir)
    real = lightgbm.Booster
    monkeypatch.setattr(lightgbm, "Booster", lambda *a, **k: pytest.fail("LightGBM read a header it should not"))
    with pytest.raises(ClothprobeError, match="not a LightGBM model of this run.s 3 classes; header: num_class=999999999"):
        load_model(result.run_dir)
    monkeypatch.setattr(lightgbm, "Booster", real)
    model.write_text("tree\nversion=v4\nnum_class=3\n" + "garbage " * 100)
    _rehash(result.run_dir)
    with pytest.raises(ClothprobeError, match="is not a readable LightGBM model"):
        load_model(result.run_dir)


def test_lgbm_trees_see_a_fixed_count_of_columns_on_wide_inputs(features: Path) -> None:
    """5% of the columns per tree up to 2,048 columns; beyond, the same 102.4 columns, so a wide tap set costs
    per tree what the final layer does."""
    from clothprobe.classifiers.select import _fit_grid

    spec = CLASSIFIERS["lgbm"]
    train = load_feature_set("xception", "clothes", features).splits["train"]
    for width, share in ((16, 0.05), (2048, 0.05), (4096, 0.025), (11544, 0.05 * 2048 / 11544)):
        X = np.tile(train.X, (1, width // 16 + 1))[:, :width]
        (model,), _ = _fit_grid(spec, spec.grid[:1], X, train.y, "none", 0, "categorical")
        assert model[-1].colsample_bytree == pytest.approx(share, rel=1e-12)
        assert model[-1].booster_.num_feature() == width
