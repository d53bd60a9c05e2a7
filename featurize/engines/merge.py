"""The driver's side of featurize: finished batches kept on disk as they arrive, then one cache written.

``<cache>.partial/`` holds the finished batches of a run in progress, so that a run killed at any moment
(the driver included) resumes from them: the files are content-addressed, so a new plan simply leaves
out what they hold, whichever shard it came from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe._util.files import atomic_write, open_regular, read_json, write_text_atomic
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.read import ExistingCache, Known, RowSource
from clothprobe.featurize.cache.schema import CacheHeader, Checksum
from clothprobe.featurize.cache.write import SplitRows, content_digest, remove_stale, write_cache
from clothprobe.featurize.engines.plan import Plan, ShardBatch, ShardFailed

STAMP = "store.json"
NOT_FINITE = "the model gave a non-finite embedding (NaN or infinity) for this image"


class _NpyBatch(RowSource):
    """A finished batch's rows, read from its files when needed (no file stays open or mapped)."""

    def __init__(self, files: dict[str, Path], dims: dict[str, int]) -> None:
        self.files = files
        self.dims = dims

    def read(self, view: str, rows: np.ndarray) -> np.ndarray:
        return np.asarray(np.load(self.files[view], mmap_mode="r", allow_pickle=False)[rows])

    def dim(self, view: str) -> int:
        return self.dims[view]


class PartialStore:
    """Finished batches of a run in progress, in ``<cache>.partial/``.

    Batch ``k`` is ``k.<view>.npy`` per view and ``k.batch.json`` (the content hash of each row, the
    contents that could not be decoded and under which decoder settings, each view's checksum), written
    last and renamed into place: a batch without it, or whose arrays fail their checksum, is recomputed.
    ``store.json`` says which recipe and views the batches are for; a store for another is emptied.
    Only files of these names are ever removed.
    """

    def __init__(self, cache_path: Path, fingerprint: str, views: Sequence[str]) -> None:
        self.dir = cache_path.with_name(cache_path.name + ".partial")
        self.views = tuple(views)
        wanted = {"fingerprint": fingerprint, "views": list(self.views)}
        if self.dir.is_dir():
            remove_stale(self.dir, "*.tmp-*")
            try:
                same = read_json(self.dir / STAMP) == wanted
            except (OSError, ValueError):
                same = False
            if not same:
                self._remove_batches()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.dir / STAMP, json.dumps(wanted))
        self.next_id = 1 + max((int(p.name.split(".")[0]) for p in self._files()), default=-1)

    def _files(self) -> list[Path]:
        """Batch files (temporaries of live writers excluded: ``remove_stale`` decides about those)."""
        return [p for p in self.dir.iterdir() if p.name.split(".")[0].isdigit() and ".tmp-" not in p.name]

    def _remove_batches(self) -> None:
        for p in self._files():
            p.unlink(missing_ok=True)

    def load(self, decode: dict[str, Any]) -> tuple[Known, dict[str, str]]:
        """Verified finished batches: content hash -> row source, and the failures seen with ``decode``."""
        known: Known = {}
        failures: dict[str, str] = {}
        for marker in sorted(self.dir.glob("*.batch.json")):
            try:
                batch = self._load_batch(marker)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged batch is computed again
            if batch is None:
                continue
            source, hashes, meta = batch
            known.update((sha, (source, row)) for row, sha in enumerate(hashes))
            if meta["decode"] == decode:
                failures.update(meta["failed"])
        return known, failures

    def _load_batch(self, marker: Path) -> tuple[RowSource, list[str], dict] | None:
        meta = read_json(marker)
        hashes = list(meta["sha256"])
        stem = marker.name.split(".")[0]
        files = {view: self.dir / f"{stem}.{view}.npy" for view in self.views} if hashes else {}
        dims = {}
        for view, path in files.items():
            with open_regular(path) as fh:
                values = np.load(fh, allow_pickle=False)
            if (len(values) != len(hashes) or Checksum().update(values).hexdigest() != meta["checksums"][view]
                    or not np.isfinite(values).all()):
                return None
            dims[view] = values.shape[1]
        return _NpyBatch(files, dims), hashes, meta

    def add(self, hashes: Sequence[str], arrays: dict[str, np.ndarray], failed: dict[str, str],
            decode: dict[str, Any]) -> Known:
        """Keep one finished batch; returns where its rows now are."""
        stem = f"{self.next_id:06d}"
        self.next_id += 1
        files, dims, checksums = {}, {}, {}
        for view in self.views if hashes else ():
            values = np.ascontiguousarray(arrays[view], dtype="<f4")
            files[view] = self.dir / f"{stem}.{view}.npy"
            _save(files[view], values)
            dims[view], checksums[view] = values.shape[1], Checksum().update(values).hexdigest()
        meta = {"sha256": list(hashes), "failed": failed, "decode": decode, "checksums": checksums}
        write_text_atomic(self.dir / f"{stem}.batch.json", json.dumps(meta))
        source = _NpyBatch(files, dims)
        return {sha: (source, row) for row, sha in enumerate(hashes)}

    def remove(self) -> None:
        """Delete the store once its batches are in the cache (a folder holding anything else is kept)."""
        self._remove_batches()
        (self.dir / STAMP).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def strict_error(skipped: dict[str, str], root: Path) -> ClothprobeError:
    lines = "\n".join(f"  {root / p}: {why}" for p, why in sorted(skipped.items()))
    return ClothprobeError(
        f"--strict: {len(skipped)} file(s) cannot be used:\n{lines}\n"
        f"Fix or remove them, or run without --strict to skip and report them. "
        f"Finished batches are kept; the next run resumes."
    )


