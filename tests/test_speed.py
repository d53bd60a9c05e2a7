"""Issue 19: rows per request measured and recorded, decoding ahead of the network, int8 by default with
its self-check and validation guard (each forced to fail once), and int8 calibrated by photo content.
Real OpenVINO and NNCF on a tiny random-weights VGG16."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_image, python_output
from PIL import Image

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize import featurize
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, decode
from clothprobe.featurize.model import guard as guard_module
from clothprobe.featurize.model import rows as rows_module
from clothprobe.featurize.model import selfcheck
from clothprobe.featurize.model.calibration import calibration_from_folder
from clothprobe.featurize.model.recipe import cpu_has_bf16, resolve_recipe
from clothprobe.featurize.model.store import ModelStore

FALLBACK = "bfloat16" if cpu_has_bf16() else "float32"


def tiny(**kw):
    return resolve_recipe(**{"backbone": "vgg16", "weights": None, "image_size": 32, "precision": "float32",
                             "runtime": "openvino", **kw})


def colour_dataset(root: Path, per_split: dict[str, int]) -> Path:
    """Two classes a random network tells apart (reddish vs bluish photos, with noise)."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for cls, channel in (("red", 0), ("blue", 2)):
            for i in range(n):
                arr = rng.integers(0, 90, (36, 36, 3)).astype(np.uint8)
                arr[..., channel] = rng.integers(160, 256, (36, 36))
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


