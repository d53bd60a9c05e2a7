"""Issue 30, class 3: which data a cache or folder is. A cache records its dataset's folder and a fingerprint of
its photos; featurize does not write one dataset over another's cache, fit never trains a dataset on another's
photos, a copied project reads its own caches, and fit --unknown finds its folder by path, refuses one that
overlaps the dataset and featurizes it itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
from conftest import TINY, make_dataset, make_image

from clothprobe.classifiers import fit
from clothprobe.classifiers.rejection import unknown_cache_path
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import catalog, featurize
from clothprobe.featurize.cache.read import load_features
from clothprobe.featurize.cache.schema import _header_checksum, attr_value
from clothprobe.runs.directory import read_manifest

FIT = dict(backbone="vgg16", clf="logreg", balance="none")


def _fit(features: Path, models: Path, dataset: str = "clothes", **kw: object):  # noqa: ANN202
    return fit(dataset, features_dir=features, models_dir=models, **{**FIT, **kw})


def test_a_second_dataset_is_not_written_over_the_first_ones_cache(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a" / "clothes")
    b = make_dataset(tmp_path / "b" / "shoes", seed=1)
    shared, features = tmp_path / "shared.h5", tmp_path / "features"
    featurize(a, out=shared, features_dir=features, **TINY)
    before = shared.read_bytes()
    with pytest.raises(ClothprobeError, match=rf"shared.h5 holds the cache of dataset 'clothes' \({a}\), not of {b}; "
                                              r".*Give another --out, or --rebuild to replace it\.$"):
        featurize(b, out=shared, features_dir=features, **TINY)
    assert shared.read_bytes() == before
    featurize(b, out=shared, features_dir=features, rebuild=True, **TINY)  # said so: replaced
    with pytest.raises(ClothprobeError, match=r"No vgg16 cache for dataset 'clothes'"):  # the catalog knows
        _fit(features, tmp_path / "models", data_dir=a)
    catalog.record(features, dataset="clothes", backbone="vgg16", cache_path=shared, data_root=a)  # as before
    with pytest.raises(ClothprobeError, match=r"shared.h5 holds the cache of dataset 'shoes' .*, not of dataset "
                                              r"'clothes'"):
        _fit(features, tmp_path / "models", data_dir=a)
    assert not (tmp_path / "models").exists()


def test_fit_data_is_the_folder_not_its_name(tmp_path: Path) -> None:
    """Two datasets called clothes: the cache of one is never the other's, whatever the catalog says."""
    mine = make_dataset(tmp_path / "mine" / "clothes")
    theirs = make_dataset(tmp_path / "theirs" / "clothes", seed=3)
    features = tmp_path / "features"
    featurize(theirs, features_dir=features, **TINY)
    with pytest.raises(ClothprobeError, match=r"whose photos are not those of .*mine/clothes; featurize that folder"):
        _fit(features, tmp_path / "models", data_dir=mine)
    with pytest.raises(ClothprobeError, match=r"clothes/vgg16.h5 holds the cache of dataset 'clothes' \(.*theirs/"
                                              r"clothes\), not of .*mine/clothes"):
        featurize(mine, features_dir=features, **TINY)  # the default cache path is theirs
    featurize(mine, out=tmp_path / "mine.h5", features_dir=features, **TINY)  # the catalog's "clothes" is now mine
    for folder, cache in ((mine, tmp_path / "mine.h5"), (theirs, features / "clothes" / "vgg16.h5")):
        (result,) = _fit(features, tmp_path / "models", data_dir=folder)  # each its own photos' cache
        assert read_manifest(result.run_dir).caches["vgg16"]["path"] == str(cache)


def test_a_moved_dataset_is_the_same_dataset(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "old" / "clothes")
    features = tmp_path / "features"
    featurize(data, features_dir=features, **TINY)
    moved = tmp_path / "new" / "clothes"
    moved.parent.mkdir()
    shutil.move(data, moved)
    (result,) = _fit(features, tmp_path / "models", data_dir=moved)  # its photos, elsewhere: fine
    assert result.metrics.test is not None
    again = featurize(moved, features_dir=features, **TINY)
    assert again.computed == 0 and load_features(again.cache_path).header.data_root == str(moved.resolve())
    changed = tmp_path / "changed" / "clothes"  # copied and changed: other photos
    shutil.copytree(moved, changed)
    make_image(changed / "train" / "hat" / "extra.png", seed=99)
    with pytest.raises(ClothprobeError, match="whose photos are not those of"):
        _fit(features, tmp_path / "models", data_dir=changed)


