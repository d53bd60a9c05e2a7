"""cli predict on tiny images with random-weights backbones: every kind of run (logistic regression with
TTA, two backbones joined as cli run makes them, LightGBM, the dense head, end to end) gives back its own
test predictions; safe loading; calibration; one-line errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset, make_image
from test_cli import cli

from clothprobe.classifiers import fit
from clothprobe.classifiers.registry import CLASSIFIERS
from clothprobe.classifiers.stats import apply_temperature
from clothprobe.e2e import e2e
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.runs.predicting import list_images, predict

RUNS = ["vgg16/logreg-none-tta", "mobilenetv2+vgg16/logreg-weights-tta", "vgg16/lgbm-none", "vgg16/dense-none",
        "mobilenetv2/e2e-none-32px"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    for backbone in ("vgg16", "mobilenetv2"):
        featurize(data, features_dir=root / "features", tta=True, **{**TINY, "backbone": backbone})
    common = dict(features_dir=root / "features", models_dir=root / "models")
    made = [*fit("clothes", backbone="vgg16", clf="logreg", balance="none", tta=True, **common),
            *fit("clothes", backbone="mobilenetv2+vgg16", clf="logreg", balance="weights", tta=True, **common),
            *fit("clothes", backbone="vgg16", clf="lgbm", balance="none", **common)]
    dense = CLASSIFIERS["dense"]
    CLASSIFIERS["dense"] = replace(dense, grid=dense.grid[:1])
    try:
        made += fit("clothes", backbone="vgg16", clf="dense", balance="none", **common)
    finally:
        CLASSIFIERS["dense"] = dense
    made.append(e2e(data, backbone="mobilenetv2", weights=None, image_size=32, batch_size=4, epochs=1,
                    models_dir=root / "models"))
    return {r.metrics.id: r.run_dir for r in made}


def _saved(run_dir: Path) -> dict[str, dict]:
    with open(run_dir / "predictions.csv") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.slow
def test_predict_matches_the_runs_own_test_predictions(runs: dict[str, Path], run: str) -> None:
    run_dir = runs[run]
    data = run_dir.parents[3] / "clothes"
    result = predict([data / "test"], run_dir)
    saved = _saved(run_dir)
    assert len(result.predictions) == len(saved) == 12 and not result.skipped
    for p in result.predictions:
        row = saved[Path(p.path).relative_to(data).as_posix()]
        assert np.allclose([p.probabilities[c] for c in result.classes],
                           [float(row[f"p_{c}"]) for c in result.classes], atol=1e-4)
    assert result.run == run and result.seconds_per_image > 0


def test_calibrated_probabilities_use_the_runs_temperature(runs: dict[str, Path]) -> None:
    from clothprobe.runs.directory import read_manifest

    run_dir = runs["vgg16/logreg-none-tta"]
    images = run_dir.parents[3] / "clothes" / "test"
    plain, calibrated = predict([images], run_dir), predict([images], run_dir, calibrate=True)
    t = read_manifest(run_dir).calibration.temperature
    assert calibrated.calibrated and not plain.calibrated and t != 1.0
    raw = np.array([[p.probabilities[c] for c in plain.classes] for p in plain.predictions])
    cal = np.array([[p.probabilities[c] for c in plain.classes] for p in calibrated.predictions])
    assert np.allclose(cal, apply_temperature(raw, t), atol=1e-9) and not np.allclose(cal, raw)


def test_bad_images_are_skipped_and_reported(runs: dict[str, Path], tmp_path: Path) -> None:
    make_image(tmp_path / "new" / "a.png", seed=5)
    (tmp_path / "new" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "new" / ".DS_Store").write_bytes(b"\0")
    for run in ("mobilenetv2+vgg16/logreg-weights-tta", "mobilenetv2/e2e-none-32px"):
        result = predict([tmp_path / "new", tmp_path / "new" / "a.png"], runs[run])
        assert [Path(p.path).name for p in result.predictions] == ["a.png"]
        assert len(result.skipped) == 1 and result.skipped[0][0].endswith("broken.jpg")
        assert sum(result.predictions[0].probabilities.values()) == pytest.approx(1.0)


def test_tampered_model_is_refused_before_loading(runs: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "run"
    shutil.copytree(runs["vgg16/logreg-none-tta"], copy)
    with open(copy / "model.npz", "ab") as fh:
        fh.write(b"\0")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded a file whose hash does not match"))
    make_image(tmp_path / "a.png", seed=1)
    with pytest.raises(ClothprobeError, match="model.npz does not match the sha256"):
        predict([tmp_path / "a.png"], copy)


def test_manifest_of_the_wrong_shape_is_one_error(runs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(runs["vgg16/lgbm-none"], copy)
    doc = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**doc, "caches": ["vgg16"]}))
    make_image(tmp_path / "a.png", seed=1)
    with pytest.raises(ClothprobeError, match=r"manifest.json is not a clothprobe run manifest \(caches should be dict"):
        predict([tmp_path / "a.png"], copy)


def test_batch_size_refused_before_any_work(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from clothprobe.runs import directory as rundir

    monkeypatch.setattr(rundir, "read_manifest", lambda *a: pytest.fail("worked before checking --batch-size"))
    with pytest.raises(ClothprobeError, match="--batch-size must be a whole number of at least 1, got 0"):
        predict(["x.jpg"], runs["vgg16/lgbm-none"], batch_size=0)


def test_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="nope.jpg does not exist"):
        list_images([tmp_path / "nope.jpg"])


@pytest.mark.slow
def test_cli_json_and_csv(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = runs["vgg16/logreg-none-tta"]
    images = run_dir.parents[3] / "clothes" / "validation"
    res = cli("predict", str(images), "--model", str(run_dir), "--format", "json", "--top-k", "2", "--calibrate")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["run"] == "vgg16/logreg-none-tta" and len(doc["rows"]) == 12
    assert doc["calibrated"] is True and "calibrated" in res.stderr
    assert doc["columns"] == ["path", "top1", "top1_p", "top2", "top2_p", "p_hat", "p_shirt", "p_t-shirt", "skipped"]
    for row in doc["rows"]:
        assert row["skipped"] == "" and row["top1_p"] >= row["top2_p"]
        assert sum(row[f"p_{c}"] for c in ("hat", "shirt", "t-shirt")) == pytest.approx(1.0, abs=1e-4)
    assert "ms per image" in res.stderr
    out = tmp_path / "p.csv"
    res = cli("predict", str(images), "--model", str(run_dir), "--format", "csv", "--output", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["path", "top1", "top1_p", "top2", "top2_p", "top3", "top3_p", "p_hat", "p_shirt", "p_t-shirt",
                       "skipped"]
    assert len(rows) == 13


@pytest.mark.slow
def test_cli_prints_bracketed_names_whole(runs: dict[str, Path], tmp_path: Path) -> None:
    make_image(tmp_path / "new" / "shirt [blue].jpg", seed=3)
    make_image(tmp_path / "new" / "a[" / "b].jpg", seed=4)  # a path with "[/b]": rich markup would crash on it
    res = cli("predict", str(tmp_path / "new"), "--model", str(runs["vgg16/lgbm-none"]))
    assert res.returncode == 0, res.stderr
    flat = res.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    assert "shirt[blue].jpg" in flat and "a[/b].jpg" in flat and "#1" in res.stdout


@pytest.mark.slow
def test_cli_errors_are_one_line_and_come_first(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = str(runs["vgg16/lgbm-none"])
    res = cli("predict", str(tmp_path), "--model", run_dir, "--format", "json", "--output",
              str(tmp_path / "missing" / "dir" / "p.json"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "image(s) with" not in res.stderr
    assert "the folder" in res.stderr and "does not exist" in res.stderr
    res = cli("predict", str(tmp_path), "--model", run_dir, "--batch-size", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--batch-size must be" in res.stderr
