"""Issue 17, run directories as hostile ground: a run is recognised by clothprobe's marker and manifest
schema, every file it names lives inside it and is hash-checked, and every field read back is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm
import numpy as np
import pytest
from test_rundir import make

from clothprobe.classifiers.modelio import load_model
from clothprobe.errors import ClothprobeError
from clothprobe.runs import directory as rundir


def write_lgbm(directory: Path) -> dict:
    X = np.random.default_rng(0).normal(size=(60, 4))
    booster = lightgbm.LGBMClassifier(n_estimators=2, num_leaves=2, verbose=-1).fit(X, X[:, 0] > 0).booster_
    booster.save_model(directory / "model.lgbm.txt")
    return {"format": "lightgbm", "classes": [0, 1], "file": "model.lgbm.txt"}


def write_run(directory: Path, save=write_lgbm) -> Path:  # noqa: ANN001
    manifest, metrics, predictions = make()
    return rundir.write_run(directory, manifest, metrics, predictions, save)


def edit_manifest(run: Path, **changes: object) -> None:
    doc = json.loads((run / "manifest.json").read_text())
    for key, value in changes.items():
        *path, last = key.split("__")
        target = doc
        for part in path:
            target = target[part]
        target[last] = value
    (run / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("foreign", [
    {"name": "My web app", "start_url": "/", "icons": []},
    {"manifest_version": 3, "name": "ext", "version": "1.0"},
    {"format_version": 2, "run": "fake"},  # looks a little like ours, but not our schema or marker
])
def test_a_folder_with_a_foreign_manifest_is_never_replaced(tmp_path: Path, foreign: dict) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps(foreign))
    (app / "index.html").write_text("<h1>mine</h1>")
    with pytest.raises(ClothprobeError, match="is not a clothprobe run"):
        write_run(app)
    assert (app / "index.html").read_text() == "<h1>mine</h1>"
    assert json.loads((app / "manifest.json").read_text()) == foreign
    assert not rundir.is_run(app)


def test_our_run_without_its_marker_is_not_replaced(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    assert rundir.is_run(run)
    (run / rundir.MARKER).unlink()
    with pytest.raises(ClothprobeError, match="is not a clothprobe run"):
        write_run(run)


@pytest.mark.parametrize("name", ["../../../other/model.npz", "/etc/passwd", "sub/model.npz"])
def test_a_model_file_outside_the_run_is_refused(tmp_path: Path, name: str) -> None:
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / "model.npz", coef=np.ones((1, 4)), intercept=np.zeros(1))
    run = write_run(tmp_path / "runs" / "a" / "r")
    edit_manifest(run, model__format="linear", model__file=name)
    with pytest.raises(ClothprobeError, match="not one of the run's hash-checked files|plain file name"):
        load_model(run)


def test_a_model_file_missing_from_the_hash_map_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    doc = json.loads((run / "manifest.json").read_text())
    del doc["sha256"]["model.lgbm.txt"]
    (run / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ClothprobeError, match="model.lgbm.txt.*not one of the run's hash-checked files"):
        load_model(run)


def test_an_empty_sha256_map_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    edit_manifest(run, sha256={})
    with pytest.raises(ClothprobeError, match="lists no file hashes"):
        load_model(run)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("calibration", {"temperature": -1.0, "fitted_on": "validation split", "n": 4}, "temperature (must|should) be (a )?finite"),
    ("calibration", {"temperature": 0.0, "fitted_on": "validation split", "n": 4}, "temperature (must|should) be (a )?finite"),
    ("classes", [], "classes must be two or more"),
    ("classes", ["a", "a"], "classes must be two or more distinct"),
    ("caches", {}, "caches must hold one record per backbone"),
    ("seed", -1, "seed (must be >= 0|should be a finite number from 0)"),
    ("kind", "pickle", "kind (must|should) be one of"),
    ("sha256", {"../x": "0" * 64}, "plain file name"),
])
def test_manifest_fields_are_bounded(tmp_path: Path, field: str, value: object, why: str) -> None:
    run = write_run(tmp_path / "r")
    edit_manifest(run, **{field: value})
    with pytest.raises(ClothprobeError, match=f"not a clothprobe run manifest .*{why}"):
        rundir.read_manifest(run)


def test_a_nan_temperature_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r")
    text = (run / "manifest.json").read_text()
    doc = json.loads(text)
    doc["calibration"] = {"temperature": 1.0, "fitted_on": "validation split", "n": 4}
    (run / "manifest.json").write_text(json.dumps(doc).replace('"temperature": 1.0', '"temperature": NaN'))
    with pytest.raises(ClothprobeError, match="calibration.temperature holds the number nan"):
        rundir.read_manifest(run)


LOAD_BROKEN_LGBM = textwrap.dedent("""
    import sys
    from clothprobe.classifiers.modelio import load_model
    from clothprobe.errors import ClothprobeError
    try:
        load_model(sys.argv[1])
    except ClothprobeError as err:
        print("refused:", err)
""")


@pytest.mark.parametrize(("old", "new"), [("num_leaves=2", "num_leaves=5"), ("num_cat=0", "num_cat=3")])
def test_a_malformed_lightgbm_tree_does_not_abort_the_process(tmp_path: Path, old: str, new: str) -> None:
    """A valid header and a malformed tree: LightGBM's C++ aborts (exit 134, no message) on some."""
    def broken(directory: Path) -> dict:
        entry = write_lgbm(directory)
        path = directory / "model.lgbm.txt"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new, 1))
        return entry

    run = write_run(tmp_path / "r", broken)
    done = subprocess.run([sys.executable, "-c", LOAD_BROKEN_LGBM, str(run)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    assert "refused:" in done.stdout and "is not a readable LightGBM model" in done.stdout
