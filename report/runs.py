"""Finished runs read back from a models directory (through ``clothprobe.runs.directory``), grouped by dataset, and
the reference notebooks' reported figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.classifiers.stats import PairedTest, mcnemar
from clothprobe.errors import ClothprobeError
from clothprobe.runs.directory import (
    Manifest,
    Metrics,
    Predictions,
    RunKind,
    find_runs,
    read_manifest,
    read_metrics,
    read_predictions,
)


@dataclass(frozen=True)
class Reference:
    """A figure the reference notebooks reported. Quoted, not measured here; no timing was reported."""

    name: str
    backbone: str
    val: float | None
    test: float | None


REFERENCES: tuple[Reference, ...] = (
    Reference("VGG16 cached features + dense head (notebook 1)", "vgg16", 0.85, None),
    Reference("VGG16 end to end with augmentation (notebook 1)", "vgg16", 0.80, None),
    Reference("VGG16 fine-tuned (notebook 1)", "vgg16", 0.84, None),
    Reference("Xception 299 px, augmentation (notebook 1)", "xception", 0.87, 0.90),
    Reference("Xception, augmentation (notebook 2)", "xception", 0.89, 0.90),
    Reference("MobileNetV2 (notebook 1)", "mobilenetv2", None, 0.88),
)
BEST_REFERENCE_TEST = max(r.test for r in REFERENCES if r.test is not None)


@dataclass
class Run:
    """One finished run: its directory, metrics and manifest (read and checked by ``rundir``)."""

    directory: Path
    metrics: Metrics
    manifest: Manifest
    _predictions: Predictions | None = None

    @property
    def id(self) -> str:
        return self.metrics.id

    @property
    def kind(self) -> str:
        return self.metrics.kind

    @property
    def dataset(self) -> str:
        return self.metrics.dataset

    def score(self, split: str, key: str = "accuracy") -> float | None:
        block = getattr(self.metrics, split)
        return None if block is None else getattr(block, key)

    def interval(self, split: str, key: str = "accuracy") -> tuple[float, float] | None:
        block = getattr(self.metrics, split)
        return None if block is None else block.interval(key)

    @property
    def val_accuracy(self) -> float | None:
        """Accuracy on what the choice was made on: the validation split, or out of fold."""
        return self.score("validation")

    @property
    def total_seconds(self) -> float | None:
        fit_s, feat_s = self.metrics.fit_seconds, self.metrics.featurize_seconds
        if self.kind is not RunKind.CACHED_FEATURES:
            return fit_s
        return None if feat_s is None else fit_s + feat_s

    @property
    def split_note(self) -> str:
        """How the photos were split, for a run fitted on a dataset read from a labels table ("" otherwise)."""
        from clothprobe.featurize.cache.schema import CacheInfo
        from clothprobe.featurize.table import TableRecord

        tables = [CacheInfo.from_dict(record).table for record in self.manifest.caches.values()]
        return next((TableRecord.from_dict(t).describe() for t in tables if t), "")

    def predictions(self) -> Predictions | None:
        if self._predictions is None:
            self._predictions = read_predictions(self.directory, self.manifest.classes)
        return self._predictions


def _read(directory: Path) -> Run:
    run = Run(directory, read_metrics(directory), read_manifest(directory))
    if run.metrics.run != run.manifest.run or run.metrics.dataset != run.manifest.dataset:
        raise ClothprobeError(f"{directory}: metrics.json and manifest.json describe different runs; fit it again.")
    run.predictions()  # a damaged predictions file is caught here, not halfway through the report
    _ = run.split_note  # and so is a damaged table record
    return run


def rank_key(metrics: Metrics, run_id: str) -> tuple:
    """How runs are ranked: accuracy on what the choice rested on (validation, or out of fold), highest
    first; ties broken by the lower log loss on the same photos (as the settings within a head are), then by
    id. Test accuracy never enters."""
    held = metrics.validation
    return (-held.accuracy, held.log_loss, run_id) if held is not None else (1.0, float("inf"), run_id)


def collect_runs(models_dir: str | Path) -> tuple[dict[str, list[Run]], list[tuple[str, str]]]:
    """Every finished run under ``models_dir`` by dataset, best validation accuracy first (ties: by id),
    and the runs that could not be read, with the reason (skipped, not fatal).

    Sorting on validation is the honest order: test accuracy is shown, never used to rank.
    """
    by_dataset: dict[str, list[Run]] = {}
    skipped: list[tuple[str, str]] = []
    for directory in find_runs(models_dir):
        try:
            run = _read(directory)
        except ClothprobeError as err:
            skipped.append((str(directory), str(err)))
            continue
        by_dataset.setdefault(run.dataset, []).append(run)
    if not by_dataset:
        found = f" ({len(skipped)} unreadable: {skipped[0][1]})" if skipped else ""
        raise ClothprobeError(f"Nothing to report: no finished runs (metrics.json + manifest.json) under "
                              f"{models_dir}{found}. Make some with: cli fit --clf all")
    ranked = {name: sorted(runs, key=lambda r: rank_key(r.metrics, r.id)) for name, runs in sorted(by_dataset.items())}
    return ranked, skipped


def paired(a: Run, b: Run) -> PairedTest | None:
    """McNemar's test of ``a`` against ``b`` on the test photos both predicted (matched by path)."""
    pa, pb = a.predictions(), b.predictions()
    if pa is None or pb is None:
        return None
    rows_b = {p: i for i, p in enumerate(pb.paths)}
    shared = [(i, rows_b[p]) for i, p in enumerate(pa.paths) if p in rows_b]
    if not shared:
        return None
    ia, ib = (np.array(idx) for idx in zip(*shared))
    return mcnemar(pa.correct[ia], pb.correct[ib])
