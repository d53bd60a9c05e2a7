"""A folder of photos with a labels table beside it (``images/<id>.jpg`` and ``images.csv``: Kaggle sets,
fastai's ``from_csv``, Keras' ``flow_from_dataframe``, Hugging Face's ``metadata.csv``), read into the same
``Dataset`` the folder scan gives, so every later stage works unchanged.

The table: CSV or TSV (Python's ``csv`` module: labels tables are small, and no extra is needed; a UTF-8
byte-order mark is accepted) or Parquet (``pip install "clothprobe[export]"``). One column names each photo
(a path inside the image folder, with or without its extension), one its label; optionally one its split
(``train``, ``validation`` or ``val``, ``test``: it wins) and one its group (a sender, a shop: with no split
column the photos are split by group, ``featurize/splits.py``). Every check is made before any work, and a
table that fails one is refused in one line naming the file and the line; only a photo the table lists
that is not in the folder is skipped and reported (``--strict`` stops instead).

``TableRecord`` (this module owns its keys) says how the dataset was made from its table; featurize keeps it
in the cache (the ``table`` attribute) and the report shows it.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.dataset import SPLIT_ALIASES, SPLITS, Dataset, ImageFile, scan
from clothprobe.featurize.images import is_ignored, not_regular_reason
from clothprobe.featurize.splits import DEFAULT_PROPORTIONS, assign_splits

PARQUET = (".parquet", ".pq")
TAB_SEPARATED = (".tsv", ".tab")
IMAGE_COLUMNS = ("image", "path")  # looked for, in this order, when no image column is named
SPLIT_COLUMN = "split"  # a column of this name is the split unless another is named
NO_LABEL = "(no label)"
SPLIT_BY = ("column", "seed")  # the table's own split column, or featurize/splits.py's seeded split


@dataclass(frozen=True)
class LabelsTable:
    """How to read a labels table: which file, which columns, which rows, and how to split without a split
    column. ``None`` columns are looked for (image: ``image`` or ``path``; split: ``split``)."""

    path: Path
    image_column: str | None = None
    label_column: str = "label"
    split_column: str | None = None
    group_column: str | None = None
    classes: tuple[str, ...] = ()  # labels to keep (empty: every label); the rest are left out and counted
    where: tuple[str, ...] = ()  # "column=value": keep only the rows where every one holds
    separator: str | None = None  # None: "," (a tab for .tsv / .tab)
    proportions: tuple[float, float, float] = DEFAULT_PROPORTIONS
    seed: int = 0


@dataclass(frozen=True)
class TableRecord:
    """How a dataset was made from its table, as featurize records it in the cache and the report shows it."""

    table: str  # the table's file name
    images: int  # photos listed and kept
    split_by: str  # one of SPLIT_BY
    split_column: str = ""
    group_column: str = ""
    seed: int = 0
    proportions: tuple[float, ...] = ()
    groups: int = 0  # distinct groups among the kept photos
    groups_in_two_splits: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # why (a label, "--where", NO_LABEL) -> rows
    missing: int = 0  # listed photos not found in the folder

    def describe(self) -> str:
        """One sentence: how the photos were split, and whether a group crosses splits."""
        group = self.group_column
        if self.split_by == "column":
            how = f"Split as the table's {self.split_column!r} column says"
        else:
            shares = "/".join(f"{100 * p:g}" for p in self.proportions)
            how = (f"Split by {group}, seed {self.seed} ({shares})" if group else
                   f"Split photo by photo, stratified by class, seed {self.seed} ({shares})")
        if not group:
            return how + f" ({self.table})."
        crossing = (f"no {group} in two splits" if not self.groups_in_two_splits else
                    f"{self.groups_in_two_splits} of {self.groups} {group} values in two splits (a leak: cli audit "
                    f"lists them)")
        return f"{how}: {crossing} ({self.table})."

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "images": self.images, "split_by": self.split_by,
                "split_column": self.split_column, "group_column": self.group_column, "seed": self.seed,
                "proportions": list(self.proportions), "groups": self.groups,
                "groups_in_two_splits": self.groups_in_two_splits, "left_out": dict(self.left_out),
                "missing": self.missing}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableRecord:
        """The record ``to_dict`` wrote; a ClothprobeError for anything else."""
        if not isinstance(d, dict) or d.get("split_by") not in SPLIT_BY:
            raise ClothprobeError(f"not a table record this clothprobe can read (split_by must be one of "
                                  f"{', '.join(SPLIT_BY)})")
        try:
            return cls(table=str(d["table"]), images=int(d["images"]), split_by=str(d["split_by"]),
                       split_column=str(d["split_column"]), group_column=str(d["group_column"]), seed=int(d["seed"]),
                       proportions=tuple(float(p) for p in d["proportions"]), groups=int(d["groups"]),
                       groups_in_two_splits=int(d["groups_in_two_splits"]),
                       left_out={str(k): int(v) for k, v in dict(d["left_out"]).items()}, missing=int(d["missing"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ClothprobeError(f"not a table record this clothprobe can read ({err})") from None


def open_dataset(data: str | Path, labels: LabelsTable | None = None) -> Dataset:
    """The dataset under ``data``: its folders (``dataset.scan``), or the photos ``labels`` lists."""
    return scan(data) if labels is None else read_dataset(data, labels)


# ---------------------------------------------------------------------------------------------------
# Reading the table: cells as text, each row with where it is ("images.csv line 5").


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[list[str]]
    where: list[str]  # per row: "images.csv line 5" / "images.parquet row 4"

    def column(self, name: str) -> list[str]:
        k = self.columns.index(name)
        return [row[k] for row in self.rows]

    def keep(self, mask: Sequence[bool]) -> None:
        self.rows = [r for r, ok in zip(self.rows, mask) if ok]
        self.where = [w for w, ok in zip(self.where, mask) if ok]


def read_table(path: str | Path, separator: str | None = None) -> Table:
    """Every cell as stripped text; a header and at least one row, two columns or more."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClothprobeError(f"Labels table {path} does not exist (or is not a file); give --labels a CSV, TSV or "
                              f"Parquet file.")
    table = _read_parquet(path) if path.suffix.lower() in PARQUET else _read_text(path, separator)
    if not table.columns or not any(table.columns):
        raise ClothprobeError(f"{path} is empty: expected a header line (e.g. image,label) and one row per photo.")
    if len(table.columns) < 2:
        raise ClothprobeError(f"{path} has one column ({table.columns[0]!r}); a labels table needs an image and a "
                              f"label column.{_separator_hint(table.columns[0], separator)}")
    twice = [c for c, n in Counter(table.columns).items() if n > 1]
    if twice:
        raise ClothprobeError(f"{path}: the header names column {twice[0]!r} twice; rename one.")
    if not table.rows:
        raise ClothprobeError(f"{path} has a header ({', '.join(table.columns)}) but no rows.")
    return table


