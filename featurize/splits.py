"""Train, validation and test splits for a dataset that comes without them: seeded, stratified by class and,
given a group (a sender, a shop, a session), grouped, so no group has photos in two splits.

scikit-learn cuts the photos into ``FOLDS`` folds (``StratifiedGroupKFold``, or ``StratifiedKFold`` when each
photo is its own group), each with about the same share of every class and whole groups only; some folds make
test, some validation, the rest train, so the proportions are met in steps of one fold (5%; coarser with fewer
than 20 groups, or when no class has 20 photos).
A class that ended up with no training photo takes its smallest group back into train (a class can always be
trained when it has a photo). The result depends only on the photos' classes and groups and on the seed,
not on the order of the rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clothprobe._util.bounds import BOUNDS
from clothprobe.errors import ClothprobeError

SPLITS = ("train", "validation", "test")
DEFAULT_PROPORTIONS = (0.70, 0.15, 0.15)
FOLDS = 20  # proportions are met in steps of 1/FOLDS (fewer groups than this: one fold per group)


def parse_proportions(text: str) -> tuple[float, float, float]:
    """``"70/15/15"`` (percentages of train/validation/test, summing to 100) as fractions."""
    parts = [p.strip() for p in str(text).split("/")]
    if len(parts) != 3:
        raise ClothprobeError(f"--proportions takes train/validation/test percentages such as 70/15/15, got {text!r}.")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ClothprobeError(f"--proportions takes three numbers such as 70/15/15, got {text!r}.") from None
    for value in values:
        BOUNDS["proportion"].check("--proportions (each part)", value)
    if abs(sum(values) - 100) > 1e-6 or values[0] <= 0:
        raise ClothprobeError(f"--proportions: the three percentages must sum to 100 with train above 0, got "
                              f"{text!r} (sum {sum(values):g}).")
    return values[0] / 100, values[1] / 100, values[2] / 100


def fold_counts(proportions: Sequence[float], folds: int) -> tuple[int, int, int]:
    """Folds for train, validation and test: the nearest whole numbers (largest remainders), at least one fold
    for each split asked for."""
    wanted = np.asarray(proportions, float) * folds
    counts = np.floor(wanted).astype(int)
    for i in np.argsort(-(wanted - counts), kind="stable")[: folds - counts.sum()]:
        counts[i] += 1
    for i in range(3):
        if proportions[i] > 0 and counts[i] == 0:  # a split asked for gets a fold, from the largest
            counts[i] = 1
            counts[np.argmax(counts)] -= 1
    return int(counts[0]), int(counts[1]), int(counts[2])


@dataclass(frozen=True)
class SplitOutcome:
    """Each photo's split, and what was done to get it."""

    splits: list[str]
    folds: int
    moved: tuple[str, ...] = ()  # classes that took a group back into train


def _folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int, grouped: bool) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(len(labels))
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if grouped else StratifiedKFold(
        folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():  # "the least populated class has only k members": expected, handled below
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held) in enumerate(cv.split(x, labels, groups if grouped else None)):
            fold[held] = k
    return fold


def _fold_splits(sizes: np.ndarray, counts: tuple[int, int, int], proportions: Sequence[float]) -> np.ndarray:
    """Each fold's split (0 train, 1 validation, 2 test): test, then validation, take their number of folds, each
    time the fold whose size is nearest the photos still wanted per fold still to take (folds differ by whole
    groups, which matters when there are few photos per fold)."""
    split = np.zeros(len(sizes), dtype=np.int64)
    free = list(range(len(sizes)))
    for s in (2, 1):
        wanted = proportions[s] * sizes.sum()
        for left in range(counts[s], 0, -1):
            k = min(free, key=lambda f: (abs(sizes[f] - wanted / left), f))
            free.remove(k)
            split[k] = s
            wanted -= sizes[k]
    return split


def assign_splits(labels: Sequence[str], groups: Sequence[str] | None, proportions: Sequence[float],
                  seed: int, *, present: Sequence[bool] | None = None) -> SplitOutcome:
    """The split of each photo (``labels``: its class; ``groups``: its group, None: each photo alone).
    ``present``: whether each photo's file exists; a class with no present training photo takes back into
    train its smallest group holding a present photo of it."""
    names, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    grouped = groups is not None
    g = (np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1] if grouped
         else np.arange(len(y)))
    n_groups = int(g.max()) + 1 if len(g) else 0
    needed = 1 + sum(1 for p in proportions[1:] if p > 0)
    largest = int(np.bincount(y).max()) if len(y) else 0
    if min(n_groups, largest) < needed:
        what = f"{n_groups} group(s)" if grouped else f"{n_groups} photo(s)"
        raise ClothprobeError(f"{what} (the largest class: {largest}) cannot fill {needed} splits stratified by "
                              f"class: it takes {needed} of each; add photos, or give --proportions with fewer splits "
                              f"(e.g. 100/0/0) or the table a split column.")
    if needed == 1:
        return SplitOutcome(["train"] * len(y), 1)
    folds = min(FOLDS, n_groups, largest)  # scikit-learn: no more folds than the largest class has photos
    counts = fold_counts(proportions, folds)
    fold = _folds(y, g, folds, seed, grouped)
    split = _fold_splits(np.bincount(fold, minlength=folds), counts, proportions)[fold]
    ok = np.ones(len(y), bool) if present is None else np.asarray(present, bool)
    moved = []
    for c in np.unique(y[ok]):
        if not np.any((split == 0) & (y == c) & ok):
            candidates = np.unique(g[(y == c) & ok])
            sizes = np.bincount(g, minlength=n_groups)[candidates]
            split[g == candidates[np.argmin(sizes)]] = 0  # the smallest group (first by name on ties)
            moved.append(str(names[c]))
    return SplitOutcome([SPLITS[s] for s in split], folds, tuple(moved))
