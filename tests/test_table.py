"""A labels table beside a photo folder (featurize/table.py): read into the same Dataset as the folders, every bad
table refused in one line naming the file and the line before anything is written, and every later stage (fit,
report, predict, audit, export) working on it unchanged."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import cli, featurize_tiny, make_image
from hypothesis import given, settings
from hypothesis import strategies as st

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.table import LabelsTable, TableRecord, read_dataset, read_table

LABELS = ("T-Shirt", "Pants", "Hat")


def write_table(path: Path, header: list[str], rows: list[list[str]], *, delimiter: str = ",",
                encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def kaggle(root: Path, n: int = 48, senders: int = 12, extra: tuple[str, ...] = ("Not sure",)) -> tuple[Path, Path]:
    """``root/images/<id>.jpg`` and ``root/images.csv`` (image without extension, sender_id, label, kids), as the
    public clothing dataset keeps them; every sender sent photos of several classes."""
    labels = LABELS + extra
    rows = []
    for i in range(n):
        make_image(root / "images" / f"{i:03d}.jpg", seed=i)
        rows.append([f"{i:03d}", f"s{i % senders}", labels[(i // senders + i) % len(labels)], str(i % 2 == 0)])
    return root / "images", write_table(root / "images.csv", ["image", "sender_id", "label", "kids"], rows)


@pytest.fixture
def table(tmp_path: Path) -> tuple[Path, Path]:
    return kaggle(tmp_path)


def spec(path: Path, **kw) -> LabelsTable:
    return LabelsTable(path, **{"group_column": "sender_id", "classes": LABELS, **kw})


def test_a_kaggle_table_reads_as_a_grouped_stratified_split(table) -> None:
    images, path = table
    ds = read_dataset(images, spec(path))
    assert ds.class_names == sorted(LABELS) and ds.name == "images"
    files = [f for fs in ds.files.values() for f in fs]
    assert len(files) == 36 and all(f.path.is_file() and f.rel_path.endswith(".jpg") for f in files)
    assert ds.table.left_out == {"Not sure": 12} and ds.table.missing == 0
    splits_of = {}
    for f in files:
        splits_of.setdefault(f.group, set()).add(f.split)
    assert all(len(s) == 1 for s in splits_of.values()), "a sender in two splits"
    assert {ds.class_names[f.label] for f in ds.files["train"]} == set(LABELS)
    assert set(ds.files) == {"train", "validation", "test"}
    assert ds.table.describe() == "Split by sender_id, seed 0 (70/15/15): no sender_id in two splits (images.csv)."
    for fs in ds.files.values():
        assert [f.rel_path for f in fs] == sorted(f.rel_path for f in fs)
    assert TableRecord.from_dict(json.loads(json.dumps(ds.table.to_dict()))) == ds.table


def test_the_same_table_in_another_order_or_format_gives_the_same_dataset(table, tmp_path: Path) -> None:
    images, path = table
    first = read_dataset(images, spec(path))
    lines = path.read_text().splitlines()
    (tmp_path / "shuffled.tsv").write_text("\n".join([lines[0], *reversed(lines[1:])]).replace(",", "\t") + "\n")
    bom = tmp_path / "bom.csv"  # Excel's "CSV UTF-8"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(path.read_text().replace(",", ";"))
    for other in (spec(tmp_path / "shuffled.tsv"), spec(bom), spec(semicolons, separator=";")):
        again = read_dataset(images, other)
        assert again.files == first.files and again.class_names == first.class_names


def test_parquet_tables_read_like_csv(table, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, path = table
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pq.write_table(pa.table({"image": [r["image"] for r in rows], "sender_id": [r["sender_id"] for r in rows],
                             "label": [r["label"] for r in rows], "kids": [r["kids"] == "True" for r in rows]}),
                   tmp_path / "images.parquet")
    parquet = read_dataset(images, spec(tmp_path / "images.parquet", where=("kids=False",)))
    assert parquet.files == read_dataset(images, spec(path, where=("kids=False",))).files
    assert parquet.table.left_out["--where"] == 24


def test_a_split_column_wins_and_a_crossing_group_is_counted(table, tmp_path: Path) -> None:
    images, _ = table
    rows = [[f"{i:03d}.jpg", f"s{i % 4}", LABELS[i % 3], ("train", "val", "test")[i % 3 if i >= 9 else 0]]
            for i in range(30)]
    path = write_table(tmp_path / "split.csv", ["path", "sender", "class", "split"], rows)
    ds = read_dataset(images, LabelsTable(path, label_column="class", group_column="sender"))
    assert {s: len(f) for s, f in ds.files.items()} == {"train": 16, "validation": 7, "test": 7}
    assert ds.table.split_by == "column" and ds.table.groups == 4 and ds.table.groups_in_two_splits == 4
    assert "4 of 4 sender values in two splits" in ds.table.describe()


def test_photos_the_folder_lacks_are_listed_and_the_rest_go_on(table) -> None:
    images, path = table
    (images / "005.jpg").unlink()
    (images / "017.jpg").unlink()
    ds = read_dataset(images, spec(path, classes=()))
    assert sorted(ds.stray_reasons) == ["005", "017"]
    assert "listed in images.csv line 7, not found in" in ds.stray_reasons["005"]
    assert ds.table.missing == 2 and len(ds) == 46


def test_missing_photos_are_skipped_by_featurize_and_stop_it_with_strict(table, tmp_path: Path) -> None:
    images, path = table
    (images / "005.jpg").unlink()
    result = featurize_tiny(images, tmp_path / "out" / "cache.h5", labels=spec(path, classes=()))
    assert [p for p, _ in result.skipped] == ["005"] and result.computed == 47
    with pytest.raises(ClothprobeError, match=r"--strict: 1 file\(s\) cannot be used:\n.*005: listed in images.csv"):
        featurize_tiny(images, tmp_path / "strict" / "cache.h5", labels=spec(path, classes=()), strict=True)
    assert not (tmp_path / "strict" / "cache.h5").exists()


def bad(tmp_path: Path, header: list[str], rows: list[list[str]], **kw) -> str:
    """The one-line error of reading this table against the fixture's images (nothing else happens)."""
    path = write_table(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ClothprobeError) as err:
        read_dataset(tmp_path / "images", LabelsTable(path, **kw))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_bad_table_is_one_line_naming_the_file_and_row(table, tmp_path: Path) -> None:
    h = ["image", "label"]
    assert "bad.csv line 3: '001' is listed again with label 'Hat'; bad.csv line 2 gives it 'Pants'" in bad(
        tmp_path, h, [["001", "Pants"], ["001", "Hat"], ["002", "Hat"]])
    assert "bad.csv line 3: '001.jpg' is listed again with group 'b'" in bad(
        tmp_path, [*h, "g"], [["001", "Hat", "a"], ["001.jpg", "Hat", "b"]], group_column="g")
    assert "outside the image folder" in bad(tmp_path, h, [["../images.csv", "Hat"], ["002", "Hat"]])
    assert "bad.csv line 2: '/etc/passwd' is outside the image folder" in bad(tmp_path, h, [["/etc/passwd", "Hat"]])
    assert "bad.csv line 2: split 'holdout' is none of train, validation (or val), test" in bad(
        tmp_path, [*h, "split"], [["001", "Hat", "holdout"]])
    assert "class 'Hat' has no training photo (1 in test)" in bad(
        tmp_path, [*h, "split"], [["001", "Hat", "test"], ["002", "Pants", "train"]])
    assert "the group column 'g' holds one value ('x') for all 3 photos" in bad(
        tmp_path, [*h, "g"], [["001", "Hat", "x"], ["002", "Hat", "x"], ["003", "Pants", "x"]], group_column="g")
    assert "bad.csv line 3 has 3 fields, the header 2" in bad(tmp_path, h, [["001", "Hat"], ["002", "Hat", "x"]])
    assert "the labels 'T-Shirt' (1 rows) and 't-shirt' (1 rows) differ only in case" in bad(
        tmp_path, h, [["001", "T-Shirt"], ["002", "t-shirt"]])
    assert "--classes 't-shirt': no row of bad.csv has that label (near: 'T-Shirt')" in bad(
        tmp_path, h, [["001", "T-Shirt"]], classes=("t-shirt",))
    assert "has no column 'Label' (--label-column) (near: 'label')" in bad(tmp_path, h, [["001", "Hat"]],
                                                                         label_column="Label")
    assert "--where kids=false: no row of bad.csv has kids = 'false' (near: 'False')" in bad(
        tmp_path, [*h, "kids"], [["001", "Hat", "False"]], where=("kids=false",))
    assert "bad.csv line 2: the image column is empty" in bad(tmp_path, h, [["", "Hat"]])
    assert "no row is left to use (Hat: 1, --where: 1 left out)" in bad(
        tmp_path, h, [["001", "Hat"], ["002", "Pants"]], classes=("Pants",), where=("image=001",))
    assert "class 'Pants' (--classes) has no row left after --where" in bad(
        tmp_path, h, [["001", "Hat"], ["002", "Pants"]], classes=("Pants", "Hat"), where=("image=001",))
    assert "one column, 'image', is named for two roles" in bad(tmp_path, h, [["001", "Hat"]], label_column="image")


