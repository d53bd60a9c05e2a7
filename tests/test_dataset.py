"""Dataset layouts, class order and the errors a wrong layout gets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY, make_dataset, make_image, python_output

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.dataset import scan

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


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
    ds = scan(dataset)
    assert ds.stray == {"train/loose.png": "train"}
    assert ds.stray_reasons == {"train/loose.png": "not inside a class folder"}


def _unusable_files(dataset: Path) -> None:
    os.mkfifo(dataset / "train" / "hat" / "pipe.jpg")
    (dataset / "validation" / "shirt" / "zero.jpg").symlink_to("/dev/zero")
    (dataset / "test" / "hat" / "gone.jpg").symlink_to(dataset / "nowhere.jpg")
    (dataset / "elsewhere").mkdir()
    (dataset / "train" / "shirt" / "more").symlink_to(dataset / "elsewhere", target_is_directory=True)
    (dataset / "train" / "shirt" / "0-link.png").symlink_to(dataset / "train" / "shirt" / "0.png")


@needs_fifo
def test_files_that_are_not_regular_are_stray_with_their_reason(dataset: Path) -> None:
    """A FIFO (an open would block forever), a link to /dev/zero (a read would never end), a broken link
    and a link to a folder are listed as stray with why, never as images; a link to an image is an image.
    The scan runs in a subprocess with a timeout, so a regression fails instead of hanging."""
    _unusable_files(dataset)
    out = python_output(f"""
import json
from clothprobe.featurize.dataset import scan
ds = scan({str(dataset)!r})
print(json.dumps({{"files": [f.rel_path for fs in ds.files.values() for f in fs], "stray": ds.stray,
                  "reasons": ds.stray_reasons}}))
""", timeout=60)
    found = json.loads(out)
    assert found["stray"] == {"train/hat/pipe.jpg": "train", "train/shirt/more": "train",
                              "validation/shirt/zero.jpg": "validation", "test/hat/gone.jpg": "test"}
    reasons = found["reasons"]
    assert reasons["train/hat/pipe.jpg"] == "not a regular file: a named pipe (FIFO); skipped without opening it"
    assert reasons["validation/shirt/zero.jpg"].startswith("not a regular file: a symbolic link to /dev/zero, "
                                                            "which is a character device")
    assert reasons["test/hat/gone.jpg"] == "broken symbolic link"
    assert "which is a directory" in reasons["train/shirt/more"]
    assert "train/shirt/0-link.png" in found["files"] and len(found["files"]) == 28
    assert not set(found["stray"]) & set(found["files"])


@needs_fifo
def test_featurize_skips_a_fifo_and_dev_zero_instead_of_hanging(dataset: Path, tmp_path: Path) -> None:
    """The whole run (scan, hashing, decoding) over a FIFO and a link to /dev/zero finishes and reports
    both with their reason. In a subprocess with a timeout: a regression fails instead of hanging."""
    _unusable_files(dataset)
    out = python_output(f"""
import json
from clothprobe.featurize import featurize
result = featurize({str(dataset)!r}, out={str(tmp_path / "c.h5")!r}, **{TINY!r})
print(json.dumps({{"computed": result.computed, "skipped": dict(result.skipped)}}))
""", timeout=300)
    result = json.loads(out.splitlines()[-1])
    assert result["computed"] == 27  # the link to an image has the content of one already computed
    assert result["skipped"]["train/hat/pipe.jpg"].startswith("not a regular file: a named pipe")
    assert result["skipped"]["validation/shirt/zero.jpg"].startswith("not a regular file: a symbolic link")
    assert set(result["skipped"]) == {"train/hat/pipe.jpg", "validation/shirt/zero.jpg", "test/hat/gone.jpg",
                                      "train/shirt/more"}


def test_missing_folder_and_missing_train(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="does not exist"):
        scan(tmp_path / "nope")
    make_dataset(tmp_path / "d", splits=("test",))
    with pytest.raises(ClothprobeError, match="no train/ folder"):
        scan(tmp_path / "d")
