"""Issue 30, class 1: special files read or written. Every file clothprobe reads back is checked to be a
regular file without blocking and read with a size bound (``_util/files.py``); an output path that is not a
regular file is written as a stream (a pipe, ``>(...)``, ``/dev/stdout``) or refused in one line, and never
opened to read. Each reader runs in a fresh Python with a timeout, so a hang fails the test instead of
blocking the suite."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import test_hostile_predict
from conftest import cli, python_output

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(),
                                reason="needs FIFOs and /dev/zero")

project = test_hostile_predict.project  # the fixture: a run fitted on tiny photos, its dataset and cache
KINDS = ["fifo", "zero"]  # a FIFO nobody writes (opening it to read blocks); a link to /dev/zero (never ends)


def special(path: Path, kind: str) -> Path:
    """Replace ``path`` by a FIFO or a link to /dev/zero."""
    if path.is_dir():
        raise AssertionError(f"{path} is a folder")
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


def run_in_python(body: str) -> str:
    """``body`` in a fresh Python (60 s at most); what it prints."""
    return python_output("from pathlib import Path\n" + body, timeout=60)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    from test_hostile_runs import write_run

    return write_run(tmp_path / "models" / "clothes" / "vgg16" / "lgbm-none")


# --- reading back: each document a command reads, replaced by a FIFO or a link to /dev/zero ----------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name, call", [
    ("manifest.json", "from clothprobe.runs.directory import read_manifest as f; f(run)"),
    ("metrics.json", "from clothprobe.runs.directory import read_metrics as f; f(run)"),
    ("predictions.csv", "from clothprobe.runs.directory import read_predictions as f; f(run, ['a', 'b'])"),
    ("manifest.json", "from clothprobe.runs.predicting import Predictor; Predictor(run)"),
])
def test_a_runs_documents_are_refused_in_one_line(run: Path, kind: str, name: str, call: str) -> None:
    special(run / name, kind)
    out = run_in_python(f"""
from clothprobe.errors import ClothprobeError
run = Path({str(run)!r})
try:
    {call}
    print("read it")
except ClothprobeError as err:
    print("refused:", err)
""")
    what = "a named pipe (FIFO)" if kind == "fifo" else "a symbolic link to /dev/zero, which is a character device"
    assert f"refused: {run / name} is not a regular file but {what}" in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_report_lists_a_run_whose_metrics_are_special_and_goes_on(run: Path, tmp_path: Path, kind: str) -> None:
    from test_hostile_runs import write_run

    write_run(run.parent / "lgbm-weights")
    special(run / "metrics.json", kind)
    out = run_in_python(f"""
from clothprobe.report.runs import collect_runs
found, skipped = collect_runs(Path({str(tmp_path / "models")!r}))
print([r.id for runs in found.values() for r in runs], skipped)
""")
    assert "'vgg16/logreg-none'" in out and f"{run / 'metrics.json'} is not a regular file" in out, out


@pytest.mark.parametrize("kind", KINDS)
def test_is_run_and_the_catalog_and_the_store_do_not_hang(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / ".clothprobe-run").write_text("")
    special(folder / "manifest.json", kind)
    features = tmp_path / "features"
    features.mkdir()
    special(features / "catalog.json", kind)
    entry = tmp_path / "home" / "models" / "0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / ".clothprobe-store-entry").write_text("")
    special(entry / "manifest.json", kind)
    out = run_in_python(f"""
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.catalog import datasets
from clothprobe.featurize.model.store import ModelStore
from clothprobe.runs.directory import is_run
print("is_run", is_run(Path({str(folder)!r})))
print("datasets", datasets(Path({str(features)!r})))
try:
    ModelStore(Path({str(tmp_path / "home")!r})).read("0123456789abcdef")
except ClothprobeError as err:
    print("store:", err)
