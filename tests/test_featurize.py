"""featurize() end to end on tiny images with a real (random-weights) VGG16 and a real HDF5 file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import featurize_tiny as run
from conftest import make_image

from clothprobe.errors import ClothprobeError
from clothprobe.featurize import load_features
from clothprobe.featurize.cache.write import writer_lock


def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, building a model fails the test."""
    import clothprobe.featurize.embed as embed

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(embed, "open_embedder", refuse)


def test_schema_round_trip(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    result = run(dataset, out)
    assert result.computed == 27 and result.reused == 0 and not result.skipped and not result.up_to_date
    cache = load_features(out)
    assert cache.class_names == ["hat", "shirt", "t-shirt"]
    assert set(cache.splits) == {"train", "validation", "test"}
    train = cache.split("train")
    assert train.embeddings.shape == (9, 2304) and train.embeddings.dtype == np.float32  # every tap, the default
    assert list(train.labels) == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert train.paths[0] == "train/hat/0.png" and len(train.sha256[0]) == 64
    assert train.flip is None
    assert cache.recipe == result.recipe and cache.fingerprint == result.recipe.fingerprint
    assert cache.recipe.backbone == "vgg16" and cache.recipe.input_size == 32 and cache.recipe.precision == "float32"
    assert cache.header.data_root == str(dataset.resolve()) and "clothprobe" in cache.header.versions
    assert cache.header.seconds_per_image == pytest.approx(result.model_seconds / 27)
    info = cache.info()
    assert info.images == 27 and info.featurize_seconds == pytest.approx(result.model_seconds)
    assert info.recipe == result.recipe and info.views == ("embeddings",) and info.data_root == str(dataset.resolve())
    with pytest.raises(ClothprobeError, match="no 'extra' split"):
        cache.split("extra")


def test_embeddings_are_bit_identical_run_to_run(dataset: Path, tmp_path: Path) -> None:
    run(dataset, tmp_path / "a.h5")
    run(dataset, tmp_path / "b.h5")
    a, b = load_features(tmp_path / "a.h5"), load_features(tmp_path / "b.h5")
    for split in a.splits:
        assert np.array_equal(a.split(split).embeddings, b.split(split).embeddings)


def test_embedding_does_not_depend_on_batch_company(dataset: Path, tmp_path: Path) -> None:
    run(dataset, tmp_path / "a.h5", batch_size=4)
    only = tmp_path / "one"
    shutil.copytree(dataset / "train" / "hat", only / "train" / "hat")
    run(only, tmp_path / "b.h5", batch_size=4)
    a, b = load_features(tmp_path / "a.h5").split("train"), load_features(tmp_path / "b.h5").split("train")
    assert np.array_equal(a.embeddings[:3], b.embeddings)


def test_flip_view(dataset: Path, tmp_path: Path) -> None:
    run(dataset, tmp_path / "f.h5", tta=True)
    train = load_features(tmp_path / "f.h5").split("train")
    assert train.flip is not None and train.flip.shape == train.embeddings.shape
    assert not np.allclose(train.flip, train.embeddings)


def test_second_run_does_no_model_work(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "f.h5"
    run(dataset, out)
    before = out.stat().st_mtime_ns
    no_model(monkeypatch)
    again = run(dataset, out)
    assert again.computed == 0 and again.reused == 27 and again.up_to_date
    assert out.stat().st_mtime_ns == before


def test_incremental_add_change_remove(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    run(dataset, out)
    old = load_features(out).split("train")
    make_image(dataset / "train" / "hat" / "new.png", seed=777)  # added
    make_image(dataset / "train" / "shirt" / "0.png", seed=778)  # changed content, same name
    (dataset / "train" / "t-shirt" / "3.png").unlink()  # removed
    result = run(dataset, out)
    assert result.computed == 2 and result.removed == 1 and result.reused == 25
    assert load_features(out).header.seconds_per_image == pytest.approx(result.model_seconds / 2)
    new = load_features(out).split("train")
    assert "train/t-shirt/3.png" not in set(new.paths)
    row = {p: i for i, p in enumerate(new.paths)}
    old_row = {p: i for i, p in enumerate(old.paths)}
    assert np.array_equal(new.embeddings[row["train/hat/0.png"]], old.embeddings[old_row["train/hat/0.png"]])
    assert not np.array_equal(new.embeddings[row["train/shirt/0.png"]], old.embeddings[old_row["train/shirt/0.png"]])
    # an image computed incrementally equals the same image computed in a fresh full run
    fresh = run(dataset, tmp_path / "fresh.h5")
    assert fresh.computed == 27
    assert np.array_equal(load_features(tmp_path / "fresh.h5").split("train").embeddings, new.embeddings)


def test_moved_image_keeps_embedding_takes_new_label(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    run(dataset, out)
    (dataset / "train" / "hat" / "0.png").rename(dataset / "train" / "shirt" / "moved.png")
    result = run(dataset, out)
    assert result.computed == 0
    train = load_features(out).split("train")
    i = list(train.paths).index("train/shirt/moved.png")
    assert train.labels[i] == 1


@pytest.mark.slow
def test_changed_recipe_invalidates_everything_and_says_why(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    run(dataset, out, seed=0)
    result = run(dataset, out, seed=1)  # random weights from another seed: another weights fingerprint
    assert result.computed == 27
    assert result.invalidated == ["weights_sha256: random-init-seed-0 -> random-init-seed-1"]
    result = run(dataset, out, seed=1, image_size=40)
    assert result.computed == 27 and result.invalidated == ["input_size: 32 -> 40"]
    assert load_features(out).recipe.input_size == 40


def test_adding_flip_view_recomputes(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    run(dataset, out)
    assert run(dataset, out, tta=True).computed == 27
    assert run(dataset, out, tta=True).computed == 0


def test_bad_files_skipped_reported_and_kept(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train" / "hat" / "empty.jpg").write_bytes(b"")
    (dataset / "test" / "shirt" / "notes.txt").write_text("not a photo")
    (dataset / "train" / "hat" / ".DS_Store").write_bytes(b"\0\1")
    (dataset / "train" / "stray.jpg").write_bytes(b"")
    out = tmp_path / "f.h5"
    result = run(dataset, out)
    assert dict(result.skipped) == {
        "train/hat/empty.jpg": "empty file (0 bytes)",
        "test/shirt/notes.txt": "not an image Pillow can read (unknown or corrupt format)",
        "train/stray.jpg": "not inside a class folder",
    }
    cache = load_features(out)
    assert cache.split("train").skipped == [("train/hat/empty.jpg", "empty file (0 bytes)"),
                                            ("train/stray.jpg", "not inside a class folder")]
    assert len(cache.split("train")) == 9 and len(cache.split("test")) == 9


def test_unusable_files_are_remembered_and_each_reported(dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Three empty files and two copies of one truncated JPEG: five paths reported, every run; a rerun
    does not try them again, so it builds no model."""
    hat = dataset / "train" / "hat"
    for name in ("e1.jpg", "e2.jpg", "e3.jpg"):
        (hat / name).write_bytes(b"")
    jpeg = make_image(tmp_path / "whole.jpg", seed=5, size=(64, 64)).read_bytes()
    (hat / "cut1.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (dataset / "validation" / "shirt" / "cut2.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    out = tmp_path / "f.h5"
    first = run(dataset, out)
    bad = {"train/hat/e1.jpg", "train/hat/e2.jpg", "train/hat/e3.jpg", "train/hat/cut1.jpg", "validation/shirt/cut2.jpg"}
    assert {p for p, _ in first.skipped} == bad and first.remembered == 0
    assert {p for p, _ in load_features(out).split("train").skipped} == bad - {"validation/shirt/cut2.jpg"}
    assert [p for p, _ in load_features(out).split("validation").skipped] == ["validation/shirt/cut2.jpg"]

    no_model(monkeypatch)
    again = run(dataset, out)
    assert again.skipped == first.skipped and again.remembered == 5 and again.computed == 0 and again.up_to_date


def test_failures_are_tried_again_under_other_decoder_settings(dataset: Path, tmp_path: Path) -> None:
    big = make_image(dataset / "train" / "hat" / "big.png", seed=99, size=(60, 50))  # 3000 pixels
    out = tmp_path / "f.h5"
    first = run(dataset, out, max_pixels=2000)
    assert "train/hat/big.png" in dict(first.skipped) and first.computed == 27
    assert run(dataset, out, max_pixels=2000).remembered == 1
    raised = run(dataset, out, max_pixels=5000)  # the failure held for 2000 pixels only
    assert raised.computed == 1 and not raised.skipped and raised.remembered == 0
    assert big.name in {Path(p).name for p in load_features(out).split("train").paths}


def test_strict_makes_a_skip_fatal_and_names_the_file(dataset: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (dataset / "validation" / "hat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(ClothprobeError, match="validation/hat/broken.png"):
        run(dataset, tmp_path / "f.h5", strict=True)
    assert not (tmp_path / "f.h5").exists()
    run(dataset, tmp_path / "f.h5")
    no_model(monkeypatch)  # a remembered failure is as fatal under --strict, and needs no model to say so
    with pytest.raises(ClothprobeError, match="validation/hat/broken.png"):
        run(dataset, tmp_path / "f.h5", strict=True)


def test_second_writer_refused(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    with writer_lock(out):
        with pytest.raises(ClothprobeError, match="Another clothprobe run"):
            run(dataset, out)


def test_unknown_names_list_choices(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="Unknown backbone 'resnet'; choose one of: vgg16, xception, mobilenetv2"):
        run(dataset, tmp_path / "f.h5", backbone="resnet")
    with pytest.raises(ClothprobeError, match="Unknown precision 'fp8'"):
        run(dataset, tmp_path / "f.h5", precision="fp8")
    with pytest.raises(ClothprobeError, match="--batch-size must be at least 1, got 0"):
        run(dataset, tmp_path / "f.h5", batch_size=0)


def test_keras_and_openvino_runtimes_agree(dataset: Path, tmp_path: Path) -> None:
    keras_run = run(dataset, tmp_path / "f.h5", runtime="keras")
    assert keras_run.runtime == "keras" and keras_run.computed == 27
    ov_run = run(dataset, tmp_path / "f.h5", runtime="openvino")
    assert ov_run.computed == 27 and ov_run.invalidated == ["runtime: keras -> openvino"]
    run(dataset, tmp_path / "k.h5", runtime="keras")
    a = load_features(tmp_path / "k.h5").split("test").embeddings
    b = load_features(tmp_path / "f.h5").split("test").embeddings
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999


def test_the_catalog_records_the_cache(dataset: Path, tmp_path: Path) -> None:
    from clothprobe.featurize.catalog import find_cache, last_data

    out = tmp_path / "elsewhere" / "f.h5"
    run(dataset, out, features_dir=tmp_path / "features")
    assert last_data(tmp_path / "features") == dataset.resolve()
    assert find_cache(tmp_path / "features", "clothes", "vgg16") == out.resolve()