@dataclass
class MergeOutcome:
    splits: dict[str, SplitRows]
    skipped: dict[str, str]  # rel_path -> reason, every file that could not be used
    computed: int  # content hashes embedded by this run
    removed: int  # paths the previous cache held and this one does not
    written: bool  # False: the cache already held exactly this


class Merger:
    """Takes finished batches from any engine, in any order, as they come; then writes the cache."""

    def __init__(self, plan: Plan, partial: PartialStore, strict: bool = False) -> None:
        self.plan = plan
        self.partial = partial
        self.strict = strict
        self.known: Known = dict(plan.known)
        self.failures: dict[str, str] = dict(plan.failures)  # remembered in the cache
        self.faults: dict[str, str] = {}  # not the file's fault (a model or a worker): tried again next run
        self.computed = 0
        self.shards = {s.index: s for s in plan.shards}
        present = set(plan.index.hashes.values())
        self._check_strict({sha: why for sha, why in plan.failures.items() if sha in present})

    def add(self, item: ShardBatch | ShardFailed) -> int:
        """Keep a batch (on disk) or a failed shard's report; returns how many files it accounts for."""
        if isinstance(item, ShardFailed):
            items = self.shards[item.shard].items if item.shard in self.shards else ()
            lost = {i.sha256: f"not embedded: {item.error}" for i in items if i.sha256 not in self.known}
            self.faults.update(lost)
            self._check_strict(lost)
            return len(lost)
        if item.fingerprint != self.plan.recipe.fingerprint:
            raise ClothprobeError(
                f"A worker embedded a batch of shard {item.shard} with recipe {item.fingerprint}, not the planned "
                f"{self.plan.recipe.fingerprint} (its runtime fell back to another precision?); every worker "
                f"must run the same recipe. That batch was not kept; the batches before it were."
            )
        hashes, arrays, bad = self._finite_rows(item)
        self.known.update(self.partial.add(hashes, arrays, item.failed, self.plan.decode))
        self.failures.update(item.failed)
        self.faults.update(bad)
        self.computed += len(hashes)
        self._check_strict({**item.failed, **bad})
        return len(item.sha256) + len(item.failed)

    def _finite_rows(self, item: ShardBatch) -> tuple[list[str], dict[str, np.ndarray], dict[str, str]]:
        """The batch's rows whose every view is finite, and the others with their reason."""
        n = len(item.sha256)
        arrays = {v: np.asarray(item.views.get(v, np.empty((0, 0))), dtype=np.float32) for v in self.plan.views}
        if n and any(values.ndim != 2 or len(values) != n for values in arrays.values()):
            raise ClothprobeError(f"A worker returned a batch of shard {item.shard} without one row per image in "
                                  f"each of the views {', '.join(self.plan.views)}.")
        good = np.ones(n, bool)
        for values in arrays.values() if n else ():
            good &= np.isfinite(values).all(axis=1)
        bad = {sha: NOT_FINITE for sha, ok in zip(item.sha256, good) if not ok}
        hashes = [sha for sha, ok in zip(item.sha256, good) if ok]
        return hashes, ({view: values[good] for view, values in arrays.items()} if n else arrays), bad

    def _check_strict(self, failed: dict[str, str]) -> None:
        if self.strict and failed:
            reason = {p: why for sha, why in failed.items() for p in self.plan.paths_of([sha])}
            raise strict_error(reason, self.plan.index.dataset.root)

    def outcome(self) -> tuple[dict[str, SplitRows], dict[str, str]]:
        """Every split's rows, and every file that cannot be used with its reason (each path, even when
        several files share one content)."""
        index = self.plan.index
        splits = {}
        skipped = dict(index.unusable)
        for split, files in index.dataset.files.items():
            rows = SplitRows(paths=[], labels=[], sha256=[], skipped=[], groups=[] if index.dataset.grouped else None)
            for f in files:
                sha = index.hashes.get(f.rel_path)
                why = skipped.get(f.rel_path) or self.faults.get(sha) or self.failures.get(sha)
                if why is None and sha not in self.known:
                    why = "not embedded (the engine returned nothing for it)"
                if why is not None:
                    skipped[f.rel_path] = why
                    continue
                rows.paths.append(f.rel_path)
                rows.labels.append(f.label)
                rows.sha256.append(sha)
                if rows.groups is not None:
                    rows.groups.append(f.group)
            rows.skipped = sorted((p, r) for p, r in skipped.items() if index.split_of[p] == split)
            splits[split] = rows
        return splits, skipped

    def write(self, existing: ExistingCache, out: Path, header: CacheHeader,
              model_seconds: float) -> MergeOutcome:
        """Write the cache unless it already holds exactly this; the partial store is removed after."""
        splits, skipped = self.outcome()
        present = set(self.plan.index.hashes.values())
        failures = {sha: why for sha, why in self.failures.items() if sha in present and sha not in self.faults}
        old = existing.header if existing.usable else None
        old_paths = existing.paths()
        per_image = model_seconds / self.computed if self.computed else (old.seconds_per_image if old else 0.0)
        header = replace(header, seconds_per_image=per_image)
        header = replace(header, content_digest=content_digest(header, splits, failures))
        written = old is None or old.content_digest != header.content_digest
        if written:
            header = replace(header, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            write_cache(out, header, splits, self.known, failures, release=existing.close)
        self.partial.remove()
        removed = len(old_paths - {p for rows in splits.values() for p in rows.paths})
        return MergeOutcome(splits=splits, skipped=skipped, computed=self.computed, removed=removed, written=written)
