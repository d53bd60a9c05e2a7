"""cli audit on a tiny synthetic dataset with planted duplicates, a planted leak and planted label flips."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_cache

from clothprobe.audit import audit
from clothprobe.audit import findings as checks
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import load_features
from clothprobe.featurize.cache.write import write_arrays

HOSTILE = 'train/dress/<script>alert("x")</script>&.jpg'
SIZES = {"train": (30, 30, 30), "validation": (8, 8, 8), "test": (8, 8, 8)}


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict]:
    """Well-separated classes; then: train row 1 copied byte for byte as test row 0 (an exact duplicate across
    splits), train row 2 nearly copied as test row 1 (a leak), 4 training labels flipped, one with a hostile file
    name."""
    path = make_cache(tmp_path / "features", splits=SIZES, separation=4.0, images=tmp_path / "clothes")
    cache = load_features(path)
    train, test = cache.splits["train"], cache.splits["test"]
    test.embeddings[0], test.sha256[0] = train.embeddings[1], train.sha256[1]
    test.embeddings[1] = train.embeddings[2] + 1e-3
    flipped = [5, 35, 65, 80]
    for i in flipped:
        train.labels[i] = (train.labels[i] + 1) % 3
    train.paths[5] = HOSTILE  # a flipped photo: it is on the page
    write_arrays(path, cache.header, cache.splits)
    plant = {"exact": (str(test.paths[0]), str(train.paths[1])), "leak": (str(test.paths[1]), str(train.paths[2])),
             "flipped": {str(train.paths[i]) for i in flipped}}
    return tmp_path, plant


def run(root: Path, **kw):
    return audit("clothes", features_dir=root / "features", html=root / "audit.html", csv=root / "audit.csv", **kw)


def test_audit_finds_the_planted_duplicates_leak_and_flips(planted) -> None:
    root, plant = planted
    result = run(root)
    by_kind = {k: [f for f in result.findings if f.kind == k] for k in result.counts}
    assert [(f.path, f.other_path) for f in by_kind[checks.EXACT_DUPLICATE]] == [plant["exact"]]
    assert [(f.path, f.other_path) for f in by_kind[checks.TEST_NEAR_TRAINING]] == [plant["leak"]]
    assert checks.NEAR_DUPLICATE not in by_kind  # no other pair is as alike as a photo and its mirror image
    issues = {f.path for f in by_kind[checks.LABEL_ISSUE]}
    assert plant["flipped"] <= issues and len(issues) <= len(plant["flipped"]) + 2
    assert [f.suspicion for f in result.findings] == sorted((f.suspicion for f in result.findings), reverse=True)
    assert 0.9 < result.near_threshold < 1 and result.threshold_source.startswith("measured")


def test_the_csv_holds_every_finding_and_the_dataset_is_unchanged(planted) -> None:
    root, _ = planted
    before = {p: p.read_bytes() for p in (root / "clothes").rglob("*") if p.is_file()}
    cache_before = (root / "features" / "clothes" / "xception.h5").read_bytes()
    result = run(root)
    with open(root / "audit.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.findings) and rows[0]["kind"] == result.findings[0].kind
    assert before == {p: p.read_bytes() for p in (root / "clothes").rglob("*") if p.is_file()}
    assert cache_before == (root / "features" / "clothes" / "xception.h5").read_bytes()
    run(root)  # its own files are replaced; a file it did not write is not
    (root / "other.csv").write_text("precious\n")
    with pytest.raises(ClothprobeError, match="was not written by this command"):
        audit("clothes", features_dir=root / "features", html=root / "audit.html", csv=root / "other.csv")


def test_the_page_has_thumbnails_and_escapes_file_names(planted) -> None:
    root, _ = planted
    run(root, few=40)
    page = (root / "audit.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;.jpg" in page
    assert page.count('src="data:image/jpeg;base64,') >= 4
    assert "image not found" in page  # the hostile name has no file behind it
    assert "few photos" in page  # 30 per class in train, 8 in validation and test: under 40


def test_near_duplicate_threshold_needs_a_mirror_or_a_value(planted) -> None:
    root, _ = planted
    from clothprobe.audit.run import load_rows, near_threshold_of

    rows, _ = load_rows("clothes", "xception", root / "features")
    rows.X_flip = None
    with pytest.raises(ClothprobeError, match="--tta flip, or give --near-threshold"):
        near_threshold_of(rows, None)
    assert near_threshold_of(rows, 0.9) == (0.9, "given (--near-threshold)")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("seed", -1, "--seed must be a whole number >= 0"), ("few", 10**20, "--few must be a whole number >= 1"),
    ("few", 0, "--few must be a whole number >= 1"), ("near_threshold", float("nan"), "--near-threshold must be"),
    ("near_threshold", 1.5, "--near-threshold must be a finite number > 0 and <= 1")])
def test_bad_options_are_one_line_before_any_work(tmp_path: Path, option, value, message) -> None:
    with pytest.raises(ClothprobeError, match=message):  # no cache at all: the options are checked first
        audit("clothes", features_dir=tmp_path / "none", html=tmp_path / "a.html", csv=tmp_path / "a.csv",
              **{option: value})
    assert not (tmp_path / "a.html").exists()


def test_the_cli_refuses_a_bad_option_in_one_line(tmp_path: Path) -> None:
    from conftest import cli

    res = cli("audit", "--seed", "-1", "--near-threshold", "nan", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "must be a" in res.stderr


@pytest.mark.parametrize("sizes", [(2, 0, 0), (1, 1, 0), (3, 1, 0)])
def test_a_tiny_dataset_is_audited_without_the_label_search(tmp_path: Path, sizes) -> None:
    make_cache(tmp_path / "features", splits={"train": sizes}, images=tmp_path / "clothes")
    result = run(tmp_path)
    assert checks.LABEL_ISSUE not in result.counts
    assert "Label issues: not searched; out-of-fold probabilities need two classes with two photos" in (
        tmp_path / "audit.html").read_text()


def test_near_duplicates_across_any_two_splits_are_leaks(tmp_path: Path) -> None:
    path = make_cache(tmp_path / "features", splits=SIZES, separation=4.0, images=tmp_path / "clothes")
    cache = load_features(path)
    train, val, test = cache.splits["train"], cache.splits["validation"], cache.splits["test"]
    val.embeddings[0] = train.embeddings[3] + 1e-3
    test.embeddings[2] = val.embeddings[4] + 1e-3
    write_arrays(path, cache.header, cache.splits)
    by_kind = {}
    for f in run(tmp_path).findings:
        by_kind.setdefault(f.kind, []).append((f.split, f.path, f.other_split, f.other_path))
    assert by_kind[checks.VALIDATION_NEAR_TRAINING] == [("validation", val.paths[0], "train", train.paths[3])]
    assert by_kind[checks.TEST_NEAR_VALIDATION] == [("test", test.paths[2], "validation", val.paths[4])]
    assert checks.TEST_NEAR_TRAINING not in by_kind and checks.NEAR_DUPLICATE not in by_kind


def test_a_group_in_two_splits_is_listed_from_the_cache_or_a_groups_table(tmp_path: Path) -> None:
    from dataclasses import replace

    from clothprobe.featurize.table import LabelsTable, TableRecord

    path = make_cache(tmp_path / "features", splits=SIZES, separation=4.0, images=tmp_path / "clothes")
    cache = load_features(path)
    for name, s in cache.splits.items():  # senders of 5 photos each within a split; "leaky" in train and test
        s.groups = [f"{name}-{i // 5}" for i in range(len(s))]
    cache.splits["train"].groups[7] = cache.splits["test"].groups[3] = "leaky"
    record = TableRecord(table="t.csv", images=138, split_by="column", split_column="split", group_column="sender")
    write_arrays(path, replace(cache.header, table=record.to_dict()), cache.splits)
    found = [f for f in run(tmp_path).findings if f.kind == checks.GROUP_ACROSS_SPLITS]
    train, test = cache.splits["train"], cache.splits["test"]
    assert [(f.split, f.path, f.other_split, f.other_path, f.detail) for f in found] == [
        ("test", test.paths[3], "train", train.paths[7], "sender 'leaky': 1 in test, 1 in train")]
    # any layout: the groups from a table naming each photo by its path without extension; "shop-0" has photos in
    # train and validation, every other shop one photo
    groups = tmp_path / "shops.csv"
    groups.write_text("file,shop\n" + f"{train.paths[0][:-4]},shop-0\n{cache.splits['validation'].paths[1][:-4]},"
                      f"shop-0\n" + "".join(f"{p[:-4]},shop-{k + 1}\n" for k, p in enumerate(test.paths)))
    found = run(tmp_path, groups=LabelsTable(groups, image_column="file", group_column="shop")).findings
    assert [(f.split, f.other_split, f.detail) for f in found if f.kind == checks.GROUP_ACROSS_SPLITS] == [
        ("validation", "train", "shop 'shop-0': 1 in validation, 1 in train")]
    assert "Groups: shop from shops.csv (26 of 138 photos listed)" in (tmp_path / "audit.html").read_text()


def test_similar_pairs_are_exact() -> None:
    X = np.array([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.7, 0.7]])
    i, j, s = checks.similar_pairs(X, 0.99)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1)] and s[0] == pytest.approx(1 / np.sqrt(1.0001), abs=1e-6)


def test_cli_audit_prints_the_top_findings_and_writes_both_files(planted) -> None:
    from typer.testing import CliRunner

    from clothprobe.cli import app

    root, plant = planted
    result = CliRunner().invoke(app, ["audit", "--dataset", "clothes", "--features-dir", str(root / "features"),
                                      "--html", str(root / "a.html"), "--csv", str(root / "a.csv")])
    assert result.exit_code == 0, result.output
    assert "exact duplicate" in result.stdout and plant["exact"][0] in result.stdout
    assert (root / "a.html").is_file() and (root / "a.csv").is_file()
    same = CliRunner().invoke(app, ["audit", "--dataset", "clothes", "--features-dir", str(root / "features"),
                                    "--html", str(root / "a.html"), "--csv", str(root / "a.html")])
    assert same.exit_code != 0
