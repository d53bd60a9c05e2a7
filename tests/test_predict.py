"""cli predict on tiny images with a random-weights VGG16: same embeddings as featurize, safe loading."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.predict import _weights_for, list_images, predict
from conftest import TINY, make_dataset, make_image
from test_cli import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    featurize(data, features_dir=root / "features", tta=True, **TINY)
    (result,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", tta=True,
                    features_dir=root / "features", models_dir=root / "models")
    return result.run_dir


def test_predict_matches_the_runs_own_test_predictions(run_dir: Path) -> None:
    data = run_dir.parents[3] / "clothes"
    result = predict([data / "test"], run_dir)
    with open(run_dir / "predictions.csv") as fh:
        saved = {r["path"]: r for r in csv.DictReader(fh)}
    assert len(result.predictions) == len(saved) == 12 and not result.skipped
    for p in result.predictions:
        row = saved[Path(p.path).relative_to(data).as_posix()]
        assert p.top(1)[0][0] == row["predicted"]
        assert np.allclose([p.probabilities[c] for c in result.classes],
                           [float(row[f"p_{c}"]) for c in result.classes], atol=1e-4)
    assert result.run == "vgg16/logreg-none-tta" and result.seconds_per_image > 0


def test_bad_images_are_skipped_and_reported(run_dir: Path, tmp_path: Path) -> None:
    make_image(tmp_path / "new" / "a.png", seed=5)
    (tmp_path / "new" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "new" / ".DS_Store").write_bytes(b"\0")
    result = predict([tmp_path / "new", tmp_path / "new" / "a.png"], run_dir)
    assert [Path(p.path).name for p in result.predictions] == ["a.png"]
    assert len(result.skipped) == 1 and result.skipped[0][0].endswith("broken.jpg")
    assert sum(result.predictions[0].probabilities.values()) == pytest.approx(1.0)


def test_tampered_model_is_refused_before_loading(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import skops.io

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / "model.skops", "ab") as fh:
        fh.write(b"\0")
    monkeypatch.setattr(skops.io, "load", lambda *a, **k: pytest.fail("loaded a file whose hash does not match"))
    make_image(tmp_path / "a.png", seed=1)
    with pytest.raises(ClothprobeError, match="model.skops does not match the sha256"):
        predict([tmp_path / "a.png"], copy)


def test_other_weights_are_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "vgg16_notop.weights.h5"
    wrong.write_bytes(b"some other weights")
    cache = {"config": {"weights_sha256": "0" * 64}}
    with pytest.raises(ClothprobeError, match="Point --weights at the file that was used for cli featurize"):
        _weights_for(cache, "vgg16", str(wrong))
    assert _weights_for({"config": {"weights_sha256": "random-init-seed-7"}}, "vgg16", None) == (None, 7)


def test_missing_input_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="nope.jpg does not exist"):
        list_images([tmp_path / "nope.jpg"])


def test_cli_json_and_csv(run_dir: Path, tmp_path: Path) -> None:
    images = run_dir.parents[3] / "clothes" / "validation"
    res = cli("predict", str(images), "--model", str(run_dir), "--format", "json", "--top-k", "2")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["run"] == "vgg16/logreg-none-tta" and len(doc["predictions"]) == 12 and doc["skipped"] == []
    for p in doc["predictions"]:
        assert len(p["top"]) == 2 and set(p["probabilities"]) == {"hat", "shirt", "t-shirt"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "ms per image" in res.stderr
    out = tmp_path / "p.csv"
    res = cli("predict", str(images), "--model", str(run_dir), "--format", "csv", "--output", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["path", "top1", "top1_p", "top2", "top2_p", "top3", "top3_p", "p_hat", "p_shirt", "p_t-shirt"]
    assert len(rows) == 13
    res = cli("predict", str(images), "--model", str(run_dir))
    assert res.returncode == 0 and "#1" in res.stdout