def test_empty_one_column_utf16_and_ragged_tables_are_refused_by_name(tmp_path: Path) -> None:
    def refused(name: str, content: bytes, **kw) -> str:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ClothprobeError) as err:
            read_table(tmp_path / name, **kw)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
        return str(err.value)

    assert "is empty" in refused("empty.csv", b"")
    assert "is empty" in refused("blank.csv", b"\n\n")
    assert "has a header (image, label) but no rows" in refused("header.csv", b"image,label\n")
    assert "has one column ('image')" in refused("one.csv", b"image\n001\n")
    assert "looks separated by ';': give --separator ';'" in refused("semi.csv", b"image;label\n001;Hat\n")
    assert "UTF-16" in refused("utf16.csv", "image,label\n001,Hat\n".encode("utf-16"))
    assert "line 3 is not UTF-8" in refused("latin1.csv", "image,label\n001,Hat\n002,Caf\u00e9\n".encode("latin-1"))
    assert "names column 'image' twice" in refused("twice.csv", b"image,image\n001,Hat\n")
    assert "cannot be read as Parquet" in refused("fake.parquet", b"image,label\n001,Hat\n")
    assert "does not exist" in str(pytest.raises(ClothprobeError, read_table, tmp_path / "none.csv").value)


def test_names_resolve_with_or_without_extension_and_ambiguity_is_refused(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "a" / "x.jpg", seed=1)
    make_image(tmp_path / "images" / "y.png", seed=2)
    make_image(tmp_path / "images" / "y.jpg", seed=3)
    path = write_table(tmp_path / "t.csv", ["image", "label"], [["a/x", "Hat"], ["./a/../y.png", "Hat"]])
    ds = read_dataset(tmp_path / "images", LabelsTable(path, proportions=(1.0, 0.0, 0.0)))
    assert [f.rel_path for f in ds.files["train"]] == ["a/x.jpg", "y.png"]
    write_table(path, ["image", "label"], [["y", "Hat"]])
    with pytest.raises(ClothprobeError, match=r"t.csv line 2: 'y' could be y.jpg or y.png; give the extension"):
        read_dataset(tmp_path / "images", LabelsTable(path, proportions=(1.0, 0.0, 0.0)))


