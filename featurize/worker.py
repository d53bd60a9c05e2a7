"""The workers' side of featurize, and the engines that run it.

An engine gets shards from the driver's plan and gives back finished batches, incrementally. The local
engine runs one ``ShardEmbedder`` in this process; another engine (Ray) implements ``open`` and ``embed``
with one ``ShardEmbedder`` per worker process or actor, and may also hash files where they live
(``hash_files``). The plan and the merge are the same for every engine.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clothprobe.featurize.plan import EmbedTask, FileHash, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.recipe import Recipe
from clothprobe.files import file_sha256

HASH_BLOCK = 256  # files hashed per round of the thread pool: memory bounded whatever the dataset size


class ShardEmbedder:
    """One loaded model that embeds shards. ``recipe`` is the one that really runs (float32 when a
    bfloat16 or int8 runtime failed its self-check on this machine)."""

    def __init__(self, task: EmbedTask) -> None:
        from clothprobe.featurize import embed

        self.task = task
        self.embedder = embed.open_embedder(task.recipe, batch_size=task.batch_size, flip=task.flip,
                                            calibration_files=[Path(p) for p in task.calibration_files])
        size = self.recipe.input_size  # one batch now: the runtime's first-call set-up is not in the img/s
        self.embedder.embed_array(np.zeros((1, size, size, 3), np.uint8))

    @property
    def recipe(self) -> Recipe:
        return self.embedder.recipe

    def embed(self, shard: Shard) -> Iterator[ShardBatch]:
        """The shard's files, batch by batch; files that cannot be decoded are reported in ``failed``."""
        fingerprint = self.recipe.fingerprint
        items = shard.items
        for batch in self.embedder.run([Path(item.path) for item in items], self.task.max_pixels):
            yield ShardBatch(shard=shard.index, fingerprint=fingerprint,
                             sha256=[items[i].sha256 for i in batch.indices], views=batch.views,
                             failed={items[i].sha256: reason for i, reason in batch.skipped.items()})


def _hash(path: Path) -> tuple[str, str]:
    try:
        return file_sha256(path), ""
    except OSError as err:
        return "", f"cannot read: {err.strerror or err}"


class Engine(ABC):
    """Runs the middle part of featurize: hashing (optional) and embedding of the plan's shards."""

    def hash_files(self, paths: Sequence[Path]) -> Iterator[FileHash]:
        """The content hash of each file (in any order; ``index`` says which). Default: threads here."""
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for start in range(0, len(paths), HASH_BLOCK):
                block = paths[start : start + HASH_BLOCK]
                for k, (sha, error) in enumerate(pool.map(_hash, block)):
                    yield FileHash(start + k, sha, error)

    @abstractmethod
    def open(self, task: EmbedTask) -> Recipe:
        """Load the model(s) for ``task``; returns the recipe they really run (the driver plans again
        when it differs from ``task.recipe``)."""

    @abstractmethod
    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        """Finished batches of ``shards``, as they finish (any order), or ``ShardFailed`` for a shard the
        engine gave up on. Called after ``open``."""


class LocalEngine(Engine):
    """One model in this process, shard after shard: clothprobe's default."""

    def __init__(self) -> None:
        self._worker: ShardEmbedder | None = None

    def open(self, task: EmbedTask) -> Recipe:
        self._worker = ShardEmbedder(task)
        return self._worker.recipe

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        if self._worker is None:
            raise RuntimeError("LocalEngine.embed called before open")
        for shard in shards:
            yield from self._worker.embed(shard)
