"""The audit's checks, each a function of arrays (embeddings, labels, content hashes), so they work on any
pooled features. Every finding carries a ``suspicion`` in [0, 1]; the page shows the highest first."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

LABEL_ISSUE = "label issue"
EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
TEST_NEAR_TRAINING = "test photo near a training photo"
VALIDATION_NEAR_TRAINING = "validation photo near a training photo"
TEST_NEAR_VALIDATION = "test photo near a validation photo"
GROUP_ACROSS_SPLITS = "group in two splits"
FEW_PHOTOS = "few photos"
# A near-duplicate pair in two splits is a leak: its kind, by the pair's splits. The photo of the split earlier
# in SPLIT_ORDER is the finding's photo, the other its "other photo".
LEAKS = {frozenset({"test", "train"}): TEST_NEAR_TRAINING, frozenset({"validation", "train"}): VALIDATION_NEAR_TRAINING,
         frozenset({"test", "validation"}): TEST_NEAR_VALIDATION}
SPLIT_ORDER = ("test", "validation", "train")
OOF_FOLDS = 5
OOF_C = (0.01, 0.1, 1.0)  # the regularization with the lowest out-of-fold log loss is used
_BLOCK = 1024


@dataclass
class Rows:
    """Every photo of the dataset, all splits together: aligned arrays."""

    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    path: np.ndarray
    sha256: np.ndarray
    class_names: list[str]
    X_flip: np.ndarray | None = None
    group: np.ndarray | None = None  # each photo's group ("" for none), when the photos have groups
    group_column: str = ""  # what a group is (a table's column name), for the findings' wording


@dataclass
class Finding:
    kind: str
    suspicion: float  # in [0, 1]; higher = look first
    split: str
    path: str
    label: str
    detail: str
    other_split: str = ""
    other_path: str = ""


def out_of_fold_proba(X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Each row's class probabilities from a logistic regression fitted without it (stratified k-fold), with
    the C of ``OOF_C`` whose out-of-fold probabilities have the lowest log loss (cleanlab needs calibrated
    probabilities: too strong a regularization flattens them and hides flipped labels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(max(2, min(OOF_FOLDS, int(np.bincount(y)[np.unique(y)].min()))), shuffle=True,
                            random_state=seed)
    best = None
    for C in OOF_C:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, tol=1e-3, random_state=seed))
        proba = cross_val_predict(model, X, y, cv=folds, method="predict_proba")
        loss = log_loss(y, proba, labels=np.unique(y))
        if best is None or loss < best[0]:
            best = (loss, proba, C)
    return best[1], best[2]


def label_quality(rows: Rows, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """cleanlab's label-quality score of every row (low = likely mislabeled), the rows cleanlab flags as label
    issues (most likely first), the out-of-fold probabilities they rest on and the C behind them."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    proba, C = out_of_fold_proba(rows.X, rows.y, seed)
    quality = get_label_quality_scores(rows.y, proba)
    flagged = find_label_issues(rows.y, proba, return_indices_ranked_by="self_confidence")
    return quality, flagged, proba, C


def searchable(y: np.ndarray) -> bool:
    """Whether out-of-fold probabilities can be had: at least two classes with two photos or more (then every
    training fold holds two classes)."""
    return int(np.sum(np.bincount(np.asarray(y, dtype=np.int64)) >= 2)) >= 2


def label_issues(rows: Rows, seed: int = 0) -> tuple[list[Finding], float]:
    """The rows cleanlab flags, and the C of the logistic regression behind them; callers check ``searchable``."""
    quality, flagged, proba, C = label_quality(rows, seed)
    return [Finding(LABEL_ISSUE, float(1 - quality[i]), rows.split[i], rows.path[i], rows.class_names[rows.y[i]],
                    f"looks like {rows.class_names[proba[i].argmax()]} ({100 * proba[i].max():.0f}%); "
                    f"label quality {quality[i]:.3f}") for i in flagged], C