def _separator_hint(header: str, separator: str | None) -> str:
    found = [s for s in (";", "\t", "|", ",") if s in header and s != separator]
    if not found:
        return ""
    name = {";": "';'", "\t": "a tab", "|": "'|'", ",": "','"}[found[0]]
    return f" Its header looks separated by {name}: give --separator {name if found[0] != chr(9) else 'tab'}."


def _read_text(path: Path, separator: str | None) -> Table:
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ClothprobeError(f"{path} is UTF-16 text (Excel's 'Unicode text'); save it as CSV UTF-8.")
    try:
        text = raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ClothprobeError(f"{path} line {line} is not UTF-8 text; save the table as UTF-8.") from None
    if "\x00" in text:
        raise ClothprobeError(f"{path} holds NUL bytes: not a text table (a Parquet file needs the .parquet suffix).")
    sep = "\t" if separator in ("tab", "\\t") else separator or ("\t" if path.suffix.lower() in TAB_SEPARATED else ",")
    if len(sep) != 1:
        raise ClothprobeError(f"--separator is one character (or 'tab'), got {separator!r}.")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    columns: list[str] = []
    rows, where = [], []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            if not columns:
                columns = [c.strip() for c in record]
                continue
            at = f"{path.name} line {reader.line_num}"
            if len(record) != len(columns):
                raise ClothprobeError(f"{at} has {len(record)} fields, the header {len(columns)}; quote a value that "
                                      f"holds the separator {sep!r}.")
            rows.append([cell.strip() for cell in record])
            where.append(at)
    except csv.Error as err:
        raise ClothprobeError(f"{path.name} line {reader.line_num} cannot be read as CSV: {err}.") from None
    return Table(path.name, columns, rows, where)