def test_a_cache_written_before_the_fingerprint_is_identified_by_its_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "old" / "clothes")
    features = tmp_path / "features"
    cache = featurize(data, features_dir=features, **TINY).cache_path
    with h5py.File(cache, "r+") as h5:  # as clothprobe wrote it before it recorded data_fingerprint
        del h5.attrs["data_fingerprint"]
        attrs = {k: attr_value(v) for k, v in h5.attrs.items() if k != "header_checksum"}
        h5.attrs["header_checksum"] = _header_checksum(attrs)
    assert load_features(cache).header.data_fingerprint == ""
    _fit(features, tmp_path / "models", data_dir=data)  # its own folder: read as before
    copy = tmp_path / "copy" / "clothes"
    shutil.copytree(data, copy)
    with pytest.raises(ClothprobeError, match="whose photos are not those of"):
        _fit(features, tmp_path / "models", data_dir=copy)
    with pytest.raises(ClothprobeError, match="--rebuild to replace it"):
        featurize(copy, features_dir=features, **TINY)
    assert featurize(copy, features_dir=features, rebuild=True, **TINY).computed == 0  # recorded, nothing recomputed
    assert load_features(cache).header.data_fingerprint.startswith("sha256:")


def test_a_copied_project_reads_its_own_caches(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "clothes")
    project = tmp_path / "project"
    featurize(data, out=project / "features" / "elsewhere" / "c.h5", features_dir=project / "features", **TINY)
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    featurize(make_dataset(tmp_path / "other" / "clothes", seed=5), out=project / "features" / "elsewhere" / "c.h5",
              features_dir=project / "features", rebuild=True, **TINY)  # the original's cache changes...
    (result,) = _fit(copy / "features", tmp_path / "models")  # ...the copy's does not
    assert result.metrics.dataset == "clothes"
    manifest = (result.run_dir / "manifest.json").read_text()
    assert str(copy / "features" / "elsewhere" / "c.h5") in manifest and str(project) not in manifest


def garments(folder: Path, seed: int) -> Path:
    """Photos of two garment types outside the classes, eight each."""
    for k in range(16):
        make_image(folder / ("polo" if k % 2 else "hoodie") / f"{k}.png", seed=seed + k)
    return folder


@pytest.fixture
def fitted(tmp_path: Path) -> tuple[Path, Path]:
    data = make_dataset(tmp_path / "data" / "clothes", per_class={"hat": 6, "shirt": 6, "t-shirt": 6})
    featurize(data, features_dir=tmp_path / "features", taps="all", **TINY)
    return data, tmp_path / "features"


@pytest.mark.parametrize("where", ["the dataset", "its train split", "a class of it", "its parent"])
def test_fit_unknown_refuses_a_folder_that_overlaps_the_dataset(fitted: tuple[Path, Path], tmp_path: Path,
                                                                where: str) -> None:
    data, features = fitted
    folder = {"the dataset": data, "its train split": data / "train", "a class of it": data / "train" / "hat",
              "its parent": data.parent}[where]
    with pytest.raises(ClothprobeError, match=r"(is|lies inside|holds) the folder of dataset clothes .*its photos "
                                              r"are of the known classes"):
        _fit(features, tmp_path / "models", unknown=folder)
    assert not (tmp_path / "models").exists()


def test_fit_unknown_finds_its_folder_by_path_and_featurizes_it_like_the_dataset(fitted: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    data, features = fitted
    outside = garments(tmp_path / "elsewhere" / "outside", seed=900)  # never featurized by the user
    (result,) = _fit(features, tmp_path / "models", unknown=outside)
    figures = result.metrics.openset
    assert figures["unknown_folder"] == str(outside.resolve())
    assert sum(t["tuning"] + t["report"] for t in figures["types"].values()) == 16
    unknown_cache = load_features(unknown_cache_path(features, outside, "vgg16"))
    assert unknown_cache.fingerprint == load_features(features / "clothes" / "vgg16.h5").fingerprint
    assert unknown_cache.header.data_root == str(outside.resolve())
    named_like_it = garments(tmp_path / "far" / "clothes", seed=1900)  # the dataset's name, another folder
    (result,) = _fit(features, tmp_path / "models", unknown=named_like_it)  # by path, whatever its name
    assert result.metrics.openset["unknown_folder"] == str(named_like_it.resolve())
