"""The compiled-model store (atomic entries, two writers, hash checks, pruning), int8 quantization with
NNCF, and the runtime self-check that falls back to float32."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.model import runtimes
from clothprobe.featurize.model import selfcheck as compiled
from clothprobe.featurize.model.calibration import calibration_from_folder, calibration_sample
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.store import MARKER, ModelStore


def tiny(**kw):
    return resolve_recipe(**{"backbone": "vgg16", "weights": None, "image_size": 32, "precision": "float32", **kw})


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home")


def write_files(directory: Path, text: str = "model") -> None:
    (directory / "model.xml").write_text(text)
    (directory / "model.bin").write_bytes(b"\1\2\3")


def test_entry_is_built_once_and_verified(store: ModelStore) -> None:
    calls = []
    entry = store.get_or_build(tiny(), lambda d: (calls.append(d), write_files(d)))
    again = store.get_or_build(tiny(), lambda d: calls.append(d))
    assert len(calls) == 1 and again.key == entry.key == tiny().fingerprint
    assert set(entry.files) == {"model.xml", "model.bin"} and entry.recipe == tiny()
    assert [e.key for e in store.entries()] == [entry.key]


def test_a_failed_build_leaves_nothing(store: ModelStore) -> None:
    def broken(directory: Path) -> None:
        write_files(directory)
        raise RuntimeError("killed half-way")

    with pytest.raises(ClothprobeError, match="killed half-way"):
        store.get_or_build(tiny(), broken)
    assert store.entries() == [] and not [p for p in store.root.iterdir() if p.is_dir()]


def test_changed_file_is_refused_and_pruned(store: ModelStore) -> None:
    entry = store.get_or_build(tiny(), write_files)
    (entry.path / "model.bin").write_bytes(b"\1\2\4")
    with pytest.raises(ClothprobeError, match=r"model\.bin does not match the SHA-256 .*cli cache prune --key"):
        store.get_or_build(tiny(), write_files)
    assert store.prune(key=entry.key) == [entry.path] and store.entries() == []
    with pytest.raises(ClothprobeError, match="No stored model 0123456789abcdef"):
        store.prune(key="0123456789abcdef")


def test_prune_by_age_all_and_leftovers(store: ModelStore) -> None:
    old = store.get_or_build(tiny(), write_files)
    new = store.get_or_build(tiny(seed=1), write_files)
    doc = json.loads((old.path / "manifest.json").read_text())
    doc["last_used"] = time.time() - 40 * 86400
    (old.path / "manifest.json").write_text(json.dumps(doc))
    os.utime(old.path / MARKER, (doc["last_used"], doc["last_used"]))  # its last use is the marker's time too
    (store.root / ".00000000deadbeef.tmp-999999999").mkdir()  # a killed build (no such process)
    (store.root / ".00000000deadbeef.tmp-999999999" / MARKER).write_text("")
    (store.root / "0123456789abcdef").mkdir()  # an entry without a readable manifest
    (store.root / "0123456789abcdef" / MARKER).write_text("")
    (store.root / "garbage").mkdir()  # not made by the store: left alone
    removed = store.prune(unused_days=30)
    assert set(removed) == {old.path, store.root / ".00000000deadbeef.tmp-999999999", store.root / "0123456789abcdef"}
    assert (store.root / "garbage").is_dir()
    assert [e.key for e in store.entries()] == [new.key]
    assert store.prune(everything=True) == [new.path] and store.entries() == []


def _build_in_process(home: str, marker: str) -> str:
    def slow(directory: Path) -> None:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        write_files(directory)

    return ModelStore(home).get_or_build(tiny(), slow).key


def test_two_processes_build_one_entry(tmp_path: Path) -> None:
    marker = tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        keys = pool.starmap(_build_in_process, [(str(tmp_path / "home"), str(marker))] * 2)
    assert keys[0] == keys[1] and len(marker.read_text().splitlines()) == 1


@pytest.mark.slow
def test_int8_quantizes_once_and_reuses_the_stored_file(dataset: Path, store: ModelStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cal = calibration_from_folder(dataset / "train", size=6, seed=0)
    assert len(cal.files) == 6
    recipe = tiny(precision="int8", runtime="openvino", calibration=cal.digest)
    embedder = open_embedder(recipe, batch_size=4, calibration_files=cal.files, store=store)
    assert embedder.recipe.precision == "int8"
    int8_entries = [e for e in store.entries() if e.recipe.precision == "int8"]
    assert len(int8_entries) == 1 and int8_entries[0].checks  # the self-check ran and was recorded
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    first = embedder.embed_array(images)["embeddings"]
    monkeypatch.setattr(runtimes, "quantize_int8", lambda *a, **k: pytest.fail("quantized again"))
    monkeypatch.setattr(compiled, "quantize_int8", lambda *a, **k: pytest.fail("quantized again"))
    again = open_embedder(recipe, batch_size=4, store=store)  # no calibration photos needed now
    assert np.array_equal(again.embed_array(images)["embeddings"], first)
    other = tiny(precision="int8", runtime="openvino", calibration="0" * 16)
    with pytest.raises(ClothprobeError, match="int8 model for vgg16 .* is not in the model store"):
        open_embedder(other, store=store)


def test_calibration_sample_is_seeded_and_by_content(tmp_path: Path) -> None:
    pairs = [(tmp_path / f"{i}.jpg", f"{i:064x}") for i in range(50)]
    a = calibration_sample(pairs, size=10, seed=0)
    assert a == calibration_sample(list(reversed(pairs)), size=10, seed=0)
    assert a.digest != calibration_sample(pairs, size=10, seed=1).digest
    assert len(calibration_sample(pairs, size=500).files) == 50
    with pytest.raises(ClothprobeError, match="no calibration photos|there are none"):
        calibration_sample([], size=5)


def test_self_check_falls_back_when_the_runtime_disagrees(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runtimes.load_runner

    def broken_bf16(recipe, *args, **kwargs):
        run = real(recipe, *args, **kwargs)
        if recipe.precision != "bfloat16":
            return run
        return lambda x: run(x) * np.random.default_rng(0).uniform(-1, 1, size=(1, run(x).shape[1]))

    monkeypatch.setattr(compiled, "load_runner", broken_bf16)
    recipe = tiny(precision="bfloat16", runtime="openvino")
    with pytest.warns(ClothprobeWarning, match="disagree with float32 on this CPU .* using float32"):
        embedder = open_embedder(recipe, batch_size=2, store=store)
    assert embedder.recipe == recipe.with_precision("float32")
    (entry,) = store.entries()
    (check,) = entry.checks.values()
    assert check.passed is False and check.cosine_min < compiled.THRESHOLDS["bfloat16"]
    # next time: decided from the record, before any model work, and without a second warning
    assert compiled.effective_recipe(recipe, store) == recipe.with_precision("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_embedder(recipe, batch_size=2, store=store).recipe.precision == "float32"


def test_self_check_passes_for_a_working_runtime(store: ModelStore) -> None:
    recipe = tiny(precision="bfloat16", runtime="openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClothprobeWarning)
        embedder = open_embedder(recipe, batch_size=2, store=store)
    assert embedder.recipe == recipe
    (entry,) = store.entries()  # bfloat16 shares the float IR
    (check,) = entry.checks.values()
    assert check.passed and check.cosine_min >= compiled.THRESHOLDS["bfloat16"]


@pytest.mark.slow
def test_featurize_int8_records_it_and_keeps_its_calibration(dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import TINY, make_image

    from clothprobe.featurize import featurize, load_features

    kw = {**TINY, "precision": "int8", "runtime": "openvino", "calibration_size": 5,
          "features_dir": tmp_path / "features", "out": tmp_path / "c.h5"}
    first = featurize(dataset, **kw)
    recipe = load_features(tmp_path / "c.h5").recipe
    assert first.computed == 27 and recipe.precision == "int8" and recipe.calibration
    # new training photos may change the seeded sample; the cache keeps the calibration it was made with
    for i in range(6):
        make_image(dataset / "train" / "hat" / f"extra{i}.png", seed=500 + i)
    monkeypatch.setattr(compiled, "quantize_int8", lambda *a, **k: pytest.fail("quantized again"))
    again = featurize(dataset, **kw)
    assert again.computed == 6 and not again.invalidated
    assert load_features(tmp_path / "c.h5").recipe == recipe
