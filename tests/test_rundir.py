"""The run directory: written and read back through one module, replaced atomically, never anything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clothprobe.errors import ClothprobeError
from clothprobe.runs import directory as rundir
from clothprobe.runs.directory import Manifest, Metrics, Predictions, RunKind, SplitMetrics


def _split(acc: float) -> SplitMetrics:
    return SplitMetrics(n=4, accuracy=acc, macro_f1=acc, balanced_accuracy=acc, log_loss=0.5, ece=0.1,
                        per_class={"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}},
                        confusion_matrix=[[2, 0], [0, 2]], ci={"accuracy": [acc - 0.1, acc]}, source="test split")


def cache_record() -> dict:
    """A cache record as fit writes it into a manifest (``CacheInfo``; the run directory keeps it as it is)."""
    from synthetic import recipe

    from clothprobe.featurize.cache.schema import CacheInfo

    r = recipe("vgg16", 4)
    return CacheInfo("features/clothes/vgg16.h5", r.fingerprint, r, ("embeddings",), "/data/clothes", 8, None).to_dict()


def make(run: str = "logreg-none", acc: float = 0.75) -> tuple[Manifest, Metrics, Predictions]:
    manifest = Manifest(run=run, dataset="clothes", kind=RunKind.CACHED_FEATURES, classes=["a", "b"], backbones=["vgg16"],
                        classifier="logreg", balance="none", tta=False, loss="categorical", seed=0, params={"C": 1.0},
                        chosen={}, versions={}, caches={"vgg16": cache_record()})
    metrics = Metrics(run=run, dataset="clothes", backbone="vgg16", classifier="logreg", balance="none", tta=False,
                      loss="categorical", seed=0, kind=RunKind.CACHED_FEATURES, selection="validation split",
                      selection_n=4, params={"C": 1.0}, chosen={}, candidates=[], fit_seconds=1.0,
                      train_counts={"a": 2, "b": 2}, validation=_split(acc), test=_split(acc))
    predictions = Predictions(["x/1.jpg", "y/2.jpg"], ["a", "b"], np.array([[0.9, 0.1], [0.4, 0.6]]), ["a", "b"])
    return manifest, metrics, predictions


def write(directory: Path, acc: float = 0.75) -> Path:
    manifest, metrics, predictions = make(acc=acc)
    return rundir.write_run(directory, manifest, metrics, predictions,
                            lambda d: (d / "model.bin").write_bytes(b"model") and {"format": "test", "file": "model.bin"})


def test_round_trip(tmp_path: Path) -> None:
    run = write(tmp_path / "runs" / "r")
    assert sorted(p.name for p in run.iterdir()) == [".clothprobe-run", "manifest.json", "metrics.json", "model.bin",
                                                     "predictions.csv"]
    manifest = rundir.read_manifest(run)
    assert manifest.caches == {"vgg16": cache_record()} and manifest.model == {"format": "test", "file": "model.bin"}
    assert set(manifest.sha256) == {"metrics.json", "model.bin", "predictions.csv"}
    rundir.verify(run, manifest)
    metrics = rundir.read_metrics(run)
    assert metrics == make()[1] and metrics.test.interval("accuracy") == (0.65, 0.75)
    assert metrics.kind is RunKind.CACHED_FEATURES and manifest.kind is RunKind.CACHED_FEATURES  # read as the enum
    back = rundir.read_predictions(run, ["a", "b"])
    assert back.paths == ["x/1.jpg", "y/2.jpg"] and back.correct.tolist() == [True, True]
    assert rundir.find_runs(tmp_path / "runs") == [run]


@pytest.mark.parametrize("damage", [
    lambda d: {**d, "test": [1, 2]},
    lambda d: {k: v for k, v in d.items() if k != "selection_n"},
    lambda d: {**d, "fit_seconds": "fast"},
    lambda d: {**d, "kind": "cached"},
    lambda d: {**d, "kind": ["cached-features"]},
    lambda d: {**d, "format_version": 1},
    lambda d: [d],
])
def test_wrong_shape_is_one_clear_error(tmp_path: Path, damage) -> None:  # noqa: ANN001
    run = write(tmp_path / "r")
    doc = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(damage(doc)))
    with pytest.raises(ClothprobeError, match=r"metrics.json (is not a clothprobe run|is a run metrics file of format)"):
        rundir.read_metrics(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(ClothprobeError, match="Cannot read .*manifest.json"):
        rundir.read_manifest(run)


def test_tampered_file_refused(tmp_path: Path) -> None:
    run = write(tmp_path / "r")
    (run / "model.bin").write_bytes(b"other")
    with pytest.raises(ClothprobeError, match="model.bin does not match the sha256"):
        rundir.verify(run, rundir.read_manifest(run))


def test_refuses_what_is_not_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "parent" / "work"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    for target in (".", "..", str(tmp_path), str(work), "./"):
        with pytest.raises(ClothprobeError, match="working folder"):
            write(Path(target))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(ClothprobeError, match="is not a clothprobe run"):
        write(folder)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClothprobeError, match="not a folder"):
        write(tmp_path / "file")
    assert (work / "precious.txt").read_text() == "keep me" and (folder / "a.jpg").read_bytes() == b"jpeg"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rundir.is_run(write(empty))  # an empty folder holds nothing to lose


def test_replaces_a_run(tmp_path: Path) -> None:
    run = write(tmp_path / "r", acc=0.5)
    write(run, acc=0.75)
    assert rundir.read_metrics(run).test.accuracy == 0.75
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "lock" not in p.name] == []


def test_kill_between_renames_keeps_the_old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write(tmp_path / "r", acc=0.5)
    real = os.replace
    calls = []

    def dies_after_first_rename(src, dst):  # noqa: ANN001, ANN202
        calls.append((Path(src).name, Path(dst).name))
        real(src, dst)
        if len(calls) == 1:  # the old run is aside, the new one not yet in place: killed here
            raise KeyboardInterrupt

    monkeypatch.setattr(rundir.os, "replace", dies_after_first_rename)
    monkeypatch.setattr(rundir, "pid_alive", lambda pid: False)  # as after a kill: the writer is gone
    with pytest.raises(KeyboardInterrupt):
        write(run, acc=0.75)
    monkeypatch.setattr(rundir.os, "replace", real)
    assert calls[0] == ("r", f".r.old-{os.getpid()}")
    assert not run.exists()  # at this instant only the run aside exists...
    assert rundir.read_metrics(run).test.accuracy == 0.5  # ...and the next reader puts it back
    assert rundir.find_runs(tmp_path) == [run]
    assert not [p for p in tmp_path.iterdir() if rundir._SIDE.match(p.name)]


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    run = write(tmp_path / "r")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".r.tmp-{pid}").mkdir()
    (tmp_path / f".r.tmp-{pid}" / "metrics.json").write_text("{}")
    (tmp_path / f".r.old-{pid}").mkdir()  # a run aside whose replacement did land: deleted, not restored
    (tmp_path / f".other.tmp-{os.getpid()}").mkdir()  # a live writer's (ours): left alone
    rundir.find_runs(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir())
    assert names == [f".other.tmp-{os.getpid()}"] and rundir.is_run(run)

