"""Which cached taps a head is fitted on (``cli fit --taps``), as a setting chosen like C: never on test.

A feature set's columns are blocks, one per (backbone, tap) (``FeatureSet.blocks``). A request is
``final`` (each backbone's last tap), ``all`` (every tap its cache holds), ``last-K`` (each backbone's last K
taps, all of them where it holds fewer), ``NAME,...`` (those taps, each backbone the ones it has, its final
tap when it has none of them), or ``auto``: the candidates ``final``, ``last-2``, ``last-4`` and ``all`` are
each fitted, and the one with the best score on the selection data
(validation split or out of fold, as for every other setting) is kept. ``check_taps`` is the one
validator of the option.

Each tap is standardized on the training rows (the head's scaler) and weighted by ``1/sqrt(columns)``
(times one constant, ``sqrt(all columns / taps)``), so every tap carries the same total variance whatever
its width and no tap dominates, while the whole input keeps the variance plain standardization gives it
and C means what it did: with ``1/sqrt(columns)`` alone, Xception's final tap was regularized ~2,000x
harder and every tap set lost to final-only on validation (bench/taps.py, first run). The weights are
``FeatureSet.column_scale``, applied to the fitted scaler, so the saved model holds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from clothprobe.classifiers.data import FeatureSet, SplitData
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.taps import ALL, FINAL

AUTO = "auto"
DEFAULT_FIT_TAPS = AUTO
LAST_K = (2, 4)  # auto's candidates between final and all
LAST = "last-"  # last-K: each backbone's last K taps


@dataclass(frozen=True)
class TapChoice:
    """A candidate tap set: its name (``final``, ``last-4``, ``all``, or the names asked) and, per backbone,
    the taps it uses in column order."""

    name: str
    taps: dict[str, tuple[str, ...]]


def check_taps(request: str) -> str:
    """``final``, ``all``, ``auto``, ``last-K`` (K a whole number >= 1) or a comma-separated list of names
    (checked against the caches later)."""
    if not isinstance(request, str) or not [p for p in request.split(",") if p.strip()]:
        raise ClothprobeError(f"--taps takes final, all, auto, last-K or tap names separated by commas; got {request!r}.")
    request = request.strip()
    if request.startswith(LAST) and _last_k(request) is None:
        raise ClothprobeError(f"--taps last-K takes a whole number K of at least 1 (last-2, last-4); got {request!r}.")
    return request


def _last_k(request: str) -> int | None:
    """K of a ``last-K`` request (ASCII digits, K >= 1), else None."""
    found = re.fullmatch(LAST + r"([1-9][0-9]*)", request)
    return int(found.group(1)) if found else None


def _last(data: FeatureSet, k: int | None) -> dict[str, tuple[str, ...]]:
    held = data.taps_held()
    return {b: names if k is None else names[-k:] for b, names in held.items()}


def _named(data: FeatureSet, request: str) -> dict[str, tuple[str, ...]]:
    asked = [p.strip() for p in request.split(",") if p.strip()]
    held = data.taps_held()
    unknown = [a for a in asked if a != FINAL and not any(a in names for names in held.values())]
    if unknown:
        have = "; ".join(f"{b}: {', '.join(names)}" for b, names in held.items())
        raise ClothprobeError(f"No cache of {data.name} holds tap {', '.join(unknown)}; they hold {have}. "
                              f"Featurize again with --taps all, or ask for taps they hold.")
    out = {}
    for b, names in held.items():
        mine = tuple(n for n in names if n in asked or (n == names[-1] and FINAL in asked))
        out[b] = mine or names[-1:]
    return out


def tap_candidates(data: FeatureSet, request: str) -> list[TapChoice]:
    """The tap sets ``request`` stands for, in order (one unless ``auto``; duplicates dropped)."""
    request = check_taps(request)
    if request == FINAL:
        return [TapChoice(FINAL, _last(data, 1))]
    if request == ALL:
        return [TapChoice(ALL, _last(data, None))]
    if request.startswith(LAST):
        return [TapChoice(request, _last(data, _last_k(request)))]
    if request != AUTO:
        return [TapChoice(request, _named(data, request))]
    out: list[TapChoice] = []
    for name, k in [(FINAL, 1), *((f"{LAST}{k}", k) for k in LAST_K), (ALL, None)]:
        taps = _last(data, k)
        if all(taps != c.taps for c in out):
            out.append(TapChoice(name, taps))
    return out


def restrict(data: FeatureSet, choice: TapChoice) -> FeatureSet:
    """``data`` with only the columns of ``choice``'s taps (the caches' records say which were used)."""
    keep = [i for i, b in enumerate(data.blocks) if b.tap in choice.taps[b.backbone]]
    columns = np.concatenate([data.block_columns(i) for i in keep])
    splits = {name: SplitData(s.X[:, columns], s.y, s.paths, None if s.X_flip is None else s.X_flip[:, columns])
              for name, s in data.splits.items()}
    caches = {b: {**record, "taps": list(choice.taps[b])} for b, record in data.caches.items()}
    return replace(data, splits=splits, caches=caches, blocks=[data.blocks[i] for i in keep])


def held_score(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """Accuracy and log loss on the selection data: how candidate tap sets are compared (as grid entries are)."""
    from sklearn.metrics import accuracy_score, log_loss

    return float(accuracy_score(y, proba.argmax(1))), float(log_loss(y, proba, labels=range(proba.shape[1])))


def compare_on_held(held: object, first: object, n_classes: int, seed: int) -> dict:
    """A candidate's selection accuracy with its 95% bootstrap interval, and the exact McNemar test
    against the first candidate (final-only under ``auto``) on the same selection photos."""
    from clothprobe.classifiers.stats import bootstrap_intervals, mcnemar

    pred = held.proba.argmax(1)
    test = mcnemar(pred == held.y, first.proba.argmax(1) == first.y)
    return {"interval": bootstrap_intervals(held.y, pred, n_classes, seed)["accuracy"],
            "vs_first": {"difference": test.difference, "p_value": test.p_value, "only_this": test.only_a,
                         "only_first": test.only_b}}


def weight_scaler(scaler: object, column_scale: np.ndarray | None) -> None:
    """Fold each tap's weight into a fitted StandardScaler (its ``scale_``), so the pipeline, and the
    model file, apply it with the standardization."""
    if column_scale is not None:
        scaler.scale_ = scaler.scale_ * column_scale
