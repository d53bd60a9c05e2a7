"""The cache's integrity and ownership rules, resume, other engines, and export; real HDF5 files, real
tiny-image featurize runs (random-weights VGG16) where a model is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import featurize_tiny as run
from synthetic import make_cache
from synthetic import recipe as synthetic_recipe

from clothprobe.errors import ClothprobeError
from clothprobe.featurize import load_features
from clothprobe.featurize.cache.read import SplitFeatures
from clothprobe.featurize.cache.schema import CacheHeader, CacheInfo
from clothprobe.featurize.cache.write import write_arrays
from clothprobe.featurize.engines.base import Engine
from clothprobe.featurize.engines.local import LocalEngine, ShardEmbedder
from clothprobe.featurize.engines.plan import EmbedTask, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.model.recipe import Recipe


def arrays(path: Path) -> dict[str, np.ndarray]:
    cache = load_features(path)
    return {f"{name}/{what}": np.asarray(getattr(s, what)) for name, s in cache.splits.items()
            for what in ("embeddings", "paths", "labels", "sha256")}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.fixture
def cached(dataset: Path, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A real cache of the tiny dataset, and its arrays as first written."""
    out = tmp_path / "f.h5"
    run(dataset, out)
    return out, arrays(out)


def chunk(path: Path, name: str) -> tuple[int, int]:
    with h5py.File(path, "r") as h5:
        info = h5[name].id.get_chunk_info(0)
        return info.byte_offset, info.size


def edit_bytes(path: Path, offset: int, count: int, how) -> None:  # noqa: ANN001
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] = how(data[i])
    path.write_bytes(bytes(data))


# --- damaged caches: found on every read, reported by name, rebuilt (or refused with --strict) -------------

@pytest.mark.parametrize("how", [lambda b: b ^ 0xA5, lambda b: 0], ids=["flipped", "zeroed"])
@pytest.mark.slow
def test_damaged_embedding_bytes_are_found_and_rebuilt(dataset: Path, cached, how) -> None:  # noqa: ANN001
    out, before = cached
    offset, size = chunk(out, "train/embeddings/block5_pool")
    edit_bytes(out, offset + size // 2, 64, how)
    with pytest.raises(ClothprobeError, match=r"f\.h5 is damaged .*/train/embeddings"):
        load_features(out)
    result = run(dataset, out)  # without verification this would say "up to date"
    assert "/train/embeddings" in result.damaged and result.computed == 27 and not result.up_to_date
    assert_same(arrays(out), before)


def test_values_changed_through_hdf5_fail_the_checksum(dataset: Path, cached) -> None:  # noqa: ANN001
    """fletcher32 is recomputed by whoever writes through HDF5; the stored SHA-256 is not."""
    out, before = cached
    with h5py.File(out, "r+") as h5:
        h5["validation/embeddings/block5_pool"][2, :] = 0.0
    with pytest.raises(ClothprobeError, match="/validation/embeddings/block5_pool does not match its checksum"):
        load_features(out)
    with h5py.File(out, "r+") as h5:
        h5["validation/embeddings/block5_pool"][2, 0] = np.nan
    with pytest.raises(ClothprobeError, match="/validation/embeddings/block5_pool holds values that are not finite"):
        load_features(out)
    assert "/validation/embeddings" in run(dataset, out).damaged
    assert_same(arrays(out), before)


def test_damaged_paths_are_found_and_rebuilt(dataset: Path, cached) -> None:  # noqa: ANN001
    out, before = cached
    data = out.read_bytes()
    at = data.index(b"train/hat/1.png")
    edit_bytes(out, at + len("train/hat/"), 1, lambda b: ord("7"))  # another path, same length
    with pytest.raises(ClothprobeError, match="/train/paths does not match its checksum"):
        load_features(out)
    assert "/train/paths" in run(dataset, out).damaged
    with h5py.File(out, "r") as h5:
        offset = h5["test/paths"].id.get_offset()  # the references into the string heap
    edit_bytes(out, offset, 32, lambda b: 0)
    assert "/test/paths" in run(dataset, out).damaged
    assert_same(arrays(out), before)


def test_strict_refuses_a_damaged_cache_and_leaves_it(dataset: Path, cached) -> None:  # noqa: ANN001
    out, _ = cached
    with h5py.File(out, "r+") as h5:
        h5["train/labels"][0] = 2
    damaged = out.read_bytes()
    with pytest.raises(ClothprobeError, match=r"f\.h5 is damaged .*/train/labels.*--strict will not rebuild"):
        run(dataset, out, strict=True)
    assert out.read_bytes() == damaged


def test_altered_root_attributes_are_damage(dataset: Path, cached) -> None:  # noqa: ANN001
    out, _ = cached
    with h5py.File(out, "r+") as h5:
        h5.attrs["class_names"] = json.dumps(["hat", "shirt", "dress"])
    with pytest.raises(ClothprobeError, match="root attributes do not match their checksum"):
        load_features(out)
    assert "root attributes" in run(dataset, out).damaged
    assert load_features(out).class_names == ["hat", "shirt", "t-shirt"]


# --- never replace what is not ours ---------------------------------------------------------------------

@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any hashing or model work fails the test: refusals must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(Engine, "hash_files", refuse)
    monkeypatch.setattr(LocalEngine, "open", refuse)


def test_out_onto_a_folder_is_refused_before_any_work(dataset: Path, tmp_path: Path, no_work) -> None:  # noqa: ANN001
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ClothprobeError, match="is a folder; give the path of the cache file"):
        run(dataset, folder)
    assert [p.name for p in tmp_path.iterdir() if p.name != "clothes"] == ["mine"]
    assert (folder / "notes.txt").read_text() == "keep me" and len(list(folder.iterdir())) == 1