def test_a_bad_table_writes_nothing_and_says_one_line(table, tmp_path: Path) -> None:
    images, path = table
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, "000,s0,Hat,True"]) + "\n")  # 000 again, labelled otherwise
    work = tmp_path / "work"
    work.mkdir()
    res = cli("featurize", "--data", str(images), "--labels", str(path), "--weights", "none", "--backbone", "vgg16",
              "--image-size", "32", cwd=work)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "images.csv line 50: '000' is listed again with label 'Hat'; images.csv line 2 gives it" in res.stderr
    assert list(work.iterdir()) == []
    res = cli("featurize", "--data", str(images), "--group-column", "sender_id", cwd=work)
    assert res.returncode == 2 and "--group-column: for a labels table; give --labels TABLE too." in res.stderr


def test_featurize_caches_the_split_and_groups_and_moving_photos_recomputes_nothing(table, tmp_path: Path) -> None:
    from clothprobe.featurize import load_features

    images, path = table
    out = tmp_path / "out" / "cache.h5"
    first = featurize_tiny(images, out, labels=spec(path))
    assert first.computed == 36 and first.table.left_out == {"Not sure": 12}
    cache = load_features(out)
    assert TableRecord.from_dict(cache.header.table) == first.table and cache.info().table == first.table.to_dict()
    train = cache.split("train")
    assert len(train.groups) == len(train.paths) and set(train.groups) <= {f"s{i}" for i in range(12)}
    assert featurize_tiny(images, out, labels=spec(path)).up_to_date  # the same table: nothing to do
    exported = cache.to_arrow()
    assert exported.column_names[:6] == ["split", "path", "label", "class", "sha256", "group"]
    assert sorted(exported.column("group").to_pylist()) == sorted(g for s in cache.splits.values() for g in s.groups)
    moved = tmp_path / "elsewhere"  # the photos moved into a subfolder, and the table renamed and rewritten
    shutil.move(images, moved / "photos")
    renamed = write_table(tmp_path / "labels-v2.csv", ["path", "sender_id", "label", "kids"],
                          [[f"photos/{r[0]}.jpg", *r[1:]] for r in csv.reader(path.open()) if r[0] != "image"])
    again = featurize_tiny(moved, tmp_path / "out" / "cache.h5", labels=spec(renamed))
    assert again.computed == 0 and again.reused == 36


