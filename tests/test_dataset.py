"""Dataset layouts, class order and the errors a wrong layout gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.dataset import scan
from conftest import make_dataset, make_image


def test_split_layout(dataset: Path) -> None:
    ds = scan(dataset)
    assert ds.class_names == ["hat", "shirt", "t-shirt"]
    assert list(ds.files) == ["train", "validation", "test"]
    assert len(ds) == 27
    first = ds.files["train"][0]
    assert first.rel_path == "train/hat/0.png" and first.label == 0


def test_single_split_layout_reads_as_train(tmp_path: Path) -> None:
    for i, cls in enumerate(["b", "a"]):
        make_image(tmp_path / "d" / cls / "x.png", seed=i)
    ds = scan(tmp_path / "d")
    assert list(ds.files) == ["train"] and ds.class_names == ["a", "b"]
    assert [f.rel_path for f in ds.files["train"]] == ["a/x.png", "b/x.png"]


def test_val_alias(tmp_path: Path) -> None:
    make_dataset(tmp_path, splits=("train", "val"))
    assert list(scan(tmp_path).files) == ["train", "validation"]


def test_class_missing_from_train_is_an_error(dataset: Path) -> None:
    make_image(dataset / "test" / "socks" / "1.png", seed=99)
    with pytest.raises(ClothprobeError, match="socks"):
        scan(dataset)


def test_hidden_files_and_root_files_ignored(dataset: Path) -> None:
    (dataset / "train" / "hat" / ".DS_Store").write_bytes(b"junk")
    (dataset / "train" / "hat" / "._0.png").write_bytes(b"junk")
    (dataset / "README.md").write_text("about this dataset")
    ds = scan(dataset)
    assert len(ds) == 27 and not ds.stray


def test_file_outside_class_folder_is_stray(dataset: Path) -> None:
    make_image(dataset / "train" / "loose.png", seed=5)
    assert scan(dataset).stray == {"train/loose.png": "train"}


def test_missing_folder_and_missing_train(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="does not exist"):
        scan(tmp_path / "nope")
    make_dataset(tmp_path / "d", splits=("test",))
    with pytest.raises(ClothprobeError, match="no train/ folder"):
        scan(tmp_path / "d")
