"""cli fit --unknown on synthetic caches: the reject option is chosen without test or the reporting unknowns,
saved hash-checked in the run, and measured with intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_cache

from clothprobe.classifiers import fit
from clothprobe.classifiers.openset import FILE
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import load_features
from clothprobe.featurize.cache.write import write_arrays


def unknown_cache(features: Path, seed: int = 7) -> None:
    """Three 'garment types' around centres of another seed: photos outside the dataset's classes."""
    make_cache(features, dataset="outside", seed=seed, splits={"train": (16, 16, 16)}, separation=3.0)


@pytest.fixture
def features(tmp_path: Path) -> Path:
    make_cache(tmp_path / "features")
    unknown_cache(tmp_path / "features")
    return tmp_path / "features"


def fit_unknown(features: Path, models: Path, **kw):
    (result,) = fit("clothes", features_dir=features, models_dir=models, unknown="data/outside", **kw)
    return result


def test_fit_records_the_choice_and_every_score_with_intervals(features: Path, tmp_path: Path) -> None:
    result = fit_unknown(features, tmp_path / "models")
    figures = result.metrics.openset
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["openset"]["score"] == figures["score"] and manifest["openset"]["file"] == FILE
    assert FILE in manifest["sha256"]
    assert figures["tuning"] == {"validation_known": 25, "unknown": 24}
    assert figures["types"] == {t: {"tuning": 8, "report": 8} for t in ("dress", "hat", "t-shirt")}
    report = figures["report"]
    assert report["n_known"] == 25 and report["n_unknown"] == 24
    assert set(report["scores"]) == {"msp", "energy", "knn", "mahalanobis", "combined"}
    for f in report["scores"].values():
        assert f["auroc_ci"][0] <= f["auroc"] <= f["auroc_ci"][1]
    assert report["scores"][figures["score"]]["auroc"] > 0.8  # far clusters: well above chance (0.5)
    assert report["accuracy_with_reject"] <= report["accuracy"]
    assert report["accuracy_cost_pp"] == pytest.approx(100 * (report["accuracy"] - report["accuracy_with_reject"]))


def _poison_test(features: Path, out: Path) -> None:
    """A copy of the dataset's cache whose test rows are replaced by noise far from everything."""
    cache = load_features(features / "clothes" / "xception.h5")
    test = cache.splits["test"]
    rng = np.random.default_rng(99)
    test.embeddings = rng.normal(0, 50, test.embeddings.shape).astype(np.float32)
    test.flip = test.embeddings.copy()
    (out / "clothes").mkdir(parents=True)
    write_arrays(out / "clothes" / "xception.h5", cache.header, cache.splits)
    unknown_cache(out)


def test_the_choice_never_looks_at_test(features: Path, tmp_path: Path) -> None:
    clean = fit_unknown(features, tmp_path / "a")
    _poison_test(features, tmp_path / "poisoned")
    poisoned = fit_unknown(tmp_path / "poisoned", tmp_path / "b")
    entry = lambda r: json.loads((r.run_dir / "manifest.json").read_text())["openset"]
    assert entry(clean) == entry(poisoned)
    assert (clean.run_dir / FILE).read_bytes() == (poisoned.run_dir / FILE).read_bytes()
    assert clean.metrics.openset["report"] != poisoned.metrics.openset["report"]  # test was measured, not used


def test_the_choice_never_looks_at_the_reporting_unknowns(features: Path, tmp_path: Path) -> None:
    """Changing the unknown photos of the reporting part leaves the choice as it was."""
    from clothprobe.classifiers.openset import split_unknown

    clean = fit_unknown(features, tmp_path / "a")
    cache = load_features(features / "outside" / "xception.h5")
    part = cache.splits["train"]
    _, report = split_unknown(part.labels, seed=0)
    part.embeddings[report] = np.random.default_rng(5).normal(0, 50, part.embeddings[report].shape)
    write_arrays(features / "outside" / "xception.h5", cache.header, cache.splits)
    changed = fit_unknown(features, tmp_path / "b")
    assert (clean.run_dir / FILE).read_bytes() == (changed.run_dir / FILE).read_bytes()


def test_unknown_needs_validation_selection_and_the_same_recipe(features: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="--unknown needs --select validation"):
        fit_unknown(features, tmp_path / "m", select="cv")
    make_cache(tmp_path / "features", dataset="outside", dim=12, splits={"train": (4, 4, 4)})
    with pytest.raises(ClothprobeError, match="another recipe"):
        fit_unknown(features, tmp_path / "m")
    with pytest.raises(ClothprobeError, match="No xception cache for dataset 'elsewhere'"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "m", unknown="elsewhere")


def test_a_tampered_openset_file_is_refused(features: Path, tmp_path: Path) -> None:
    from clothprobe.runs.predicting import Predictor

    result = fit_unknown(features, tmp_path / "models")
    with open(result.run_dir / FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ClothprobeError, match="changed after fitting"):
        Predictor(result.run_dir)
