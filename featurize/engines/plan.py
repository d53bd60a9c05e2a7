"""Featurize as plan, shards and merge, so that another engine (Ray) can run the middle part.

1. **Plan** (driver, here): ``index_files`` scans the dataset and hashes every file (through the engine,
   which may hash on a cluster); ``make_plan`` resolves what the cache, the partial store of a killed run
   and the failure memory already cover, and lists one ``WorkItem`` per content hash still to embed, cut
   into ``Shard``\\ s.
2. **Embed** (workers, ``worker.py``): ``ShardEmbedder(task).embed(shard)`` yields ``ShardBatch``\\ es;
   every worker gets the same ``EmbedTask`` (the recipe resolved once on the driver).
3. **Merge** (driver, ``merge.py``): ``Merger.add`` keeps each finished batch on disk as it arrives (the
   driver never holds all embeddings at once) and ``Merger.write`` streams them into the one HDF5 cache.

Everything that crosses between driver and workers is a small frozen dataclass or numpy arrays, so an
engine may pickle it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from clothprobe._util.progress import progress_bar
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import ExistingCache, Known
from clothprobe.featurize.dataset import Dataset, ImageFile
from clothprobe.featurize.embed import FLIPPED
from clothprobe.featurize.model.recipe import Recipe

SHARD_SIZE = 256  # files per shard: a unit of work an engine hands to one worker


@dataclass(frozen=True)
class WorkItem:
    """One content hash to embed, and a file that has that content (a path every worker can read)."""

    sha256: str
    path: str


@dataclass(frozen=True)
class Shard:
    index: int
    items: tuple[WorkItem, ...]


TRANSFER_ROWS = 32  # with a measured batch size, a worker slices what it is handed into its own requests


@dataclass(frozen=True)
class EmbedTask:
    """What every worker needs to embed any shard of a run; the same for all of them."""

    recipe: Recipe
    views: tuple[str, ...]
    batch_size: int | None  # None: from the rows per request measured for the model on the worker's machine
    max_pixels: int
    calibration_files: tuple[str, ...] = ()  # int8: the photos that calibrate the quantization
    time_rows: bool = True  # measure rows per request if never measured (False: a job too small to repay it)

    @property
    def flip(self) -> bool:
        return FLIPPED in self.views

    @property
    def transfer_rows(self) -> int:
        """Images handed to a worker at once by engines that move decoded images between processes."""
        return self.batch_size or TRANSFER_ROWS


@dataclass
class ShardBatch:
    """A finished batch of a shard, as a worker hands it to the driver: embeddings of the rows that
    decoded (``sha256`` gives each row's content hash) and why the others could not be decoded."""

    shard: int
    fingerprint: str  # of the recipe that really ran: the driver refuses any other
    sha256: list[str]
    views: dict[str, np.ndarray]  # view -> float32 (len(sha256), d)
    failed: dict[str, str] = field(default_factory=dict)  # content hash -> reason


@dataclass(frozen=True)
class ShardFailed:
    """A shard an engine gave up on after its own retries: its files are reported, what finished is kept."""

    shard: int
    error: str


class FileHash(NamedTuple):
    index: int  # position in the list of files given to the hasher
    sha256: str  # "" when the file could not be read
    error: str  # why not


Hasher = Callable[[Sequence[Path]], Iterator[FileHash]]


def decode_settings(max_pixels: int) -> dict[str, Any]:
    """What a failure to decode depends on besides the file's bytes; a failure remembered under other
    settings (a higher --max-pixels, another Pillow or clothprobe) is tried again."""
    import PIL

    from clothprobe import __version__

    return {"max_pixels": int(max_pixels), "pillow": PIL.__version__, "clothprobe": __version__}


@dataclass
class FileIndex:
    """The dataset as the driver sees it before any model work."""

    dataset: Dataset
    hashes: dict[str, str]  # rel_path -> content hash
    unusable: dict[str, str]  # rel_path -> why it cannot be used, known without decoding
    split_of: dict[str, str]  # rel_path -> split, for every file found

    def files(self) -> list[ImageFile]:
        return [f for files in self.dataset.files.values() for f in files]


def index_files(dataset: Dataset, hasher: Hasher, progress: bool = False) -> FileIndex:
    """Hash every file of ``dataset`` (with ``hasher``, e.g. ``Engine.hash_files``)."""
    files = [f for fs in dataset.files.values() for f in fs]
    hashes: dict[str, str] = {}
    unusable = dict(dataset.stray_reasons)  # outside a class folder, not a regular file
    with progress_bar("hashing", len(files), progress, unit="files") as advance:
        for found in hasher([f.path for f in files]):
            rel = files[found.index].rel_path
            if found.sha256:
                hashes[rel] = found.sha256
            else:
                unusable[rel] = found.error
            advance(1)
    missing = [f.rel_path for f in files if f.rel_path not in hashes and f.rel_path not in unusable]
    if missing:
        raise ClothprobeError(f"The hashing engine returned no result for {len(missing)} file(s), e.g. {missing[0]}.")
    split_of = {**dataset.stray, **{f.rel_path: f.split for f in files}}
    return FileIndex(dataset=dataset, hashes=hashes, unusable=unusable, split_of=split_of)


@dataclass
class Plan:
    """What a run must still compute, and what it already has."""

    index: FileIndex
    recipe: Recipe
    views: tuple[str, ...]
    decode: dict[str, Any]
    known: Known  # content hash -> where its embedding already is (the cache, finished partial batches)
    failures: dict[str, str]  # content hash -> why it cannot be decoded, remembered: not tried again
    todo: list[WorkItem]  # one per content hash to embed, in dataset order
    resumed: int = 0  # files whose embeddings come from the partial store of a killed run
    shard_size: int = SHARD_SIZE

    @cached_property
    def shards(self) -> list[Shard]:
        """``todo`` cut into shards of ``shard_size``."""
        size = self.shard_size
        return [Shard(k, tuple(self.todo[start : start + size])) for k, start in enumerate(range(0, len(self.todo), size))]

    def paths_of(self, hashes: Sequence[str]) -> list[str]:
        """Every file path with one of these contents (identical files are each reported)."""
        wanted = set(hashes)
        return sorted(rel for rel, sha in self.index.hashes.items() if sha in wanted)


def make_plan(index: FileIndex, recipe: Recipe, views: tuple[str, ...], decode: dict[str, Any],
              existing: ExistingCache, partial: Any, shard_size: int = SHARD_SIZE) -> Plan:
    """Compare the dataset with the (verified) cache and the partial store (``merge.PartialStore``)."""
    if shard_size < 1:
        raise ClothprobeError(f"Shard size must be at least 1, got {shard_size}.")
    same_recipe = existing.usable and existing.header.recipe == recipe
    known = existing.known(views) if same_recipe else {}
    failures = existing.failures(decode)
    resumed_known, resumed_failures = partial.load(decode)
    fresh = {sha: where for sha, where in resumed_known.items() if sha not in known}
    known.update(fresh)
    failures.update(resumed_failures)
    todo: dict[str, WorkItem] = {}
    for f in index.files():
        sha = index.hashes.get(f.rel_path)
        if sha is not None and sha not in known and sha not in failures and sha not in todo:
            todo[sha] = WorkItem(sha, os.path.abspath(f.path))  # workers may run elsewhere
    resumed = sum(1 for sha in index.hashes.values() if sha in fresh)
    return Plan(index=index, recipe=recipe, views=views, decode=decode, known=known, failures=failures,
                todo=list(todo.values()), resumed=resumed, shard_size=shard_size)