def _read_parquet(path: Path) -> Table:
    from clothprobe._util.extras import require

    pq = require("pyarrow.parquet", "export", f"Reading {path}")
    try:
        data = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise ClothprobeError(f"{path} cannot be read as Parquet ({type(err).__name__}: {err}).") from None
    cells = [["" if v is None else str(v).strip() for v in data.column(k).to_pylist()] for k in range(data.num_columns)]
    rows = [list(r) for r in zip(*cells)] if cells else []
    return Table(path.name, [str(c).strip() for c in data.column_names], rows,
                 [f"{path.name} row {k + 1}" for k in range(len(rows))])


# ---------------------------------------------------------------------------------------------------
# Choosing columns and rows


def near(value: str, choices: Sequence[str]) -> str:
    """``" (near: 'T-Shirt')"`` for the choices spelled like ``value`` (case, punctuation or a typo), else ""."""
    folded = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(value.casefold(), list(folded), n=3, cutoff=0.6)
    return f" (near: {', '.join(repr(folded[c]) for c in close)})" if close else ""


def _column(table: Table, given: str | None, option: str, default: Sequence[str] = ()) -> str | None:
    """The column ``given`` names (an error listing the columns when there is none), else the first of
    ``default`` the table has (None: none)."""
    if given is not None:
        if given not in table.columns:
            raise ClothprobeError(f"{table.name} has no column {given!r} ({option}){near(given, table.columns)}; its "
                                  f"columns: {', '.join(table.columns)}.")
        return given
    return next((c for c in default if c in table.columns), None)


def _filter(table: Table, where: Sequence[str]) -> int:
    """Keep the rows where every ``column=value`` holds; how many rows were left out."""
    before = len(table.rows)
    for condition in where:
        column, sep, value = condition.partition("=")
        if not sep or not column.strip():
            raise ClothprobeError(f"--where takes COLUMN=VALUE (e.g. kids=False), got {condition!r}.")
        column, value = column.strip(), value.strip()
        name = _column(table, column, "--where")
        values = table.column(name)
        if value not in values:
            present = sorted(set(values))
            raise ClothprobeError(f"--where {condition}: no row of {table.name} has {column} = {value!r}"
                                  f"{near(value, present)}; its values: {', '.join(map(repr, present[:10]))}"
                                  f"{', ...' if len(present) > 10 else ''}.")
        table.keep([v == value for v in values])
    return before - len(table.rows)


def _spelling(label: str) -> str:
    return re.sub(r"[\W_]+", "", label.casefold())


def _check_classes(table: Table, labels: list[str], classes: Sequence[str]) -> None:
    """Each of ``classes`` spelled as a label of the table (an error listing near-misses otherwise)."""
    spelled = sorted(set(labels) - {""})
    for wanted in classes:
        if wanted not in spelled:
            raise ClothprobeError(f"--classes {wanted!r}: no row of {table.name} has that label{near(wanted, spelled)};"
                                  f" labels are matched as spelled. Its labels: {', '.join(map(repr, spelled))}.")


