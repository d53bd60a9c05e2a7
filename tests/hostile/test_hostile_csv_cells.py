"""Issue 30, class 6: text that becomes code elsewhere. A file or class name beginning with ``=``, ``+``,
``-``, ``@`` (or a tab, a carriage return...) is a live formula in a spreadsheet; every CSV clothprobe writes
(predict's score files, ``audit.csv``, a run's ``predictions.csv``) passes its text cells through one
function (``_util/csvcells.cell``: a leading ``'``), and clothprobe's own reader gets the exact text back."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli, make_image
from hypothesis import given, settings
from hypothesis import strategies as st

from clothprobe._util.csvcells import FORMULA_STARTS, QUOTE, cell, text_of
from clothprobe.runs import directory as rundir

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)  # any text a name can be
HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1", "-2+3", "@SUM(A1)", "\tcmd", "\rx", "'=quoted", "\uff1d1+1",
           "plain", ""]


def formula_free(value: str) -> bool:
    return not value.startswith(FORMULA_STARTS)


@given(TEXT)
def test_a_cell_is_never_a_formula_and_gives_its_text_back(text: str) -> None:
    assert formula_free(cell(text))
    assert text_of(cell(text)) == text
    if formula_free(text) and not text.startswith(QUOTE):
        assert cell(text) == text  # ordinary names are written as they are


def raw_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@settings(max_examples=40, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=4), st.lists(TEXT.filter(bool), min_size=2, max_size=3, unique=True),
       st.data())
def test_predictions_csv_is_formula_free_and_read_back_exactly(paths: list[str], classes: list[str],
                                                               data: st.DataObject) -> None:
    true = [data.draw(st.sampled_from(classes)) for _ in paths]
    proba = np.full((len(paths), len(classes)), 1 / len(classes))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / rundir.PREDICTIONS
        rundir.write_predictions(path, rundir.Predictions(paths, true, proba, classes))
        rows = raw_cells(path)
        back = rundir.read_predictions(folder, classes)
    assert all(formula_free(c) for row in rows[1:] for c in row[:3])
    assert back.paths == paths and back.true == true


def test_score_files_neutralize_csv_only(tmp_path: Path) -> None:
    from clothprobe.runs.predicting import ScoreWriter

    classes = ["=cmd", "+plus", "-minus", "@at"]
    paths = [f"{name}.jpg" for name in HOSTILE]
    proba = np.tile(np.array([0.4, 0.3, 0.2, 0.1]), (len(paths), 1))
    for suffix in (".csv", ".json", ".parquet"):
        with ScoreWriter(tmp_path / f"s{suffix}", classes, 2) as writer:
            writer.write(paths, proba, skipped=[("=bad.jpg", "-not an image")])
    rows = raw_cells(tmp_path / "s.csv")
    header, body = rows[0], rows[1:]
    text_columns = [i for i, name in enumerate(header) if name in ("path", "top1", "top2", "skipped")]
    assert all(formula_free(row[i]) for row in body for i in text_columns)
    assert [text_of(row[0]) for row in body] == [*paths, "=bad.jpg"]
    assert [text_of(row[1]) for row in body][:2] == ["=cmd", "=cmd"] and text_of(body[-1][-1]) == "-not an image"
    doc = json.loads((tmp_path / "s.json").read_text())  # JSON and Parquet are data, not sheets: as they are
    assert [r["path"] for r in doc["rows"]] == [*paths, "=bad.jpg"] and doc["rows"][0]["top1"] == "=cmd"
    assert pq.read_table(tmp_path / "s.parquet").column("path").to_pylist() == [*paths, "=bad.jpg"]


def test_audit_csv_is_formula_free(tmp_path: Path) -> None:
    from clothprobe.audit import page
    from clothprobe.audit.findings import Finding

    findings = [Finding(kind="label_issue", suspicion=0.9, split="train", path=f"{h}/0.jpg", label=h,
                        detail=f"looks like {h}", other_split="", other_path=h) for h in HOSTILE]
    page.write_csv(findings, tmp_path / "audit.csv")
    rows = raw_cells(tmp_path / "audit.csv")
    assert rows[0] == page.COLUMNS and page.is_audit_csv(tmp_path / "audit.csv")
    assert all(formula_free(c) for row in rows[1:] for c in row)
    assert [text_of(row[4]) for row in rows[1:]] == HOSTILE


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run fitted on classes named as formulas, with photos named as formulas."""
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("sheets")
    k = 0
    for split in ("train", "validation", "test"):
        for cls in ("=SUM(1)", "+hat", "@shirt"):
            for i in range(3):
                k += 1
                make_image(root / "clothes" / split / cls / f"-{i}.png", seed=k)
    featurize(root / "clothes", features_dir=root / "features", **TINY)
    (made,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                  models_dir=root / "models")
    return {"root": root, "run": made.run_dir, "test": root / "clothes" / "test"}


def test_a_runs_predictions_and_predict_csv_hold_no_formula(hostile_run: dict[str, Path]) -> None:
    run = hostile_run["run"]
    rows = raw_cells(run / rundir.PREDICTIONS)
    assert all(formula_free(c) for row in rows[1:] for c in row[:3])
    manifest = rundir.read_manifest(run)
    back = rundir.read_predictions(run, manifest.classes)
    assert set(back.true) == {"=SUM(1)", "+hat", "@shirt"} and all(Path(p).name.startswith("-") for p in back.paths)
    out = hostile_run["root"] / "scores.csv"
    done = cli("predict", str(hostile_run["test"]), "--model", str(run), "--output", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    rows = raw_cells(out)
    assert all(formula_free(c) for row in rows[1:] for c, name in zip(row, rows[0]) if not name.endswith("_p")
               and not name.startswith("p_"))
    assert {text_of(row[1]) for row in rows[1:]} <= {"=SUM(1)", "+hat", "@shirt"}


def test_the_cell_function_is_the_only_way_into_a_csv() -> None:
    """Every CSV writer in the package goes through _util/csvcells (csv.writer or pyarrow's CSVWriter)."""
    package = Path(rundir.__file__).resolve().parents[1]
    sources = [p for p in package.rglob("*.py") if not {"tests", "bench"} & set(p.relative_to(package).parts)
               and not any(part.startswith(".") for part in p.relative_to(package).parts)]  # a checkout's .venv
    writers = [p for p in sources if any(w in p.read_text(encoding="utf-8") for w in ("csv.writer(", "CSVWriter("))]
    assert writers, "no CSV writer found"
    for path in writers:
        assert "csvcells" in path.read_text(encoding="utf-8"), f"{path} writes CSV without _util/csvcells.cell"
