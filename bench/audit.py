"""Benchmark: does cli audit find mislabeled photos? Flip the labels of 5% of the training photos (seeded, in the
label array in memory; nothing on disk changes), run the audit's label-issue search, and report precision and
recall at k = the number flipped (the k training photos it ranks most suspicious), and of cleanlab's own
flagged set. Then the whole audit of the unchanged dataset (duplicates, leaks, small classes) and its time.

    python bench/audit.py --features ../shared-cache/features

A cache without the mirrored view: the near-duplicate threshold is measured here the way cli audit measures it
from a --tta flip cache (the median cosine of a photo and its mirror image), on a seeded sample of training
photos embedded with the cache's own recipe (needs the backbone's weights), and passed as --near-threshold.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from results_file import write_report  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]


def flip_labels(y: np.ndarray, rows: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A copy of ``y`` with each of ``rows`` moved to another class (seeded)."""
    rng = np.random.default_rng(seed)
    flipped = y.copy()
    flipped[rows] = (y[rows] + rng.integers(1, n_classes, len(rows))) % n_classes
    return flipped


def _flips(rows, fraction: float, seed: int) -> str:  # noqa: ANN001 - audit.findings.Rows
    from dataclasses import replace

    from clothprobe.audit.findings import label_quality

    train = np.flatnonzero(rows.split == "train")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=round(fraction * len(train)), replace=False))
    noisy = replace(rows, y=flip_labels(rows.y, chosen, len(rows.class_names), seed))
    started = time.perf_counter()
    quality, flagged, _, C = label_quality(noisy, seed)
    seconds = time.perf_counter() - started
    k = len(chosen)
    ranked = train[np.argsort(quality[train], kind="stable")][:k]
    hits = len(np.intersect1d(ranked, chosen))
    flagged_train = np.intersect1d(flagged, train)
    found = len(np.intersect1d(flagged_train, chosen))
    return (f"{k} of {len(train)} training labels flipped (seed {seed}). At k = {k}, the audit's ranking: precision "
            f"{hits / k:.3f}, recall {hits / k:.3f} (at k = the number flipped they are equal). cleanlab's flagged "
            f"set: {len(flagged_train)} training photos, precision {found / max(1, len(flagged_train)):.3f}, recall "
            f"{found / k:.3f}. Out-of-fold logistic regression C = {C:g}; {seconds:.0f} s for the label search "
            f"over {len(rows.y)} photos.")


def mirror_threshold(cache_path: Path, rows, sample: int, seed: int) -> float:  # noqa: ANN001
    """The median cosine of a photo's cached embedding and its mirror image's, over a seeded sample."""
    from clothprobe.audit.findings import normalize
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.embed import embed_files
    from clothprobe.featurize.model.recipe import reproduce

    cache = load_features(cache_path)
    root = Path(cache.header.data_root)
    train = np.flatnonzero(rows.split == "train")
    picked = np.sort(np.random.default_rng(seed).choice(train, size=min(sample, len(train)), replace=False))
    done = embed_files(reproduce(cache.recipe), [root / rows.path[i] for i in picked], flip=True)
    original, mirror = done.views["embeddings"], done.views["flip"]
    return float(np.median(np.sum(normalize(original) * normalize(mirror), axis=1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--backbone", default="xception")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mirror-sample", type=int, default=64, help="Photos to measure the mirror threshold on.")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="Folder for audit.html/.csv.")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "audit.md")
    a = p.parse_args()

    from clothprobe.audit import audit
    from clothprobe.audit.run import load_rows
    from clothprobe.featurize.catalog import find_cache

    rows, _ = load_rows(a.dataset, a.backbone, a.features)
    parts = ["## Planted label flips", _flips(rows, a.fraction, a.seed)]
    threshold = None
    if rows.X_flip is None:
        threshold = mirror_threshold(find_cache(a.features, a.dataset, a.backbone), rows, a.mirror_sample, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = audit(a.dataset, a.backbone, a.features, html=a.out / "audit.html", csv=a.out / "audit.csv",
                   seed=a.seed, near_threshold=threshold)
    seconds = time.perf_counter() - started
    counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
    source = result.threshold_source if threshold is None else (
        f"measured here: median cosine of {a.mirror_sample} training photos and their mirror images")
    summary = (f"{len(rows.y)} photos: {counts}. Near duplicates from cosine {result.near_threshold:.4f} ({source}). "
               f"{seconds:.0f} s. Page and CSV: {result.html_path}, {result.csv_path}.")
    parts += ["## The audit of the unchanged dataset", summary,
              f"{a.backbone} final-layer features; {os.cpu_count()} CPU cores."]
    write_report(a.report, "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