def test_files_that_are_not_our_caches_are_never_replaced(dataset: Path, tmp_path: Path, no_work) -> None:  # noqa: ANN001
    text = tmp_path / "text.h5"
    text.write_bytes(b"garbage, not HDF5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = np.arange(3)
        h5.attrs["schema_version"] = 7  # no clothprobe format marker
    for path, why in ((text, "not an HDF5 file"), (other, "an HDF5 file without clothprobe's attributes")):
        before = path.read_bytes()
        with pytest.raises(ClothprobeError, match=f"not a clothprobe feature cache \\({why}\\); clothprobe never"):
            run(dataset, path)
        with pytest.raises(ClothprobeError, match="not a clothprobe feature cache"):
            run(dataset, path, rebuild=True)
        assert path.read_bytes() == before
        with pytest.raises(ClothprobeError, match=path.name):
            load_features(path)


def test_a_cache_too_damaged_to_open_is_refused_not_replaced(dataset: Path, cached) -> None:  # noqa: ANN001
    """Without readable root attributes a file cannot be told from another program's: the user decides."""
    out, _ = cached
    edit_bytes(out, 0, 8, lambda b: 0)  # the HDF5 signature
    damaged = out.read_bytes()
    with pytest.raises(ClothprobeError, match="not a clothprobe feature cache .*delete it"):
        run(dataset, out)
    assert out.read_bytes() == damaged


def test_another_schema_is_replaced_only_with_rebuild(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1.h5"
    with h5py.File(out, "w") as h5:  # what clothprobe wrote before schema 2
        h5.attrs.update({"schema_version": 1, "fingerprint": "0123456789abcdef", "backbone": "vgg16"})
        h5.create_group("train")["embeddings"] = np.zeros((1, 4), np.float32)
    before = out.read_bytes()
    with pytest.raises(ClothprobeError, match="schema version 1; this clothprobe reads and writes version 3. "
                                              "Run featurize with --rebuild to replace it, or delete it"):
        run(dataset, out)
    assert out.read_bytes() == before
    with pytest.raises(ClothprobeError, match="schema version 1"):
        load_features(out)
    assert run(dataset, out, rebuild=True).computed == 27
    assert len(load_features(out).split("train")) == 9


def test_stale_temporaries_of_dead_processes_are_removed(dataset: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "f.h5"
    partial = tmp_path / "f.h5.partial"
    partial.mkdir()
    leftovers = [tmp_path / f".f.h5.tmp-{dead.pid}", partial / f".000003.embeddings.npy.tmp-{dead.pid}"]
    live = [tmp_path / f".f.h5.tmp-{os.getppid()}", tmp_path / ".f.h5.tmp-notes",
            partial / f".000004.embeddings.npy.tmp-{os.getppid()}"]
    for path in leftovers + live:
        path.write_bytes(b"x")
    run(dataset, out)
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in live)


# --- resume, and other engines ----------------------------------------------------------------------------

class DiesAfter(LocalEngine):
    """The local engine, killed after ``batches`` finished batches."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        for k, batch in enumerate(super().embed(shards)):
            if k == self.batches:
                raise KeyboardInterrupt
            yield batch


def test_a_killed_run_resumes_from_its_finished_batches(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    with pytest.raises(KeyboardInterrupt):
        run(dataset, out, engine=DiesAfter(3))  # 3 batches of 4 images finished
    assert not out.exists() and len(list((tmp_path / "f.h5.partial").glob("*.batch.json"))) == 3
    npy = sorted((tmp_path / "f.h5.partial").glob("*.embeddings.npy"))[1]
    edit_bytes(npy, npy.stat().st_size - 16, 8, lambda b: b ^ 0xFF)  # a damaged batch is computed again
    result = run(dataset, out)
    assert result.resumed == 8 and result.computed == 19
    assert not (tmp_path / "f.h5.partial").exists()
    run(dataset, tmp_path / "fresh.h5")
    assert_same(arrays(out), arrays(tmp_path / "fresh.h5"))


class OtherEngine(Engine):
    """An engine that is not the local one: its own hashing order, shards in reverse, batches re-cut.
    It implements only ``open`` and ``embed`` (and ``hash_files``, optional) with a ShardEmbedder."""

    def __init__(self, fail_shard: int | None = None, fingerprint: str | None = None) -> None:
        self.fail_shard, self.fingerprint = fail_shard, fingerprint
        self.worker: ShardEmbedder | None = None

    def hash_files(self, paths):  # noqa: ANN001, ANN201
        found = list(super().hash_files(paths))
        return iter(found[::-1])

    def open(self, task: EmbedTask) -> Recipe:
        self.worker = ShardEmbedder(task)
        return self.worker.recipe

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        for shard in list(shards)[::-1]:
            if shard.index == self.fail_shard:
                yield ShardFailed(shard.index, "worker lost 3 times")
                continue
            for batch in self.worker.embed(shard):
                yield replace(batch, fingerprint=self.fingerprint or batch.fingerprint)


def test_another_engine_gives_the_same_cache(dataset: Path, tmp_path: Path) -> None:
    (dataset / "train" / "hat" / "empty.jpg").write_bytes(b"")
    local = run(dataset, tmp_path / "local.h5")
    other = run(dataset, tmp_path / "other.h5", engine=OtherEngine(), shard_size=5)
    assert other.computed == local.computed == 27 and other.skipped == local.skipped
    assert_same(arrays(tmp_path / "other.h5"), arrays(tmp_path / "local.h5"))
    assert load_features(tmp_path / "other.h5").split("train").skipped == [("train/hat/empty.jpg", "empty file (0 bytes)")]


def test_a_failed_shard_is_reported_and_the_rest_kept(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.h5"
    result = run(dataset, out, engine=OtherEngine(fail_shard=1), shard_size=10)
    lost = [p for p, why in result.skipped if why == "not embedded: worker lost 3 times"]
    assert len(lost) == 10 and result.computed == 17 and len(result.skipped) == 10
    again = run(dataset, out)  # a worker's failure is not the files': they are tried again
    assert again.computed == 10 and not again.skipped and again.remembered == 0


def test_a_non_finite_embedding_is_reported_not_cached(dataset: Path, tmp_path: Path) -> None:
    class Overflows(OtherEngine):
        def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
            for k, batch in enumerate(super().embed(shards)):
                if k == 0:
                    batch.views["embeddings"][1, 3] = np.nan
                yield batch

    out = tmp_path / "f.h5"
    result = run(dataset, out, engine=Overflows())
    (reason,) = {why for _, why in result.skipped}
    assert len(result.skipped) == 1 and "non-finite embedding" in reason and result.computed == 26
    assert sum(len(s) for s in load_features(out).splits.values()) == 26
    assert run(dataset, out).computed == 1  # the model's fault, not the file's: tried again


def test_a_batch_of_another_recipe_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="every worker must run the same recipe"):
        run(dataset, tmp_path / "f.h5", engine=OtherEngine(fingerprint="0000000000000000"))


def test_a_runtime_fallback_replans_for_the_recipe_that_runs(dataset: Path, tmp_path: Path) -> None:
    """When the embedder comes back float32 (its bfloat16 self-check failed), the plan is made again for
    float32, so a float32 cache that already has everything needs no embedding at all."""
    out = tmp_path / "f.h5"
    float32 = run(dataset, out).recipe

    class FallsBack(OtherEngine):
        def open(self, task: EmbedTask) -> Recipe:
            assert task.recipe.precision == "bfloat16"
            return float32

        def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
            assert not list(shards)
            return iter(())

    result = run(dataset, out, precision="bfloat16", runtime="openvino", engine=FallsBack())
    assert result.precision == "float32" and result.computed == 0 and result.up_to_date and not result.invalidated


# --- reading, records and export (synthetic caches: no model) ---------------------------------------------

def test_load_features_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="No feature cache at .*nope.h5"):
        load_features(tmp_path / "nope.h5")
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(ClothprobeError, match="bad.h5 is not a clothprobe feature cache"):
        load_features(tmp_path / "bad.h5")


def test_non_finite_embeddings_are_never_written(tmp_path: Path) -> None:
    x = np.ones((2, 4), np.float32)
    x[1, 2] = np.inf
    split = SplitFeatures(embeddings=x, labels=np.array([0, 1]), paths=np.array(["a", "b"], dtype=object),
                          sha256=np.array(["1" * 64, "2" * 64], dtype=object))
    header = CacheHeader(recipe=synthetic_recipe("xception", 4), class_names=("a", "b"), dataset="d", views=())
    with pytest.raises(ClothprobeError, match="non-finite"):
        write_arrays(tmp_path / "c.h5", header, {"train": split})
    assert not list(tmp_path.iterdir())


def test_cache_info_round_trip(tmp_path: Path) -> None:
    cache = load_features(make_cache(tmp_path / "features"))
    info = cache.info()
    assert info.recipe == cache.recipe and info.fingerprint == cache.recipe.fingerprint
    assert info.images == sum(len(s) for s in cache.splits.values()) and info.featurize_seconds is None
    assert CacheInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ClothprobeError, match="not a cache record"):
        CacheInfo.from_dict({"path": "x"})


def test_export_to_pandas_and_parquet(tmp_path: Path) -> None:
    cache = load_features(make_cache(tmp_path / "features", dim=8))
    df = cache.to_dataframe()
    n = sum(len(s) for s in cache.splits.values())
    assert list(df.columns) == ["split", "path", "label", "class", "sha256", "embedding", "flip"] and len(df) == n
    train = df[df["split"] == "train"]
    assert np.array_equal(np.stack(train["embedding"]), cache.split("train").embeddings)
    assert np.stack(train["embedding"]).dtype == np.float32
    assert list(train["class"]) == [cache.class_names[i] for i in cache.split("train").labels]
    assert list(train["path"]) == list(cache.split("train").paths)

    out = cache.to_parquet(tmp_path / "e.parquet")
    back = pd.read_parquet(out)
    assert back[["split", "path", "label", "class", "sha256"]].equals(df[["split", "path", "label", "class", "sha256"]])
    assert np.array_equal(np.stack(back["flip"]), np.stack(df["flip"]))
    import pyarrow.parquet as pq

    meta = pq.read_schema(out).metadata
    assert Recipe.from_dict(json.loads(meta[b"clothprobe.recipe"])) == cache.recipe
    cache.to_parquet(out)  # replacing its own kind of file is fine
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(ClothprobeError, match="exists and was not written by this command"):
        cache.to_parquet(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep"
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "mine.parquet")  # a Parquet file, but not an export
    with pytest.raises(ClothprobeError, match="exists and was not written by this command"):
        cache.to_parquet(tmp_path / "mine.parquet")
    with pytest.raises(ClothprobeError, match="is one of this command's inputs|feature cache"):
        cache.to_parquet(cache.path)
