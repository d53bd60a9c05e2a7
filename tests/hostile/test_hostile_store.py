"""Issue 17, the model store as hostile ground: it deletes only what it provably made."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.store import MARKER, ModelStore


def tiny(**kw):
    return resolve_recipe(**{"backbone": "vgg16", "weights": None, "image_size": 32, "precision": "float32", **kw})


def write_files(directory: Path) -> None:
    (directory / "model.xml").write_text("model")
    (directory / "model.bin").write_bytes(b"\1\2\3")


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


def test_prune_leaves_a_folder_the_store_did_not_make(store: ModelStore) -> None:
    """CLOTHPROBE_HOME=$PWD; cli fit writes $PWD/models/ds (runs, no store manifest): prune took it."""
    user = store.root / "ds" / "vgg16" / "logreg-weights"
    user.mkdir(parents=True)
    (user / "manifest.json").write_text("{}")
    keyed = store.root / "0123456789abcdef"  # looks like a key, but the store did not make it
    keyed.mkdir()
    (keyed / "notes.txt").write_text("mine")
    entry = store.get_or_build(tiny(), write_files)
    assert store.prune(everything=True) == [entry.path]
    assert (user / "manifest.json").is_file() and (keyed / "notes.txt").is_file()
    assert set(store.foreign()) == {store.root / "ds", keyed}
    with pytest.raises(ClothprobeError, match="not made by the model store"):
        store.read("0123456789abcdef")


def test_a_manifest_key_outside_the_store_is_refused(store: ModelStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    entry = store.get_or_build(tiny(), write_files)
    doc = json.loads((entry.path / "manifest.json").read_text())
    (entry.path / "manifest.json").write_text(json.dumps({**doc, "key": "../../victim"}))
    removed = store.prune(everything=True)
    assert removed == [entry.path]  # the damaged entry itself (it has the marker), nothing else
    assert (victim / "precious.txt").read_text() == "keep"


@pytest.mark.parametrize("name", ["../../victim.txt", "/etc/passwd", "sub/model.bin", ".."])
def test_file_names_in_a_store_manifest_stay_inside_the_entry(store: ModelStore, name: str) -> None:
    entry = store.get_or_build(tiny(), write_files)
    doc = json.loads((entry.path / "manifest.json").read_text())
    (entry.path / "manifest.json").write_text(json.dumps({**doc, "files": {name: "0" * 64}}))
    with pytest.raises(ClothprobeError, match="not a store manifest .*plain file name"):
        store.read(entry.key)


@pytest.mark.parametrize("days", [-1.0, float("nan"), float("inf"), float("-inf")])
def test_unused_days_must_be_finite_and_not_negative(store: ModelStore, days: float) -> None:
    entry = store.get_or_build(tiny(), write_files)
    with pytest.raises(ClothprobeError, match="--unused-days must be a finite number of days >= 0"):
        store.prune(unused_days=days)
    assert store.entries() and entry.path.is_dir()


@pytest.mark.parametrize("key", ["../x", "", "ABCDEF0123456789", "0123456789abcdef/.."])
def test_a_key_is_never_a_path(store: ModelStore, key: str) -> None:
    with pytest.raises(ClothprobeError, match="16 hex digits"):
        store.prune(key=key)


def test_prune_all_clears_openvinos_compile_cache_only(store: ModelStore) -> None:
    compiled = store.compile_cache()  # made and marked by the store
    assert compiled == store.home / "compiled"
    (compiled / "123.blob").write_bytes(b"x" * 100)
    (compiled / "readme.txt").write_text("not OpenVINO's")
    store.prune(everything=True)
    assert not (compiled / "123.blob").exists() and (compiled / "readme.txt").is_file()


def test_prune_waits_for_a_process_loading_the_entry(store: ModelStore) -> None:
    entry = store.get_or_build(tiny(), write_files)
    loaded = []

    def featurize() -> None:
        with ModelStore(store.home).in_use(tiny()):
            time.sleep(0.5)
            loaded.append((entry.path / "model.bin").read_bytes())

    worker = threading.Thread(target=featurize)
    worker.start()
    time.sleep(0.1)
    assert store.prune(everything=True) == [entry.path]
    worker.join()
    assert loaded == [b"\1\2\3"]


def test_a_full_disk_during_the_first_build_is_one_line(store: ModelStore) -> None:
    def full(directory: Path) -> None:
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1180:\nFile can't be written\n...")

    with pytest.raises(ClothprobeError, match=r"^Could not build the stored model for vgg16 .*File can.t be "
                                              r"written .*, then run again \(nothing was kept\)\.$"):
        store.get_or_build(tiny(), full)
    assert store.entries() == [] and not [p for p in store.root.iterdir() if p.is_dir()]


def test_a_killed_build_is_removed_by_prune(store: ModelStore) -> None:
    leftover = store.root / ".0123456789abcdef.tmp-999999999"
    leftover.mkdir(parents=True)
    (leftover / MARKER).write_text("")
    assert store.prune() == [leftover]


def test_a_project_folder_as_clothprobe_home_is_not_all_the_stores(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """export CLOTHPROBE_HOME=$PWD: the store owns its entries and compiled/, not the user's other files."""
    from clothprobe._util.outputs import check_output

    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path))
    entry = ModelStore().get_or_build(tiny(), write_files)
    assert check_output(tmp_path / "scores.csv") == tmp_path / "scores.csv"
    assert check_output(tmp_path / "models" / "notes.txt")  # models/ holds runs too: not the store's
    ModelStore().compile_cache()
    for inside in (entry.path / "model.xml", entry.path / "new.txt", tmp_path / "compiled" / "x.blob"):
        with pytest.raises(ClothprobeError, match="inside the clothprobe model store"):
            check_output(inside)


def test_a_copied_marker_does_not_make_a_user_folder_the_stores(store: ModelStore) -> None:
    entry = store.get_or_build(tiny(), write_files)
    user = store.root / "ds"
    user.mkdir()
    (user / MARKER).write_text((entry.path / MARKER).read_text())
    (user / "run.txt").write_text("mine")
    assert store.prune(everything=True) == [entry.path]
    assert (user / "run.txt").read_text() == "mine"
