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
from clothprobe.classifiers.rejection import unknown_cache_path
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import load_features
from clothprobe.featurize.cache.write import write_arrays


def unknown_cache(features: Path, seed: int = 7, name: str = "outside", sizes: tuple = (16, 16, 16)) -> Path:
    """Three 'garment types' around centres of another seed: photos outside the dataset's classes, as the folder
    ``name`` beside ``features`` (stand-in files) and its cache, made with the dataset's recipe."""
    make_cache(features, dataset=name, seed=seed, splits={"train": sizes}, separation=3.0,
               stand_ins=features.parent / name)
    return features.parent / name


@pytest.fixture
def features(tmp_path: Path) -> Path:
    make_cache(tmp_path / "features")
    unknown_cache(tmp_path / "features")
    return tmp_path / "features"


def fit_unknown(features: Path, models: Path, **kw):
    (result,) = fit("clothes", features_dir=features, models_dir=models, unknown=features.parent / "outside", **kw)
    return result


def test_unknown_cost_bounds_what_the_threshold_may_cost(features: Path, tmp_path: Path) -> None:
    strict = fit_unknown(features, tmp_path / "strict").metrics.openset
    loose = fit_unknown(features, tmp_path / "loose", unknown_cost=20).metrics.openset
    assert (strict["max_accuracy_cost"], loose["max_accuracy_cost"]) == (0.01, 0.2)
    assert loose["score"] == strict["score"] and loose["threshold"] >= strict["threshold"]
    assert loose["report"]["known_kept"] <= strict["report"]["known_kept"]
    assert loose["report"]["unknown_rejected"] >= strict["report"]["unknown_rejected"]
    with pytest.raises(ClothprobeError, match="--unknown-cost must be a finite number >= 0 and <= 100, got -1"):
        fit_unknown(features, tmp_path / "bad", unknown_cost=-1)


def test_fit_records_the_choice_and_every_score_with_intervals(features: Path, tmp_path: Path) -> None:
    result = fit_unknown(features, tmp_path / "models")
    figures = result.metrics.openset
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["openset"]["score"] == figures["score"] and manifest["openset"]["file"] == FILE
    assert FILE in manifest["sha256"]
    assert figures["tuning"] == {"validation_known": 25, "unknown": 24} and figures["max_accuracy_cost"] == 0.01
    assert figures["types"] == {t: {"tuning": 8, "report": 8} for t in ("dress", "hat", "t-shirt")}
    report = figures["report"]
    assert report["n_known"] == 25 and report["n_unknown"] == 24
    assert set(report["scores"]) == {"msp", "energy", "knn", "mahalanobis", "combined"}
    for f in report["scores"].values():
        assert f["auroc_ci"][0] <= f["auroc"] <= f["auroc_ci"][1]
    assert report["scores"][figures["score"]]["auroc"] > 0.8  # far clusters: well above chance (0.5)
    assert report["accuracy_with_reject"] <= report["accuracy"]
    assert report["accuracy_cost_pp"] == pytest.approx(100 * (report["accuracy"] - report["accuracy_with_reject"]))


def test_the_report_shows_the_reject_option_and_its_cost(features: Path, tmp_path: Path) -> None:
    from clothprobe.report import build_report

    result = fit_unknown(features, tmp_path / "models")
    fit("clothes", features_dir=features, models_dir=tmp_path / "models", balance="none")  # a run without one
    report = build_report(tmp_path / "models", tmp_path / "reports")
    (table,) = [t for t in report.sections[0].tables if t.title.startswith("Unknown garments")]
    assert [str(row[0]) for row in table.rows] == [result.metrics.id]
    figures = result.metrics.openset
    assert str(table.rows[0][1]) == figures["score"]
    assert str(table.rows[0][-1]) == f"{figures['report']['accuracy_cost_pp']:.1f}"
    assert str(table.rows[0][table.header.index("bound pp")]) == "1.0"  # the --unknown-cost the run was fitted with
    assert "Unknown garments" in report.md_path.read_text() and "Unknown garments" in report.html_path.read_text()


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
    entry = [json.loads((r.run_dir / "manifest.json").read_text())["openset"] for r in (clean, poisoned)]
    assert entry[0] == entry[1]
    assert (clean.run_dir / FILE).read_bytes() == (poisoned.run_dir / FILE).read_bytes()
    assert clean.metrics.openset["report"] != poisoned.metrics.openset["report"]  # test was measured, not used


