"""Issue 30, class 5: names and paths. A file or class folder whose name is not valid UTF-8 is skipped with its
reason (its bytes escaped, ``\\xff``), and a photo however deep is found; featurize never loses the run for them,
and predict writes such a path as text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY, make_dataset, make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.featurize.cache.read import load_features
from clothprobe.featurize.dataset import NOT_UTF8, scan
from clothprobe.featurize.images import is_ignored


def _copy(src: Path, dest: bytes) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(src, dest)


def test_names_that_are_not_utf8_are_skipped_with_their_reason(tmp_path: Path) -> None:
    from clothprobe.runs.predicting import predict, write_scores

    data = make_dataset(tmp_path / "clothes", per_class={"hat": 4, "shirt": 4, "t-shirt": 4})
    root = bytes(data)
    photo = data / "train" / "hat" / "0.png"
    _copy(photo, root + b"/train/hat/bad\xff.png")  # a Latin-1 name
    _copy(photo, root + b"/train/caf\xe9/x.png")  # a class folder so named, in train...
    _copy(photo, root + b"/test/caf\xe9/y.png")  # ...and in test (not "a class missing from train")
    _copy(photo, root + b"/test/stray-\xfe.png")  # outside any class folder
    _copy(photo, root + b"/train/shirt/sub-\xe9/deeper.png")  # a folder inside a class folder
    result = featurize(data, features_dir=tmp_path / "features", **TINY)
    assert dict(result.skipped) == {
        "train/hat/bad\\xff.png": NOT_UTF8, "train/caf\\xe9/x.png": NOT_UTF8, "test/caf\\xe9/y.png": NOT_UTF8,
        "test/stray-\\xfe.png": "not inside a class folder", "train/shirt/sub-\\xe9/deeper.png": NOT_UTF8}
    cache = load_features(result.cache_path)
    assert cache.class_names == ["hat", "shirt", "t-shirt"]
    assert ("train/hat/bad\\xff.png", NOT_UTF8) in cache.splits["train"].skipped
    (run,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=tmp_path / "features",
                 models_dir=tmp_path / "models")
    scores = predict([data / "train" / "hat"], run.run_dir)
    assert str(data / "train" / "hat" / "bad\\xff.png") in [p.path for p in scores.predictions]
    write_scores(scores, tmp_path / "scores.csv", 2, "csv")
    assert "bad\\xff.png" in (tmp_path / "scores.csv").read_text(encoding="utf-8")


def _dig(base: Path, levels: int) -> Path:
    """``base/a/a/.../a`` (``levels`` deep), made through folder descriptors: no path is ever too long to make."""
    fd = os.open(base, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir("a", dir_fd=fd)
        fd, old = os.open("a", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    return Path(f"/proc/self/fd/{fd}")


def _fill(bottom: Path, photo: Path) -> None:
    (bottom / "deep.png").write_bytes(photo.read_bytes())
    os.close(int(bottom.name))


def _bury(base: Path, levels: int) -> None:
    """Remove ``base/a/.../a`` bottom up (``shutil.rmtree`` recurses once per level: past 1,000 it cannot)."""
    fds = [os.open(base, os.O_RDONLY)]
    for _ in range(levels):
        fds.append(os.open("a", os.O_RDONLY, dir_fd=fds[-1]))
    for k in range(levels, 0, -1):
        for name in os.listdir(fds[k]):
            os.unlink(name, dir_fd=fds[k])
        os.close(fds[k])
        os.rmdir("a", dir_fd=fds[k - 1])
    os.close(fds[0])


@pytest.mark.parametrize(("levels", "found"), [(1500, True), (2500, False)])  # 2,500 x "a/" is past PATH_MAX
def test_a_photo_however_deep_never_loses_the_run(tmp_path: Path, levels: int, found: bool) -> None:
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 2, "shirt": 2}, splits=("train",))
    deep = make_image(tmp_path / "deep.png", seed=500)
    _fill(_dig(data / "train" / "hat", levels), deep)
    try:
        result = featurize(data, features_dir=tmp_path / "features", **TINY)
        cache = load_features(result.cache_path)
        rows = [p for p in cache.splits["train"].paths if p.endswith("deep.png")]
        if found:
            assert len(rows) == 1 and rows[0].count("/a") == levels and not result.skipped
        else:
            assert not rows and len(result.skipped) == 1
            path, why = result.skipped[0]
            assert path.startswith("train/hat/a/a/") and "cannot be listed" in why
    finally:
        _bury(data / "train" / "hat", levels)


SPLIT_NAMES = {b"train", b"validation", b"test", b"val", b"valid"}  # would make the folder a split layout
# hidden names (a leading dot) are no one's photos: neither listed nor skipped; a backslash could collide with an
# escaped byte (a name "\\xff" and the byte 0xff are both shown as \xff)
names = st.binary(min_size=1, max_size=12).filter(lambda b: not {b"/", b"\0", b"\\"} & {b[i:i + 1] for i in range(len(b))}
                                                  and not b.startswith(b"."))
class_names = names.filter(lambda b: b.lower() not in SPLIT_NAMES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(classes=st.lists(class_names, min_size=1, max_size=3, unique=True),
       files=st.lists(st.tuples(st.integers(0, 2), names), min_size=1, max_size=6))
def test_any_bytes_as_names_give_utf8_records_and_lose_no_file(tmp_path_factory: pytest.TempPathFactory,
                                                               classes: list[bytes], files: list[tuple[int, bytes]]) -> None:
    """Whatever bytes name the class folders and files, the scan records only valid UTF-8 and every file is either
    a photo of a class or skipped with a reason; a dataset without one UTF-8 class is one clear error."""
    root = bytes(tmp_path_factory.mktemp("names"))
    made = set()
    for k, name in files:
        cls = classes[k % len(classes)]
        path = root + b"/" + cls + b"/" + name
        if os.path.isdir(path):
            continue
        os.makedirs(root + b"/" + cls, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"x")
        made.add((cls, name))
    visible = {(c, n) for c, n in made if not is_ignored(os.fsdecode(c)) and not is_ignored(os.fsdecode(n))}
    try:
        dataset = scan(os.fsdecode(root))
    except ClothprobeError as err:
        assert "has no class folders" in str(err)
        assert not any(_utf8(c) and not is_ignored(os.fsdecode(c)) for c, _ in made)
        return
    listed = {f.rel_path for fs in dataset.files.values() for f in fs}
    for text in [*listed, *dataset.class_names, *dataset.stray, *dataset.stray_reasons.values()]:
        text.encode("utf-8")  # what h5py writes: never a surrogate
    expected = {os.fsdecode(c + b"/" + n) for c, n in visible if _utf8(c + b"/" + n)}
    assert listed == expected
    assert len(listed) + len(dataset.stray) == len(visible)  # nothing lost without a word
    assert all(why == NOT_UTF8 for why in dataset.stray_reasons.values())


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