def test_a_folder_cache_is_unchanged_by_the_table_fields(dataset: Path, tmp_path: Path) -> None:
    import h5py

    from clothprobe.featurize import load_features

    out = tmp_path / "cache.h5"
    featurize_tiny(dataset, out)
    with h5py.File(out) as h5:
        assert "table" not in h5.attrs and "groups" not in h5["train"]
    cache = load_features(out)
    assert cache.header.table == {} and cache.split("train").groups is None and "table" not in cache.info().to_dict()


@pytest.mark.slow
def test_fit_report_predict_export_and_audit_work_on_a_table_dataset(tmp_path: Path) -> None:
    images, path = kaggle(tmp_path / "data", n=90, senders=15)
    work = tmp_path / "work"
    work.mkdir()
    tiny = ["--weights", "none", "--backbone", "vgg16", "--image-size", "32", "--precision", "float32"]
    res = cli("featurize", "--data", str(images), "--labels", str(path), "--group-column", "sender_id", "--classes",
              ",".join(LABELS), "--tta", "flip", *tiny, cwd=work)
    assert res.returncode == 0, res.stderr
    assert "left out: Not sure" in res.stdout and "no sender_id in two splits" in res.stdout
    res = cli("fit", "--backbone", "vgg16", "--taps", "final", cwd=work)
    assert res.returncode == 0, res.stderr
    res = cli("report", cwd=work)
    assert res.returncode == 0, res.stderr
    page = (work / "reports" / "index.html").read_text()
    assert "Split by sender_id, seed 0 (70/15/15): no sender_id in two splits (images.csv)." in page
    run = work / "models" / "images" / "vgg16" / "logreg-weights"
    res = cli("predict", str(images / "000.jpg"), "--model", str(run), "--format", "csv", cwd=work)
    assert res.returncode == 0 and "images/000.jpg" in res.stdout, res.stderr
    res = cli("export", str(work / "features" / "images" / "vgg16.h5"), "--out", str(work / "e.parquet"), cwd=work)
    kept = sum(1 for row in csv.DictReader(path.open()) if row["label"] in LABELS)
    assert res.returncode == 0 and f"wrote {kept} rows" in res.stdout, res.stderr
    res = cli("audit", "--backbone", "vgg16", cwd=work)
    assert res.returncode == 0, res.stderr
    assert "sender_id from the labels table the cache was made from" in (work / "audit.html").read_text()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(TableRecord("t.csv", 1, "seed").to_dict()) + ["other"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.floats(), max_size=3),
                                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))))
def test_a_table_record_read_back_is_one_or_a_clothprobe_error(d) -> None:
    try:
        record = TableRecord.from_dict(d)
    except ClothprobeError as err:
        assert "not a table record" in str(err)
    else:
        assert TableRecord.from_dict(record.to_dict()) == record