def test_the_choice_never_looks_at_the_reporting_unknowns(features: Path, tmp_path: Path) -> None:
    """Changing the unknown photos of the reporting part leaves the choice as it was."""
    from clothprobe.classifiers.openset import split_unknown

    clean = fit_unknown(features, tmp_path / "a")
    cache = load_features(unknown_cache_path(features, features.parent / "outside", "xception"))
    part = cache.splits["train"]
    _, report = split_unknown(part.labels, seed=0)
    part.embeddings[report] = np.random.default_rng(5).normal(0, 50, part.embeddings[report].shape)
    write_arrays(unknown_cache_path(features, features.parent / "outside", "xception"), cache.header, cache.splits)
    changed = fit_unknown(features, tmp_path / "b")
    assert (clean.run_dir / FILE).read_bytes() == (changed.run_dir / FILE).read_bytes()


def test_unknown_needs_validation_selection_and_a_folder(features: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="--unknown needs --select validation"):
        fit_unknown(features, tmp_path / "m", select="cv")
    with pytest.raises(ClothprobeError, match=r"elsewhere is not a folder; give DIR/<garment type>/<image>"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "m", unknown=tmp_path / "elsewhere")


def test_an_unknown_folder_of_one_photo_is_one_line_before_any_fitting(features: Path, tmp_path: Path) -> None:
    single = unknown_cache(features, name="single", sizes=(1, 0, 0))
    with pytest.raises(ClothprobeError, match=r"single holds 1 featurized photo; --unknown needs at least 2"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "m", unknown=single)
    assert not (tmp_path / "m").exists()


def test_a_tampered_openset_file_is_refused(features: Path, tmp_path: Path) -> None:
    from clothprobe.runs.predicting import Predictor

    result = fit_unknown(features, tmp_path / "models")
    with open(result.run_dir / FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ClothprobeError, match="changed after fitting"):
        Predictor(result.run_dir)


# --- predict with the reject option: a tiny random-weights backbone on real image files ---------------------