""")
    assert "is_run False" in out and "datasets []" in out
    assert "store: Cannot read" in out and "is not a regular file" in out


@pytest.mark.parametrize("kind", KINDS)
def test_a_feature_cache_that_is_special_is_refused(tmp_path: Path, kind: str) -> None:
    cache = special(tmp_path / "vgg16.h5", kind)
    out = run_in_python(f"""
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import load_features
try:
    load_features(Path({str(cache)!r}))
except ClothprobeError as err:
    print("refused:", err)
""")
    assert "refused:" in out and "not a regular file" in out, out


def test_the_reader_bounds_what_it_reads(tmp_path: Path) -> None:
    from clothprobe._util.files import UnreadableFile, read_bytes, read_json

    big = tmp_path / "manifest.json"
    big.write_bytes(b" " * 1001)
    with pytest.raises(UnreadableFile, match="holds 1,001 bytes, more than the 1,000"):
        read_bytes(big, limit=1000)
    big.write_text('{"a": 1}')
    assert read_json(big) == {"a": 1}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


# --- writing: an output that is a FIFO, a pipe or a device ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_output_checks_never_open_a_special_file_to_read(run: Path, tmp_path: Path, kind: str) -> None:
    """The 'was it ours?' checks opened the path to read it: a FIFO hung them, /dev/zero never ended. A
    command that writes streams takes it as a stream; the report (a folder of files it replaces whole)
    refuses it in one line."""
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    target = special(tmp_path / "scores.csv", kind)
    html = special(tmp_path / "audit.html", kind)
    site = tmp_path / "site"
    site.mkdir()
    special(site / "index.html", kind)
    out = run_in_python(f"""
from clothprobe._util.outputs import check_output
from clothprobe.audit import page
from clothprobe.errors import ClothprobeError
from clothprobe.report.folder import ReportFolder
from clothprobe.runs.predicting import check_score_output
print("predict:", check_score_output(Path({str(target)!r}), [Path({str(photo)!r})], Path({str(run)!r})))
print("audit:", check_output(Path({str(html)!r}), option="--html", ours=page.is_audit_html, stream=True))
try:
    check_output(Path({str(target)!r}), option="--out")
except ClothprobeError as err:
    print("a file-only output:", err)
try:
    ReportFolder.plan(Path({str(site)!r}), {{"index.html": "x"}})
except ClothprobeError as err:
    print("report:", err)
""")
    assert f"predict: {target}" in out and f"audit: {html}" in out, out
    assert "a file-only output: --out" in out and "not a regular file; this command writes a file" in out, out
    assert f"report: --out {site / 'index.html'} is " in out, out


def read_fifo_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader, got


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_predict_writes_scores_into_a_fifo_as_a_stream(project: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    """`cli predict --output >(...)`: what a user means is a pipe; the scores arrive through it."""
    fifo = tmp_path / f"scores{suffix}"
    os.mkfifo(fifo)
    reader, got = read_fifo_in_background(fifo)
    done = cli("predict", str(project["data"] / "test"), "--model", str(project["run"]), "--output", str(fifo),
               timeout=300)
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert fifo.exists() and not fifo.is_file()  # still the FIFO: never replaced by a file
    head = got[0][:4]
    assert {".csv": b"\"pat", ".json": b"{\n  ", ".parquet": b"PAR1"}[suffix] == head, got


def test_export_writes_parquet_into_a_fifo_and_predict_to_dev_null(project: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "export.parquet"
    os.mkfifo(fifo)
    reader, got = read_fifo_in_background(fifo)
    done = cli("export", str(project["cache"]), "--out", str(fifo), timeout=300)
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert got and got[0][:4] == b"PAR1" and got[0][-4:] == b"PAR1"
    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")  # a device: written as a stream (and discarded), never read
    done = cli("predict", str(project["data"] / "test"), "--model", str(project["run"]), "--output", str(zero),
               timeout=300)
    assert done.returncode == 0, done.stderr
    assert zero.is_symlink() and os.readlink(zero) == "/dev/zero"
