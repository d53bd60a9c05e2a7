"""The engine interface: what runs the middle part of featurize.

An engine gets shards from the driver's plan and gives back finished batches, incrementally. The local
engine (``local.py``) runs one ``ShardEmbedder`` in this process; another engine (Ray, ``ray.py``)
implements ``open`` and ``embed`` with one ``ShardEmbedder`` per worker process or actor, and may also hash
files where they live (``hash_files``). The plan and the merge are the same for every engine.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clothprobe._util.files import file_sha256
from clothprobe.featurize.engines.plan import EmbedTask, FileHash, Shard, ShardBatch, ShardFailed
from clothprobe.featurize.model.recipe import Recipe

HASH_BLOCK = 256  # files hashed per round of the thread pool: memory bounded whatever the dataset size


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

    @property
    def request_rows(self) -> int | None:
        """Rows per inference request of the opened model, where this engine knows it (None: it does not)."""
        return None

    @abstractmethod
    def embed(self, shards: Iterable[Shard]) -> Iterator[ShardBatch | ShardFailed]:
        """Finished batches of ``shards``, as they finish (any order), or ``ShardFailed`` for a shard the
        engine gave up on. Called after ``open``."""
