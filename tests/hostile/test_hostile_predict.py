"""Issue 17, predict's --output: one score writer (CSV, JSON, Parquet, same columns), a checked output path,
and an atomic write."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, make_dataset
from typer.testing import CliRunner

from clothprobe.classifiers import fit
from clothprobe.cli import app
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.runs.predicting import ScoreWriter, score_columns

runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("project")
    data = make_dataset(root / "clothes", per_class={"hat": 3, "shirt": 3})
    featurize(data, features_dir=root / "features", **TINY)
    (made,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                  models_dir=root / "models")
    (data / "test" / "hat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a photo")
    return {"data": data, "run": made.run_dir, "cache": root / "features" / "clothes" / "vgg16.h5", "root": root}


def predict(project: dict[str, Path], *args: str):  # noqa: ANN201 - a click Result
    return runner.invoke(app, ["predict", str(project["data"] / "test"), "--model", str(project["run"]), *args])


def refused(result, pattern: str) -> None:  # noqa: ANN001 - a click Result
    assert isinstance(result.exception, ClothprobeError), result.output
    assert re.search(pattern, str(result.exception)), str(result.exception)


def test_output_never_replaces_an_input_photo(project: dict[str, Path]) -> None:
    photo = project["data"] / "test" / "hat" / "0.png"
    before = photo.read_bytes()
    refused(predict(project, "--format", "csv", "--output", str(photo)), "is one of this command's inputs")
    assert photo.read_bytes() == before


@pytest.mark.parametrize("name", ["manifest.json", "metrics.json", "new-scores.csv"])
def test_output_never_goes_into_a_run(project: dict[str, Path], name: str) -> None:
    target = project["run"] / name
    before = target.read_bytes() if target.exists() else None
    refused(predict(project, "--format", "json", "--output", str(target)), "inside the clothprobe run")
    assert (target.read_bytes() if target.exists() else None) == before


def test_output_never_replaces_a_feature_cache(project: dict[str, Path]) -> None:
    before = project["cache"].read_bytes()
    refused(predict(project, "--format", "csv", "--output", str(project["cache"])), "feature cache")
    assert project["cache"].read_bytes() == before


def test_output_never_replaces_a_file_clothprobe_did_not_write(project: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "notes.csv"
    mine.write_text("path,comment\na.jpg,my notes\n")
    refused(predict(project, "--output", str(mine)), "exists and was not written by this command")
    assert mine.read_text() == "path,comment\na.jpg,my notes\n"


def test_output_with_format_table_is_an_error(project: dict[str, Path], tmp_path: Path) -> None:
    refused(predict(project, "--format", "table", "--output", str(tmp_path / "p.csv")), "--format table")
    assert not (tmp_path / "p.csv").exists()


def test_every_format_has_the_same_columns_and_rows(project: dict[str, Path], tmp_path: Path) -> None:
    frames = {}
    for suffix in ("csv", "json", "parquet"):
        out = tmp_path / f"scores.{suffix}"
        res = predict(project, "--output", str(out), "--top-k", "2")
        assert res.exit_code == 0, res.output
        if suffix == "csv":
            frames[suffix] = pd.read_csv(out, keep_default_na=False)
        elif suffix == "json":
            doc = json.loads(out.read_text())
            assert doc["run"] == "vgg16/logreg-none" and doc["calibrated"] is False
            frames[suffix] = pd.DataFrame(doc["rows"], columns=doc["columns"])
        else:
            frames[suffix] = pd.read_parquet(out)
        again = predict(project, "--output", str(out), "--top-k", "2")  # its own file: replaced
        assert again.exit_code == 0, again.output
    columns = score_columns(["hat", "shirt"], 2)
    for suffix, frame in frames.items():
        assert list(frame.columns) == columns, suffix
        assert len(frame) == 7 and list(frame["skipped"] != "").count(True) == 1, suffix
        bad = frame[frame["skipped"] != ""]
        assert bad["path"].iloc[0].endswith("broken.jpg"), suffix
    good = [f[f["skipped"] == ""].sort_values("path") for f in frames.values()]
    for other in good[1:]:
        assert list(other["path"]) == list(good[0]["path"]) and list(other["top1"]) == list(good[0]["top1"])
        assert np.allclose(other["p_hat"].astype(float), good[0]["p_hat"].astype(float), atol=1e-6)


def test_stdout_csv_and_json_use_the_same_writer(project: dict[str, Path]) -> None:
    res = predict(project, "--format", "csv")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    assert rows[0] == score_columns(["hat", "shirt"], 2) and len(rows) == 8
    res = predict(project, "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["columns"] == rows[0] and len(doc["rows"]) == 7


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"scores.{fmt}"
    with ScoreWriter(out, ["a", "b"], 1) as writer:
        writer.write(["x.jpg"], np.array([[0.25, 0.75]]))
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt), ScoreWriter(out, ["a", "b"], 1) as writer:
        writer.write(["y.jpg"], np.array([[0.5, 0.5]]))
        raise KeyboardInterrupt  # killed half-way
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_unicode_class_names_and_odd_file_names(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "données", per_class={"chapeau 帽子": 3, "👕 t-shirt, \"v\"": 3})
    odd = data / "test" / "chapeau 帽子" / "a\nb ,;'\"[x].png"
    (data / "test" / "chapeau 帽子" / "0.png").rename(odd)
    featurize(data, features_dir=tmp_path / "features", **TINY)
    (made,) = fit("données", backbone="vgg16", clf="logreg", balance="none", features_dir=tmp_path / "features",
                  models_dir=tmp_path / "models")
    moved = tmp_path / "moved-models"
    made.run_dir.parents[2].rename(moved)  # the project folder moved: the run still loads
    run = moved / made.run_dir.relative_to(made.run_dir.parents[2])
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["predict", str(data / "test"), "--model", str(run), "--output", str(out)])
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert "p_👕 t-shirt, \"v\"" in frame.columns and str(odd) in set(frame["path"])


def test_a_killed_writers_leftover_is_removed_by_the_next_one(tmp_path: Path) -> None:
    out = tmp_path / "scores [1]*.csv"
    leftover = tmp_path / ".scores [1]*.csv.tmp-999999999"  # no such process: killed
    leftover.write_text("half a fi")
    with ScoreWriter(out, ["a", "b"], 1) as writer:
        writer.write(["x.jpg"], np.array([[0.25, 0.75]]))
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