def _kept_labels(table: Table, labels: list[str], classes: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The class names (sorted) and, per label left out, its row count; two labels of the table spelled alike
    but for case or punctuation are refused."""
    counts = Counter(labels)
    kept = sorted(set(classes) if classes else set(counts) - {""})
    alike: dict[str, str] = {}
    for label in kept:
        other = alike.setdefault(_spelling(label), label)
        if other != label:
            raise ClothprobeError(f"{table.name}: the labels {other!r} ({counts[other]} rows) and {label!r} "
                                  f"({counts[label]} rows) differ only in case or punctuation; spell them one way, or "
                                  f"keep one with --classes.")
    left_out = {label or NO_LABEL: n for label, n in sorted(counts.items()) if label not in kept}
    return kept, left_out


# ---------------------------------------------------------------------------------------------------
# Finding each listed photo in the image folder


@dataclass
class FolderIndex:
    """Every visible file under the image folder: posix path -> why it cannot be used ("" when it can), and each
    path without its extension -> the paths that have it."""

    root: Path
    files: dict[str, str]
    stems: dict[str, list[str]]

    @classmethod
    def of(cls, root: Path) -> FolderIndex:
        files: dict[str, str] = {}
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            files[rel] = "" if path.is_file() else not_regular_reason(path) or "not a regular file"
        stems: dict[str, list[str]] = {}
        for rel in sorted(files):
            stem, ext = posixpath.splitext(rel)
            if ext:
                stems.setdefault(stem, []).append(rel)
        return cls(root, files, stems)

    def resolve(self, name: str, where: str) -> str | None:
        """The posix path ``name`` denotes (with or without its extension), None when no file has it."""
        if not name:
            raise ClothprobeError(f"{where}: the image column is empty; name the photo, or remove the row.")
        path = name
        if os.path.isabs(name):
            try:
                path = Path(name).relative_to(self.root.resolve()).as_posix()
            except ValueError:
                try:
                    path = Path(name).relative_to(self.root.absolute()).as_posix()
                except ValueError:
                    path = ".."
        path = posixpath.normpath(path)
        if path == ".." or path.startswith("../") or path == ".":
            raise ClothprobeError(f"{where}: {name!r} is outside the image folder {self.root}; the table names photos "
                                  f"inside it (paths relative to it).")
        if path in self.files:
            return path
        found = self.stems.get(path, [])
        if len(found) > 1:
            raise ClothprobeError(f"{where}: {name!r} could be {' or '.join(found)}; give the extension.")
        return found[0] if found else None


def _walk(root: Path) -> Iterator[Path]:
    with os.scandir(root) as it:
        entries = sorted((e for e in it if not is_ignored(e.name)), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        else:
            yield Path(entry.path)


# ---------------------------------------------------------------------------------------------------
# The dataset


@dataclass
class _Row:
    where: str
    name: str  # as the table gives it
    rel: str  # posix path in the image folder (the name, normalized, when no file has it)
    found: bool
    label: str
    split: str  # "" without a split column
    group: str  # "" without a group column


@dataclass(frozen=True)
class _Columns:
    image: str
    label: str
    split: str | None
    group: str | None


def _columns(table: Table, spec: LabelsTable) -> _Columns:
    image = _column(table, spec.image_column, "--image-column", IMAGE_COLUMNS)
    if image is None:
        raise ClothprobeError(f"{table.name} has no column image or path; name the column of photo names with "
                              f"--image-column (its columns: {', '.join(table.columns)}).")
    chosen = _Columns(image, _column(table, spec.label_column, "--label-column"),
                      _column(table, spec.split_column, "--split-column", (SPLIT_COLUMN,)),
                      _column(table, spec.group_column, "--group-column"))
    named = [c for c in (chosen.image, chosen.label, chosen.split, chosen.group) if c is not None]
    if len(set(named)) != len(named):
        raise ClothprobeError(f"{table.name}: one column, {Counter(named).most_common(1)[0][0]!r}, is named for two "
                              f"roles (image, label, split, group); give each its own column.")
    return chosen


def _split_value(value: str, where: str) -> str:
    split = SPLIT_ALIASES.get(value.lower(), value.lower())
    if split not in SPLITS:
        raise ClothprobeError(f"{where}: split {value!r} is none of train, validation (or val), test.")
    return split


def _rows(table: Table, index: FolderIndex, cols: _Columns) -> tuple[list[_Row], int]:
    """One row per photo, in the table's order; rows listing a photo again with the same label, split and group
    are dropped (how many: the second value). Two rows that disagree about a photo are refused."""
    k = {name: table.columns.index(name) for name in (cols.image, cols.label, cols.split, cols.group) if name}
    rows: dict[str, _Row] = {}
    repeated = 0
    for cells, where in zip(table.rows, table.where):
        rel = index.resolve(cells[k[cols.image]], where)
        row = _Row(where, cells[k[cols.image]], rel or posixpath.normpath(cells[k[cols.image]]), rel is not None,
                   cells[k[cols.label]], _split_value(cells[k[cols.split]], where) if cols.split else "",
                   cells[k[cols.group]] if cols.group else "")
        first = rows.setdefault(row.rel, row)
        if first is row:
            continue
        for what, a, b in (("label", first.label, row.label), ("split", first.split, row.split),
                           ("group", first.group, row.group)):
            if a != b:
                raise ClothprobeError(f"{row.where}: {row.name!r} is listed again with {what} {b!r}; {first.where} "
                                      f"gives it {a!r}. Keep one row per photo.")
        repeated += 1
    return list(rows.values()), repeated


def _check_rows(table: Table, rows: list[_Row], classes: Sequence[str], column: str | None) -> None:
    """Every class kept has a row, and a group column has two groups or more."""
    empty = sorted(set(classes) - {r.label for r in rows})
    if empty:
        raise ClothprobeError(f"{table.name}: class {empty[0]!r} (--classes) has no row left after --where.")
    values = {r.group for r in rows if r.group}
    if column is not None and len(values) < 2:
        what = f"one value ({next(iter(values))!r})" if values else "no value"
        raise ClothprobeError(f"{table.name}: the group column {column!r} holds {what} for all {len(rows)} photos; "
                              f"grouping by it would put every photo in one split. Name another --group-column, or "
                              f"none.")


def _split(rows: list[_Row], cols: _Columns, spec: LabelsTable) -> None:
    """Each row's split: the table's, or seeded and stratified (grouped when there is a group column; a photo
    with an empty group is a group of its own)."""
    if cols.split is not None:
        return
    groups = [r.group or f"\0{r.rel}" for r in rows] if cols.group else None
    outcome = assign_splits([r.label for r in rows], groups, spec.proportions, spec.seed,
                            present=[r.found for r in rows])
    for row, split in zip(rows, outcome.splits):
        row.split = split


def _check_training(table: Table, rows: list[_Row], classes: Sequence[str]) -> None:
    """Refuse a class without a training photo in the folder, naming where its photos are."""
    for c in classes:
        mine = [r for r in rows if r.label == c]
        if any(r.found and r.split == "train" for r in mine):
            continue
        found = Counter(r.split for r in mine if r.found)
        where = ", ".join(f"{n} in {s}" for s, n in sorted(found.items())) or "none in the folder"
        missing = sum(1 for r in mine if not r.found)
        raise ClothprobeError(f"{table.name}: class {c!r} has no training photo ({where}"
                              f"{f', {missing} not found' if missing else ''}); give it training rows, or leave it "
                              f"out with --classes.")


def _crossing(rows: list[_Row]) -> tuple[int, int]:
    splits: dict[str, set[str]] = {}
    for r in rows:
        if r.group and r.found:
            splits.setdefault(r.group, set()).add(r.split)
    return len(splits), sum(1 for s in splits.values() if len(s) > 1)


def read_dataset(data: str | Path, spec: LabelsTable) -> Dataset:
    """The photos ``spec``'s table lists under the image folder ``data``, with their classes and splits, or
    one line saying what is wrong with the table. Listed photos not in the folder go to ``Dataset.stray``."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise ClothprobeError(f"Image folder {root} does not exist; --data names the folder the table's photo names "
                              f"are relative to.")
    table = read_table(spec.path, spec.separator)
    cols = _columns(table, spec)
    _check_classes(table, table.column(cols.label), spec.classes)
    filtered = _filter(table, spec.where)
    labels = table.column(cols.label)
    classes, left_out = _kept_labels(table, labels, spec.classes)
    table.keep([label in classes for label in labels])
    if filtered:
        left_out["--where"] = filtered
    if not table.rows:
        why = ", ".join(f"{k}: {n}" for k, n in left_out.items())
        raise ClothprobeError(f"{table.name}: no row is left to use ({why} left out).")
    index = FolderIndex.of(root)
    rows, repeated = _rows(table, index, cols)
    if repeated:
        left_out["repeated rows"] = repeated
    _check_rows(table, rows, classes, cols.group)
    _split(rows, cols, spec)
    _check_training(table, rows, classes)
    groups, crossing = _crossing(rows)
    record = TableRecord(table=table.name, images=len(rows), split_by="column" if cols.split else "seed",
                         split_column=cols.split or "", group_column=cols.group or "", seed=spec.seed,
                         proportions=() if cols.split else tuple(spec.proportions), groups=groups,
                         groups_in_two_splits=crossing, left_out=left_out, missing=sum(not r.found for r in rows))
    return _dataset(index, classes, rows, record)


