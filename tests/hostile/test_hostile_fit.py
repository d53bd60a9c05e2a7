"""Issue 17: a class whose training photos are all undecodable is refused by fit, by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, make_dataset

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize


def test_a_class_without_one_usable_training_photo_is_refused(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 3, "shirt": 3, "écharpe 围巾": 2})
    for photo in (data / "train" / "écharpe 围巾").iterdir():
        photo.write_bytes(b"\xff\xd8\xff not a photo")
    featurize(data, features_dir=tmp_path / "features", **TINY)
    with pytest.raises(ClothprobeError, match="class .écharpe 围巾. has no usable training photo"):
        fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=tmp_path / "features",
            models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_e2e_refuses_a_class_without_one_usable_training_photo(tmp_path: Path) -> None:
    from clothprobe.e2e import e2e

    data = make_dataset(tmp_path / "clothes", per_class={"hat": 3, "shirt": 3})
    for photo in (data / "train" / "shirt").iterdir():
        photo.write_bytes(b"")
    with pytest.raises(ClothprobeError, match="class 'shirt' has no usable training photo"):
        e2e(data, backbone="vgg16", weights="none", image_size=32, batch_size=4, epochs=1,
            models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()