def solid(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Known classes are noise photos; the unknown garments are flat colours (far apart for any network)."""
    from conftest import TINY, make_dataset

    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("reject")
    data = make_dataset(root / "clothes", per_class={"hat": 6, "shirt": 6, "t-shirt": 6})
    outside = root / "outside"
    for t, base in (("hoodie", (200, 30, 30)), ("polo", (30, 30, 200))):
        for i in range(8):
            solid(outside / t / f"{i}.png", tuple(min(255, c + 6 * i) for c in base))
    for folder in (data, outside):
        featurize(folder, features_dir=root / "features", **TINY)
    (result,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                    models_dir=root / "models", unknown=outside)
    return result.run_dir, data, outside


@pytest.mark.slow
def test_predict_answers_unknown_below_the_threshold_and_the_flag_turns_it_off(tiny_run) -> None:
    from clothprobe.runs.predicting import predict

    run_dir, data, outside = tiny_run
    threshold = json.loads((run_dir / "manifest.json").read_text())["openset"]["threshold"]
    result = predict([outside, data / "test"], run_dir)
    assert result.openset is not None
    for p in result.predictions:
        assert p.unknown == (p.openset_score < threshold)
        assert p.answer == ("unknown" if p.unknown else p.top(1)[0][0])
    assert any(p.unknown for p in result.predictions if "outside" in p.path)
    off = predict([outside], run_dir, unknown=False)
    assert off.openset is None and not any(p.unknown for p in off.predictions)
    assert {p.answer for p in off.predictions} <= {"hat", "shirt", "t-shirt"}


@pytest.mark.slow
def test_score_files_carry_the_answer_and_the_score(tiny_run, tmp_path: Path) -> None:
    import csv

    from typer.testing import CliRunner

    from clothprobe.cli import app

    run_dir, _, outside = tiny_run
    runner = CliRunner()
    on = runner.invoke(app, ["predict", str(outside), "--model", str(run_dir), "--format", "csv"])
    assert on.exit_code == 0, on.output
    rows = list(csv.DictReader(on.stdout.splitlines()))
    assert len(rows) == 16 and {"answer", "openset_score"} <= set(rows[0])
    assert "unknown" in {r["answer"] for r in rows}
    out = tmp_path / "scores.parquet"
    parquet = runner.invoke(app, ["predict", str(outside), "--model", str(run_dir), "--format", "parquet",
                                  "--output", str(out)])
    assert parquet.exit_code == 0, parquet.output
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert {"answer", "openset_score"} <= set(table.column_names)
    assert [r["answer"] for r in rows] == table.column("answer").to_pylist()
    off = runner.invoke(app, ["predict", str(outside), "--model", str(run_dir), "--format", "csv", "--no-unknown"])
    assert "answer" not in off.stdout.splitlines()[0]


@pytest.mark.slow
def test_load_run_exposes_the_score_and_the_answer(tiny_run) -> None:
    import clothprobe

    run_dir, _, outside = tiny_run
    photos = sorted(str(p) for p in outside.rglob("*.png"))
    plain = clothprobe.load_run(run_dir)
    scores = plain.openset_score(photos)
    assert scores.shape == (16,) and set(plain.predict(photos)) <= {"hat", "shirt", "t-shirt"}
    answers = clothprobe.load_run(run_dir, unknown=True).predict(photos)
    assert list(answers == "unknown") == list(scores < plain.unknown_threshold_)


def test_negatives_add_a_contrast_score_and_must_differ_from_the_unknown_photos(features: Path, tmp_path: Path) -> None:
    from clothprobe.classifiers.openset import load
    from clothprobe.runs.directory import read_manifest

    others, outside = unknown_cache(features, seed=11, name="others", sizes=(10, 10, 10)), features.parent / "outside"
    (result,) = fit("clothes", features_dir=features, models_dir=tmp_path / "m", unknown=outside, negatives=others)
    figures = result.metrics.openset
    assert figures["negatives"] == 30 and "knn_negatives" in figures["tuning_auroc"]
    assert "knn_negatives" in figures["report"]["scores"]
    back = load(result.run_dir, read_manifest(result.run_dir).openset)
    assert back.scorer.negatives_.shape == (30, 16)
    with pytest.raises(ClothprobeError, match="must be different photos"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "m", unknown=outside, negatives=outside)
    with pytest.raises(ClothprobeError, match="--negatives DIR is used with --unknown"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "m", negatives=others)


def test_cli_fit_unknown_prints_every_score(features: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clothprobe.cli import app

    result = CliRunner().invoke(app, ["fit", "--dataset", "clothes", "--features-dir", str(features), "--models-dir",
                                      str(tmp_path / "m"), "--unknown", str(features.parent / "outside")])
    assert result.exit_code == 0, result.output
    for name in ("msp", "energy", "knn", "mahalanobis", "combined", "(chosen)", "FPR@95"):
        assert name in result.stdout
    assert "'unknown' below" in result.stderr


@pytest.mark.parametrize("clf", ["lgbm", "logreg"])
def test_every_score_chosen_at_fit_is_computable_from_the_saved_run(features: Path, tmp_path: Path, clf: str) -> None:
    """A head whose model file keeps no logits (LightGBM) gets no energy score, so predict can compute every
    score the choice may rest on; a logistic regression keeps them (TTA and SMOTE included)."""
    from clothprobe.classifiers.data import load_feature_set
    from clothprobe.runs.predicting import Predictor

    (result,) = fit("clothes", clf=clf, balance="smote" if clf == "logreg" else "none", tta=True,
                    features_dir=features, models_dir=tmp_path / "m", unknown=features.parent / "outside")
    assert ("energy" in result.metrics.openset["tuning_auroc"]) == (clf == "logreg")
    test = load_feature_set("xception", "clothes", features).splits["test"]
    predictor = Predictor(result.run_dir)
    _, scores = predictor.from_views({"embeddings": test.X, "flip": test.X_flip})
    every = predictor.openset.every_value(openset_input(predictor, test))
    assert set(every) == set(result.metrics.openset["report"]["scores"])
    assert np.allclose(scores, every[result.metrics.openset["score"]])
    kept = ~predictor.openset.is_unknown(scores)
    assert kept.mean() == pytest.approx(result.metrics.openset["report"]["known_kept"])


def openset_input(predictor, split):  # noqa: ANN001, ANN201
    from clothprobe.classifiers.openset import head_output
    from clothprobe.runs.predicting import head_proba

    return head_output(predictor.model, split.X, head_proba(predictor, {"embeddings": split.X, "flip": split.X_flip}),
                       flipped=split.X_flip if predictor.manifest.tta else None)