def _dataset(index: FolderIndex, classes: list[str], rows: list[_Row], record: TableRecord) -> Dataset:
    """Files sorted by path within each split (the table's row order changes nothing); photos not found, or not
    regular files, go to ``stray`` with their reason."""
    label_of = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[ImageFile]] = {s: [] for s in SPLITS if any(r.split == s for r in rows) or s == "train"}
    stray, reasons = {}, {}
    for r in sorted(rows, key=lambda r: r.rel):
        why = index.files.get(r.rel, "") if r.found else f"listed in {r.where}, not found in {index.root}"
        if why:
            stray[r.rel], reasons[r.rel] = r.split, why
        else:
            files[r.split].append(ImageFile(r.split, r.rel, label_of[r.label], index.root / r.rel, r.group))
    return Dataset(root=index.root, class_names=classes, files=files, stray=stray, stray_reasons=reasons,
                   table=record)


def read_groups(spec: LabelsTable, paths: Sequence[str]) -> list[str]:
    """The group of each of ``paths`` (photos of a dataset, posix, relative to its folder) from ``spec``'s table:
    its image and group columns, a name matching a path as it is, without its extension, or by its file name
    with or without extension; "" for a photo the table does not list."""
    table = read_table(spec.path, spec.separator)
    image = _column(table, spec.image_column, "--image-column", IMAGE_COLUMNS)
    if image is None or spec.group_column is None:
        raise ClothprobeError(f"{table.name}: name its columns of photo names and of groups with --image-column and "
                              f"--group-column (its columns: {', '.join(table.columns)}).")
    group = table.columns.index(_column(table, spec.group_column, "--group-column"))
    by_name: dict[str, tuple[str, str]] = {}
    for cells, where in zip(table.rows, table.where):
        name = posixpath.normpath(cells[table.columns.index(image)])
        first = by_name.setdefault(name, (cells[group], where))
        if first[0] != cells[group]:
            raise ClothprobeError(f"{where}: {name!r} is listed again with group {cells[group]!r}; {first[1]} gives it "
                                  f"{first[0]!r}. Keep one row per photo.")
    found = []
    for path in paths:
        base = posixpath.basename(path)
        keys = (path, posixpath.splitext(path)[0], base, posixpath.splitext(base)[0])
        found.append(next((by_name[k][0] for k in keys if k in by_name), ""))
    if paths and not any(found):
        raise ClothprobeError(f"{table.name}: no photo name in column {image!r} matches a photo of the dataset (e.g. "
                              f"{next(iter(by_name))!r} and {paths[0]!r}).")
    return found
