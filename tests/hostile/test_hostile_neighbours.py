"""Issue 30, class 2: what a user put next to clothprobe's files. The tool deletes only files it can prove it
wrote (a record of them: a run's manifest, the store's markers, the report's record), keeps everything else,
and never writes inside a dataset, a run or the store from a command that does not own it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, cli, make_dataset, make_image
from test_hostile_runs import write_run
from test_hostile_store import tiny, write_files
from test_rundir import make

from clothprobe.errors import ClothprobeError
from clothprobe.runs import directory as rundir


def users_things(run: Path) -> None:
    (run / "NOTES.md").write_text("why I kept this run")
    (run / "plots").mkdir()
    (run / "plots" / "roc.png").write_bytes(b"png")


def test_a_refit_keeps_the_users_files_in_the_run_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    users_things(run)
    old_manifest = (run / "manifest.json").read_text()
    manifest, metrics, predictions = make(acc=0.5)  # another run at the same place: its own files replaced
    rundir.write_run(run, manifest, metrics, predictions,
                     lambda d: (d / "model.npz").write_bytes(b"new") and {"format": "test", "file": "model.npz"})
    assert (run / "NOTES.md").read_text() == "why I kept this run"
    assert (run / "plots" / "roc.png").read_bytes() == b"png"
    assert (run / "manifest.json").read_text() != old_manifest
    assert not (run / "model.lgbm.txt").exists()  # the old run's own file, recorded in its manifest: gone
    assert rundir.read_metrics(run).test.accuracy == 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]  # nothing aside


def test_a_refit_that_would_replace_a_users_file_is_refused_and_keeps_the_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    (run / "model.npz").write_text("the user's file, named as the new run's model")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    manifest, metrics, predictions = make(acc=0.5)
    with pytest.raises(ClothprobeError, match=r"model\.npz is not a file of the run, and the new run writes a file "
                                              r"of that name; move it out of .*previous run is kept"):
        rundir.write_run(run, manifest, metrics, predictions,
                         lambda d: (d / "model.npz").write_bytes(b"new") and {"format": "test", "file": "model.npz"})
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]


def test_a_refit_killed_after_the_swap_gives_the_users_files_back(tmp_path: Path) -> None:
    """A writer killed between putting the new run in place and retiring the old one leaves the old one aside
    with the user's files in it; the next reader moves them into the run and deletes only the old run's own."""
    old = write_run(tmp_path / "old")
    users_things(old)
    aside = tmp_path / ".run.old-999999999"  # no such process
    old.rename(aside)
    write_run(tmp_path / "run")
    rundir.read_manifest(tmp_path / "run")  # any reader recovers
    assert (tmp_path / "run" / "NOTES.md").read_text() == "why I kept this run"
    assert (tmp_path / "run" / "plots" / "roc.png").is_file()
    assert not aside.exists()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "clothes", per_class={"hat": 2, "shirt": 2})


@pytest.mark.parametrize("where", ["run", "store", "dataset"])
def test_featurize_out_inside_a_run_the_store_or_the_dataset_is_refused(dataset: Path, tmp_path: Path, where: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from clothprobe.featurize import featurize
    from clothprobe.featurize.model.store import ModelStore

    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "home"))
    run = write_run(tmp_path / "models" / "clothes" / "vgg16" / "lgbm-none")
    entry = ModelStore().get_or_build(tiny(), write_files)
    out = {"run": run / "cache.h5", "store": entry.path / "cache.h5", "dataset": dataset / "train" / "cache.h5"}[where]
    with pytest.raises(ClothprobeError, match=f"--out {out} is inside .*a feature cache must live outside it"):
        featurize(dataset, out=out, features_dir=tmp_path / "features", **TINY)
    assert not out.exists()


def test_report_out_into_a_dataset_is_refused(tmp_path: Path) -> None:
    """A single-split dataset (DIR/<class>/<image>): a report's img/ folder would become a class."""
    from clothprobe.report import build_report

    single = tmp_path / "shoes"
    for cls in ("boots", "sandals"):
        make_image(single / cls / "0.jpg", seed=len(cls))
    models = tmp_path / "models"
    write_run(models / "clothes" / "vgg16" / "lgbm-none")
    for out in (single, single / "boots", single / "report", tmp_path / "clothes-data" / "test" / "hat"):
        if "clothes-data" in str(out):  # a split layout, two levels up
            make_dataset(tmp_path / "clothes-data", per_class={"hat": 1, "shirt": 1})
        with pytest.raises(ClothprobeError, match=r"is inside the dataset folder .*a report there would add files"):
            build_report(models, out)
    assert sorted(p.name for p in single.iterdir()) == ["boots", "sandals"]
    assert sorted(p.name for p in (single / "boots").iterdir()) == ["0.jpg"]


def test_report_out_into_a_runs_own_image_folder_is_refused(tmp_path: Path) -> None:
    from clothprobe.report import build_report

    data = make_dataset(tmp_path / "photos", per_class={"a": 1, "b": 1}, splits=("train",))
    models = tmp_path / "models"
    run = write_run(models / "clothes" / "vgg16" / "lgbm-none")
    doc = json.loads((run / "manifest.json").read_text())
    doc["data_root"] = str(data)
    (run / "manifest.json").write_text(json.dumps(doc))
    (data / "site").mkdir()  # nothing in it looks like a dataset; the run says whose folder this is
    with pytest.raises(ClothprobeError, match=f"inside the dataset folder {data}"):
        build_report(models, data / "site")
    assert not any((data / "site").iterdir())


def test_cache_prune_all_leaves_a_projects_own_compiled_folder(tmp_path: Path) -> None:
    """CLOTHPROBE_HOME=$PWD in a project whose compiled/ is the user's (even *.blob files): not the store's."""
    from clothprobe.featurize.model.store import ModelStore

    compiled = tmp_path / "compiled"
    compiled.mkdir()
    (compiled / "kernel.blob").write_bytes(b"the user's")
    (compiled / "main.o").write_bytes(b"object")
    entry = ModelStore(tmp_path).get_or_build(tiny(), write_files)
    assert ModelStore(tmp_path).compile_cache() is None  # never used for OpenVINO's blobs either
    done = cli("cache", "prune", "--all", home=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(entry.path) in done.stdout and "compiled file" not in done.stdout
    assert sorted(p.name for p in compiled.iterdir()) == ["kernel.blob", "main.o"]
    listed = cli("cache", "list", home=tmp_path, timeout=120)
    assert f"not made by the store, left alone: {compiled}" in listed.stderr
