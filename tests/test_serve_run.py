"""`cli serve RUN` end to end: a tiny real run (random-weights VGG16 at 32 px, logistic regression with TTA) is
exported by the real `cli export` in a child process into the model store's home, served, and answers as
`cli predict` does; a second start reuses the export; the serving process imports no TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import TINY, make_dataset
from serving import cli_server
from test_serve import HEAVY, SERVER_MODULES, free_port

pytestmark = [
    pytest.mark.slow,  # featurize, fit and export a tiny run
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the run directory, the dataset)."""
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("serverun")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    featurize(data, features_dir=root / "features", tta=True, **TINY)
    (made,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", tta=True,
                  features_dir=root / "features", models_dir=root / "models")
    return made.run_dir, data


def test_a_run_is_exported_once_and_answers_as_predict(run: tuple[Path, Path], tmp_path: Path) -> None:
    from clothprobe.runs.predicting import predict

    run_dir, data = run
    photos = sorted((data / "test").rglob("*.png"))
    expected = {p.path: p for p in predict(photos, run_dir).predictions}
    home = tmp_path / "home"
    with cli_server(str(run_dir), env={"CLOTHPROBE_HOME": str(home)}, timeout=600) as (url, _):
        (exported,) = (home / "exports").glob("*.onnx")
        made = exported.stat().st_mtime_ns
        for photo in photos:
            res = httpx.post(url + "predict", content=photo.read_bytes(), headers={"content-type": "image/png"})
            (got,) = res.json()["predictions"]
            want = expected[str(photo)]
            assert got["answer"] == want.answer, photo
            assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-3), photo
    with cli_server(str(run_dir), env={"CLOTHPROBE_HOME": str(home)}, timeout=60) as (url, _):
        assert httpx.get(url + "metadata").json()["run"]
    assert list((home / "exports").glob("*.onnx")) == [exported] and exported.stat().st_mtime_ns == made


def test_the_process_serving_a_run_imports_no_tensorflow(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, data = run
    photo = next((data / "test").rglob("*.png"))
    port = str(free_port())
    res = subprocess.run([sys.executable, "-c", SERVER_MODULES, str(run_dir), port, str(photo)], check=False,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CLOTHPROBE_HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    modules = json.loads(res.stdout.strip().splitlines()[-1])["modules"]
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []


def test_the_export_digest_follows_the_run_and_the_precision(run: tuple[Path, Path], tmp_path: Path) -> None:
    from clothprobe.serve.exports import export_digest

    run_dir, _ = run
    digests = {export_digest(run_dir, p) for p in (None, "float32", "int8")}
    assert len(digests) == 3 and export_digest(run_dir, "int8") == export_digest(run_dir, "int8")