def exact_duplicates(rows: Rows) -> list[Finding]:
    """Photos with the same bytes (content hash): each one after the first of its group."""
    first: dict[str, int] = {}
    found = []
    for i, digest in enumerate(rows.sha256):
        j = first.setdefault(digest, i)
        if j != i:
            labels = (rows.class_names[rows.y[j]], rows.class_names[rows.y[i]])
            note = "same bytes" + ("" if labels[0] == labels[1] else f", labelled {labels[0]} there")
            found.append(Finding(EXACT_DUPLICATE, 1.0, rows.split[i], rows.path[i], labels[1], note,
                                 rows.split[j], rows.path[j]))
    return found


def normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def mirror_threshold(X: np.ndarray, X_flip: np.ndarray) -> float:
    """The near-duplicate threshold, measured: the median cosine between a photo's embedding and its mirror
    image's. Two photos at least that close are as alike as a photo and its own mirror image."""
    return float(np.median(np.sum(normalize(X) * normalize(X_flip), axis=1)))


def similar_pairs(X: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) with cosine similarity >= ``threshold``, and their similarity."""
    Xn = normalize(X)
    I, J, S = [], [], []
    for start in range(0, len(Xn), _BLOCK):
        sims = Xn[start:start + _BLOCK] @ Xn.T
        i, j = np.nonzero(sims >= threshold)
        keep = start + i < j
        I.append(start + i[keep])
        J.append(j[keep])
        S.append(sims[i[keep], j[keep]])
    return np.concatenate(I), np.concatenate(J), np.concatenate(S)


def _split_rank(split: str) -> int:
    return SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER)


def near_duplicates(rows: Rows, threshold: float) -> list[Finding]:
    """Pairs of different photos at least ``threshold`` alike; a pair in two splits is a leak (``LEAKS``), the
    photo of the later split (test, then validation) first."""
    found = []
    for i, j, s in zip(*similar_pairs(rows.X, threshold)):
        if rows.sha256[i] == rows.sha256[j]:
            continue  # an exact duplicate, reported as one
        a, b = sorted((i, j), key=lambda k: (_split_rank(rows.split[k]), k))
        kind = LEAKS.get(frozenset({rows.split[a], rows.split[b]}), NEAR_DUPLICATE)
        labels = rows.class_names[rows.y[a]], rows.class_names[rows.y[b]]
        note = f"cosine {s:.4f}" + ("" if labels[0] == labels[1] else f", labelled {labels[1]} there")
        found.append(Finding(kind, float(s), rows.split[a], rows.path[a], labels[0], note, rows.split[b], rows.path[b]))
    return found


def groups_across_splits(rows: Rows) -> list[Finding]:
    """Each group with photos in two splits or more (a leak: the model is tested on a sender it trained on), as
    one finding: a photo of the group in its latest split, and one in another split."""
    if rows.group is None:
        return []
    by_group: dict[str, list[int]] = {}
    for k, group in enumerate(rows.group):
        if group:
            by_group.setdefault(str(group), []).append(k)
    found = []
    for group, members in sorted(by_group.items()):
        in_split = Counter(rows.split[k] for k in members)
        splits = sorted(in_split, key=_split_rank)
        if len(splits) < 2:
            continue
        first = next(k for k in members if rows.split[k] == splits[0])
        other = next(k for k in members if rows.split[k] == splits[1])
        counts = ", ".join(f"{in_split[s]} in {s}" for s in splits)
        found.append(Finding(GROUP_ACROSS_SPLITS, 1.0, rows.split[first], rows.path[first],
                             rows.class_names[rows.y[first]], f"{rows.group_column or 'group'} {group!r}: {counts}",
                             rows.split[other], rows.path[other]))
    return found


def few_photos(rows: Rows, minimum: int) -> list[Finding]:
    """Classes with fewer than ``minimum`` photos in a split (none at all counts too)."""
    found = []
    for split in sorted(set(rows.split)):
        counts = np.bincount(rows.y[rows.split == split], minlength=len(rows.class_names))
        for c, n in enumerate(counts):
            if n < minimum:
                found.append(Finding(FEW_PHOTOS, 1 - n / minimum, split, "", rows.class_names[c],
                                     f"{n} photo(s) in {split}, fewer than {minimum}"))
    return found