def test_rows_per_request_are_measured_once_recorded_and_read_back(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = ModelStore(tmp_path / "home")
    embedder = open_embedder(tiny(), store=store)  # no batch size: measured
    (entry,) = store.entries()
    (key, choice), = entry.rows.items()
    assert key.startswith("float32 on ") and set(choice.rates) == {str(r) for r in rows_module.CANDIDATES}
    assert choice.rows == max(rows_module.CANDIDATES, key=lambda r: choice.rates[str(r)])
    assert embedder.batch_size == choice.rows
    monkeypatch.setattr(rows_module, "request_rate", lambda *a, **k: pytest.fail("timed again"))
    assert ModelStore(tmp_path / "home").read(entry.key).rows[key] == choice  # kept in the manifest
    assert open_embedder(tiny(), store=store).batch_size == choice.rows
    assert open_embedder(tiny(), store=store, flip=True).batch_size == choice.rows // 2  # both views in one request
    assert open_embedder(tiny(), batch_size=5, store=store).batch_size == 5  # asked for: not measured


def test_a_job_too_small_to_repay_the_timing_runs_untimed_and_records_nothing(
        colours: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A featurize of fewer than WORTH_TIMING images runs at UNTIMED_ROWS without timing; the first job of at
    least that many images times and records (here the bar is lowered to the folder's 32 images)."""
    timed = []
    real = rows_module.request_rate
    monkeypatch.setattr(rows_module, "request_rate", lambda *a, **k: timed.append(a[2]) or real(*a, **k))
    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "home"))
    kw = {**TINY, "features_dir": tmp_path / "features"}
    del kw["batch_size"]  # the default: rows measured, or not worth measuring
    assert featurize(colours, out=tmp_path / "a.h5", **kw).computed == 32 and not timed
    assert not any(entry.rows for entry in ModelStore().entries())
    monkeypatch.setattr(rows_module, "WORTH_TIMING", 32)
    featurize(colours, out=tmp_path / "b.h5", **kw)
    assert sorted(timed) == sorted(rows_module.CANDIDATES)
    (entry,) = ModelStore().entries()
    (choice,) = entry.rows.values()
    assert choice.rows in rows_module.CANDIDATES


def test_decoding_ahead_keeps_order_and_reports_bad_files(tmp_path: Path) -> None:
    files = [make_image(tmp_path / f"{i:02d}.png", seed=i) for i in range(11)]
    (tmp_path / "03.png").write_bytes(b"")
    (tmp_path / "07.png").write_bytes(files[6].read_bytes()[:40])
    embedder = open_embedder(tiny(), batch_size=2, store=ModelStore(tmp_path / "home"))
    batches = list(embedder.run(files))
    assert [i for b in batches for i in b.indices] == [i for i in range(11) if i not in (3, 7)]
    skipped = {i: why for b in batches for i, why in b.skipped.items()}
    assert set(skipped) == {3, 7} and "empty" in skipped[3]
    got = {i: row for b in batches for i, row in zip(b.indices, b.views["embeddings"])}
    for i in (0, 6, 8, 10):
        alone = embedder.embed_array(decode(files[i], 32, DEFAULT_MAX_PIXELS)[None])["embeddings"][0]
        assert np.allclose(got[i], alone, atol=1e-4)
    assert embedder.network_seconds > 0


def test_batches_run_across_shards_without_straddling_them() -> None:
    from clothprobe.featurize.embed import batch_bounds

    assert batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(10, 4, groups=[5, 5]) == [(0, 4), (4, 5), (5, 9), (9, 10)]
    assert batch_bounds(7, 3, groups=[0, 7, 0]) == [(0, 3), (3, 6), (6, 7)]


def test_the_local_engine_embeds_every_shard_ahead_of_the_caller_in_order(tmp_path: Path) -> None:
    """Shards are decoded and embedded in a thread ahead of the caller (who writes the batches), each batch
    within one shard, in order; a file that does not decode is reported in its own shard."""
    from clothprobe.featurize.engines.local import LocalEngine
    from clothprobe.featurize.engines.plan import EmbedTask, Shard, WorkItem

    files = [make_image(tmp_path / f"{i:02d}.png", seed=i) for i in range(7)]
    (tmp_path / "04.png").write_bytes(b"")
    items = [WorkItem(f"sha{i}", str(f)) for i, f in enumerate(files)]
    shards = [Shard(0, tuple(items[:3])), Shard(1, tuple(items[3:]))]
    engine = LocalEngine()
    recipe = engine.open(EmbedTask(tiny(), ("embeddings",), 2, DEFAULT_MAX_PIXELS))
    with ModelStore(tmp_path / "home").in_use(recipe):
        batches = list(engine.embed(shards))
    assert [(b.shard, b.sha256) for b in batches] == [(0, ["sha0", "sha1"]), (0, ["sha2"]), (1, ["sha3"]),
                                                      (1, ["sha5", "sha6"])]
    assert {k for b in batches for k in b.failed} == {"sha4"} and batches[2].failed


def test_a_producer_ahead_hands_its_error_to_the_caller_and_stops_when_the_caller_does() -> None:
    from clothprobe._util.ahead import ahead

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("decoder broke")

    stream = ahead(failing(), 2)
    assert next(stream) == 1
    with pytest.raises(ValueError, match="decoder broke"):
        next(stream)
    made = []

    def endless() -> Iterator[int]:
        k = 0
        while True:
            made.append(k)
            yield k
            k += 1

    stream = ahead(endless(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the caller stops: the producer ends instead of running on
    stopped = len(made)
    assert stopped <= 3 + 2 + 2
    time.sleep(0.3)
    assert len(made) == stopped


BUILD_INT8 = """
import json, sys
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.model.calibration import calibration_from_folder
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.store import ModelStore
cal = calibration_from_folder(sys.argv[1], size=4, seed=0)
recipe = resolve_recipe("vgg16", weights=None, image_size=32, precision="int8", runtime="openvino", calibration=cal.digest)
store = ModelStore(sys.argv[2])
open_embedder(recipe, batch_size=4, calibration_files=cal.files, store=store)
(entry,) = [e for e in store.entries() if e.recipe.precision == "int8"]
print(json.dumps([cal.digest, entry.calibration, entry.files]))
"""


@pytest.mark.slow
def test_calibration_by_content_remakes_the_same_int8_model(tmp_path: Path) -> None:
    photos = [make_image(tmp_path / "a" / f"{i}.png", seed=i) for i in range(5)]
    renamed = tmp_path / "b" / "deeper"
    renamed.mkdir(parents=True)
    for i, p in enumerate(reversed(photos)):
        shutil.copy(p, renamed / f"copy-{i}.png")
    # two fresh processes and stores, as on two machines; the same photos under other names and folders
    made = [json.loads(python_output(BUILD_INT8.replace("sys.argv[1]", repr(str(tmp_path / folder)))
                                     .replace("sys.argv[2]", repr(str(tmp_path / home))), timeout=300))
            for folder, home in (("a", "home1"), ("b", "home2"))]
    assert made[0] == made[1]  # same digest, same photo hashes recorded, same model files (SHA-256)
    digest, hashes, _ = made[0]
    assert len(hashes) == 4 and len(set(hashes)) == 4
    other = calibration_from_folder(tmp_path / "a", size=4, seed=1)
    assert other.digest != digest
    with pytest.raises(ClothprobeError, match="do not make calibration"):
        open_embedder(tiny(precision="int8", calibration=digest), batch_size=4, calibration_files=other.files,
                      store=ModelStore(tmp_path / "home3"))


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return colour_dataset(tmp_path / "colours", {"train": 8, "validation": 8})


def run_default(data: Path, tmp_path: Path, name: str):  # noqa: ANN201
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = featurize(data, backbone="vgg16", weights=None, image_size=32, out=tmp_path / f"{name}.h5",
                           features_dir=tmp_path / "f")
    return result, [str(w.message) for w in caught if issubclass(w.category, ClothprobeWarning)]


@pytest.mark.slow
def test_default_is_int8_guarded_on_validation_and_recorded(colours: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    embedded_by = []
    real = guard_module.embedded
    monkeypatch.setattr(guard_module, "embedded", lambda e, p: embedded_by.append(e.recipe.precision) or real(e, p))
    result, said = run_default(colours, tmp_path, "a")
    assert result.precision == "int8" and not said
    # the guard's int8 side is the job's own embeddings (each photo embedded once, kept in the cache): only
    # the reference precision embeds the sample on its own
    assert embedded_by == [FALLBACK] and result.computed == 32 and result.resumed == 0
    entry = ModelStore().read_for(result.recipe)
    (guard,) = entry.guards.values()
    assert guard.passed and guard.images == 16 and guard.reference == FALLBACK
    assert guard.interval[0] <= guard.reference_accuracy <= guard.interval[1]
    monkeypatch.setattr(guard_module, "accuracy_guard", lambda *a, **k: pytest.fail("guarded again"))
    again, _ = run_default(colours, tmp_path, "b")  # a new cache: the recorded guard is read back
    assert again.precision == "int8" and again.computed == 32


@pytest.mark.slow
def test_default_int8_falls_back_with_one_line_when_the_guard_fails(colours: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = guard_module._features

    def scrambled(vectors, photos, precision):  # noqa: ANN001, ANN202 - injected failure: int8 loses the labels
        X, y = real(vectors, photos, precision)
        if precision == "int8":
            X = np.random.default_rng(0).normal(size=X.shape).astype(np.float32)
        return X, y

    monkeypatch.setattr(guard_module, "_features", scrambled)
    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "home"))
    result, said = run_default(colours, tmp_path, "c")
    assert result.precision == FALLBACK and len(said) == 1
    assert "validation photos" in said[0] and f"using {FALLBACK} instead" in said[0]
    again, said_again = run_default(colours, tmp_path, "c")  # recorded: nothing measured, nothing to compute
    assert again.precision == FALLBACK and again.computed == 0 and len(said_again) == 1


@pytest.mark.slow
def test_default_int8_falls_back_with_one_line_when_the_self_check_fails(colours: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(selfcheck.THRESHOLDS, "int8", 1.01)  # injected failure: no int8 model can reach it
    monkeypatch.setenv("CLOTHPROBE_HOME", str(tmp_path / "home"))
    result, said = run_default(colours, tmp_path, "d")
    assert result.precision == FALLBACK
    assert len(said) == 1 and "disagree with float32" in said[0] and f"using {FALLBACK} instead" in said[0]


def test_a_onednn_isa_cap_below_bf16_turns_bf16_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how bench/featurize.py stands in for an AVX2-only CPU
    assert not cpu_has_bf16()
    assert resolve_recipe("vgg16", weights=None, image_size=32, runtime="openvino").precision == "float32"
