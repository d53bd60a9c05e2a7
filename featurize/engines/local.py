"""The local engine (clothprobe's default): one ``ShardEmbedder``, one loaded model, in this process.
``ShardEmbedder`` is also what each Ray worker runs (``engines/ray.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from clothprobe._util.ahead import ahead
from clothprobe.featurize.engines.base import Engine
from clothprobe.featurize.engines.plan import EmbedTask, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.model.recipe import Recipe

AHEAD_BATCHES = 4  # finished batches the embedding thread may hold while the driver writes the previous ones


class ShardEmbedder:
    """One loaded model that embeds shards. ``recipe`` is the one that really runs (float32 when a
    bfloat16 or int8 runtime failed its self-check on this machine)."""

    def __init__(self, task: EmbedTask) -> None:
        from clothprobe.featurize import embed

        self.task = task
        self.embedder = embed.open_embedder(task.recipe, batch_size=task.batch_size, flip=task.flip,
                                            calibration_files=[Path(p) for p in task.calibration_files],
                                            time_rows=task.time_rows)
        size = self.recipe.input_size  # one batch now: the runtime's first-call set-up is not in the img/s
        self.embedder.embed_array(np.zeros((1, size, size, 3), np.uint8))
        self.embedder.network_seconds = 0.0  # the warm-up is no shard's work

    @property
    def recipe(self) -> Recipe:
        return self.embedder.recipe

    def embed(self, shard: Shard) -> Iterator[ShardBatch]:
        """The shard's files, batch by batch; files that cannot be decoded are reported in ``failed``."""
        return self.embed_all([shard])

    def embed_all(self, shards: Sequence[Shard]) -> Iterator[ShardBatch]:
        """Every shard's files, batch by batch and shard by shard, decoded ahead across shard boundaries (no
        batch holds files of two shards)."""
        fingerprint = self.recipe.fingerprint
        items = [(shard.index, item) for shard in shards for item in shard.items]
        files = [Path(item.path) for _, item in items]
        for batch in self.embedder.run(files, self.task.max_pixels, groups=[len(s.items) for s in shards]):
            first = batch.indices[0] if batch.indices else next(iter(batch.skipped))
            yield ShardBatch(shard=items[first][0], fingerprint=fingerprint,
                             sha256=[items[i][1].sha256 for i in batch.indices], views=batch.views,
                             failed={items[i][1].sha256: reason for i, reason in batch.skipped.items()})


class LocalEngine(Engine):
    """One model in this process, shard after shard: clothprobe's default."""

    def __init__(self) -> None:
        self._worker: ShardEmbedder | None = None

    def open(self, task: EmbedTask) -> Recipe:
        self._worker = ShardEmbedder(task)
        return self._worker.recipe

    @property
    def batch_size(self) -> int | None:
        """Images per request of the opened model (asked for, or measured on this machine)."""
        return self._worker.embedder.batch_size if self._worker else None

    @property
    def request_rows(self) -> int | None:
        return self._worker.embedder.batch_size * len(self._worker.embedder.view_names) if self._worker else None

    @property
    def network_seconds(self) -> float:
        """Seconds the network ran on shards so far: against the run's embedding time, how busy decoding
        kept it."""
        return self._worker.embedder.network_seconds if self._worker else 0.0

    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        """Every shard's batches, embedded in a thread of their own up to ``AHEAD_BATCHES`` ahead of the caller,
        so writing each finished batch (the caller's part) overlaps the network instead of pausing it."""
        if self._worker is None:
            raise RuntimeError("LocalEngine.embed called before open")
        return ahead(self._worker.embed_all(list(shards)), AHEAD_BATCHES)
