"""Issue 29, part 1: a run made with the default int8 network predicts on a machine whose model store lacks it
(an empty CLOTHPROBE_HOME): the network is made again from the calibration photos its cache recorded, with
one line saying so; where the photos are gone, one line names both ways out."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import TINY, cli, make_dataset

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize import featurize, load_features

pytestmark = pytest.mark.slow  # int8 quantization of the tiny network, twice


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(dataset, run directory, the store that made it): a tiny int8 logistic-regression run."""
    root = tmp_path_factory.mktemp("newstore")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    home = root / "made-here"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLOTHPROBE_HOME", str(home))
        result = featurize(data, features_dir=root / "features", calibration_size=6,
                           **{**TINY, "precision": "int8", "runtime": "openvino"})
        assert result.precision == "int8"
        (made,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                      models_dir=root / "models")
    return data, made.run_dir, home


def test_the_cache_and_the_run_record_the_calibration_photos(int8_run: tuple[Path, Path, Path]) -> None:
    data, run_dir, _ = int8_run
    cache = load_features(data.parent / "features" / "clothes" / "vgg16.h5")
    photos = cache.header.calibration_photos
    assert len(photos) == 6 and all(Path(p).is_file() and Path(p).is_relative_to(data.resolve()) for p, _ in photos)
    (record,) = json.loads((run_dir / "manifest.json").read_text())["caches"].values()
    assert [tuple(p) for p in record["calibration_photos"]] == list(photos)


def test_predict_with_an_empty_store_makes_the_network_again(int8_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, run_dir, home = int8_run
    photo = next((data / "test" / "hat").iterdir())
    here = cli("predict", str(photo), "--model", str(run_dir), "--format", "json", home=home)
    assert here.returncode == 0, here.stderr
    assert "made it again" not in here.stderr
    empty = tmp_path / "empty-home"
    there = cli("predict", str(photo), "--model", str(run_dir), "--format", "json", home=empty)
    assert there.returncode == 0, there.stderr
    (line,) = [ln for ln in there.stderr.splitlines() if "made it again" in ln]
    assert "from its 6 calibration photos in" in line and str(run_dir) in line
    assert json.loads(there.stdout)["rows"] == json.loads(here.stdout)["rows"]  # the same network, bit for bit
    again = cli("predict", str(photo), "--model", str(run_dir), "--format", "json", home=empty)
    assert again.returncode == 0 and "made it again" not in again.stderr  # once per store


def test_load_run_with_an_empty_store(int8_run: tuple[Path, Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import clothprobe

    data, run_dir, _ = int8_run
    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "fresh"))
    clf = clothprobe.load_run(run_dir)
    photos = sorted((data / "test").rglob("*.png"))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert len(clf.predict(photos)) == len(photos)
    assert any(issubclass(w.category, ClothprobeWarning) and "made it again" in str(w.message) for w in said)


def test_without_the_photos_one_line_names_both_ways_out(int8_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, run_dir, _ = int8_run
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    shutil.rmtree(data / "train")
    try:
        done = cli("predict", str(moved / "test"), "--model", str(run_dir), home=tmp_path / "empty")
    finally:
        shutil.copytree(moved / "train", data / "train")
    assert done.returncode == 2, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert "is not there" in line and "copy that entry" in line and "cli export" in line and "Traceback" not in done.stderr


def test_changed_photos_are_refused_not_used(int8_run: tuple[Path, Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from clothprobe.runs.directory import read_manifest
    from clothprobe.runs.networks import ensure_networks
    from clothprobe.runs.predicting import run_embeddings

    data, run_dir, _ = int8_run
    (how,) = run_embeddings(read_manifest(run_dir).caches)
    other = tmp_path / "other.png"
    shutil.copy(next((data / "test" / "shirt").iterdir()), other)
    swapped = ((str(other), how.calibration[0][1]), *how.calibration[1:])  # same name record, other content
    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "fresh"))
    with pytest.raises(ClothprobeError, match="have changed since"):
        ensure_networks(run_dir, [(how.recipe, swapped)])
