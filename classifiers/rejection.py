"""The reject option of a fit (``cli fit --unknown DIR``): photos outside the classes, featurized with the same
recipe, split into a tuning and a reporting part; the score and its threshold chosen on validation knowns +
the tuning part (``classifiers/openset.py``), the figures measured on test knowns + the reporting part.

The test split and the reporting part are read only after the choice, to measure it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.classifiers import openset
from clothprobe.classifiers.data import FeatureSet, SplitData, join_caches
from clothprobe.classifiers.select import predict_split
from clothprobe.classifiers.taps import TapChoice, restrict
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.cache.schema import CacheInfo, default_path
from clothprobe.featurize.embed import FLIPPED
from clothprobe.featurize.model.recipe import reproduce


@dataclass
class UnknownSet:
    """Photos of garments outside the classes, as features: ``types[i]`` indexes ``type_names``."""

    folder: str
    rows: SplitData  # y holds the garment type
    type_names: list[str]
    features: FeatureSet  # the cache(s) the rows came from, every tap: ``with_taps`` restricts them


@dataclass(frozen=True)
class RejectRequest:
    """What a fit with ``--unknown`` is given: the unknown photos, optional negatives, and the largest share of
    validation accuracy the threshold may cost (``--unknown-cost``, as a fraction)."""

    unknown: UnknownSet
    negatives: UnknownSet | None = None
    max_cost: float = openset.MAX_ACCURACY_COST

    def __post_init__(self) -> None:
        if len(self.unknown.rows.y) < 2:
            raise ClothprobeError(f"{self.unknown.folder} holds {len(self.unknown.rows.y)} featurized photo; --unknown "
                                  f"needs at least 2 (half choose the threshold, half measure it): add photos of "
                                  f"garments outside the classes (DIR/<garment type>/<image>) and featurize it again.")

    def restricted(self, fitted: FeatureSet, tta: bool) -> RejectRequest:
        """The request with the columns ``fitted`` holds (the tap set a fit chose)."""
        return replace(self, unknown=with_taps(self.unknown, fitted, tta),
                       negatives=with_taps(self.negatives, fitted, False))


def _rows(found: FeatureSet, folder: str | Path, tta: bool) -> SplitData:
    """Every split of ``found`` joined (the flipped view too with ``tta``)."""
    parts = [s for s in found.splits.values() if len(s)]
    if not parts:
        raise ClothprobeError(f"The cache of {folder} holds no photos; featurize DIR/<garment type>/<image>.")
    flips = [s.X_flip for s in parts]
    if tta and any(f is None for f in flips):
        raise ClothprobeError(f"--tta needs the flipped view of {folder}; featurize it with --tta flip.")
    return SplitData(np.vstack([s.X for s in parts]), np.concatenate([s.y for s in parts]),
                     np.concatenate([s.paths for s in parts]), None if not tta else np.vstack(flips))


def with_taps(unknown: UnknownSet | None, fitted: FeatureSet, tta: bool) -> UnknownSet | None:
    """``unknown`` with the columns ``fitted`` holds (the tap set a fit chose, ``classifiers/taps.py``)."""
    if unknown is None:
        return None
    found = restrict(unknown.features, TapChoice("fitted", fitted.taps_held()))
    return UnknownSet(unknown.folder, _rows(found, unknown.folder, tta), unknown.type_names, found)


def load_unknown(folder: str | Path, features_dir: str | Path, known: FeatureSet, tta: bool,
                 progress: bool = False) -> UnknownSet:
    """The photos of ``folder`` (``DIR/<garment type>/<image>``, found by its path), featurized here with the
    recipe and views of each of ``known``'s caches into ``<features_dir>/<folder name>-<hash of its path>/`` (only
    photos new to that cache are computed), every split joined. A folder that is, holds or lies inside the
    dataset's folder is refused."""
    from clothprobe.featurize.cache.read import load_features
    from clothprobe.featurize.pipeline import featurize

    folder = Path(folder).expanduser().resolve()
    _check_apart(folder, known)
    caches = []
    for b in known.backbones:
        info = CacheInfo.from_dict(known.caches[b])
        _check_model_kept(info, known.dataset)
        done = featurize(folder, out=unknown_cache_path(features_dir, folder, b), features_dir=features_dir,
                         tta=FLIPPED in info.views, recipe=reproduce(info.recipe), progress=progress)
        caches.append(load_features(done.cache_path))
        if caches[-1].fingerprint != info.fingerprint:  # this machine ran another precision (a failed self-check)
            raise ClothprobeError(f"{folder} was embedded with {caches[-1].recipe.label}, the dataset with "
                                  f"{info.recipe.label}; featurize {known.dataset} again on this machine.")
    found = join_caches(known.backbones, caches, folder.name)
    return UnknownSet(str(folder), _rows(found, folder, tta), list(found.class_names), found)


def _check_model_kept(info: CacheInfo, dataset: str) -> None:
    """An int8 model is made from its calibration photos, which only the dataset's featurize has: it must still be
    in the store to embed another folder like the dataset."""
    from clothprobe.featurize.model.store import ModelStore

    if info.recipe.precision == "int8" and ModelStore().read_for(info.recipe) is None:
        raise ClothprobeError(f"The int8 model that embedded {dataset} ({info.recipe.label}) is no longer in the model "
                              f"store (pruned?); featurize {dataset} again to make it, then fit with --unknown.")


def unknown_cache_path(features_dir: str | Path, folder: str | Path, backbone: str) -> Path:
    """Where ``load_unknown`` keeps ``backbone``'s cache of ``folder`` (resolved): named by its path, as folder names
    may repeat (a dataset's among them)."""
    folder = Path(folder).expanduser().resolve()
    return default_path(features_dir, f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}", backbone)


def _check_apart(folder: Path, known: FeatureSet) -> None:
    """Refuse a folder of unknown garments that overlaps the dataset's folder: the known photos would be taken
    for unknown ones."""
    root = known.data_root
    if not folder.is_dir():
        raise ClothprobeError(f"{folder} is not a folder; give DIR/<garment type>/<image> of garments outside the "
                              f"classes.")
    if root is None:
        return
    root = Path(root).resolve()
    if folder == root or root in folder.parents or folder in root.parents:
        how = "is" if folder == root else "lies inside" if root in folder.parents else "holds"
        raise ClothprobeError(f"{folder} {how} the folder of dataset {known.dataset} ({root}): its photos are of the "
                              f"known classes. Give a folder of garments outside them, apart from the dataset.")


def subset(split: SplitData, rows: np.ndarray) -> SplitData:
    return SplitData(split.X[rows], split.y[rows], split.paths[rows], None if split.X_flip is None else split.X_flip[rows])


def output_of(model: Any, split: SplitData, n_classes: int, tta: bool, logits: bool = True) -> openset.HeadOutput:
    return openset.head_output(model, split.X, predict_split(model, split, n_classes, tta), logits,
                               flipped=split.X_flip if tta else None)


@dataclass
class Rejection:
    openset: openset.OpenSet
    figures: dict  # the metrics file's ``openset`` record


def fit_rejection(model: Any, data: FeatureSet, unknown: UnknownSet, *, tta: bool, seed: int,
                  negatives: UnknownSet | None = None, logits: bool = True,
                  max_cost: float = openset.MAX_ACCURACY_COST) -> Rejection:
    """Choose the score and threshold (validation knowns + the tuning part); then measure them on test knowns
    + the reporting part. ``model`` was fitted on train only (``--select validation``). ``negatives``: photos of
    other garments (not the unknown ones) the distance scores contrast with (outlier exposure). ``logits``:
    whether the saved head keeps its logits (the energy score needs them at predict time too). ``max_cost``: the
    share of validation accuracy the threshold may cost."""
    train, val, n = data.splits["train"], data.splits.get("validation"), len(data.class_names)
    if val is None or not len(val):
        raise ClothprobeError(f"--unknown needs a validation split: the threshold is set on the validation photos "
                              f"(at most {100 * max_cost:g} pp of their accuracy). Featurize "
                              "DIR/{train,validation,test}/<class>/<image>.")
    tuning_rows, report_rows = openset.split_unknown(unknown.rows.y, seed)
    scorer = openset.OpenSetScorer().fit(train.X, train.y, None if negatives is None else negatives.rows.X)
    tuning = output_of(model, subset(unknown.rows, tuning_rows), n, tta, logits)
    chosen = openset.tune(scorer, output_of(model, val, n, tta, logits), tuning, known_y=val.y, seed=seed,
                          max_cost=max_cost)
    figures: dict[str, Any] = {
        "unknown_folder": unknown.folder, "negatives_folder": None if negatives is None else negatives.folder,
        "negatives": 0 if negatives is None else len(negatives.rows), "score": chosen.score, "threshold": chosen.threshold,
        "max_accuracy_cost": max_cost, "tuning_auroc": chosen.tuning_auroc,
        "tuning": {"validation_known": len(val), "unknown": len(tuning_rows)},
        "types": {t: {"tuning": int(np.sum(unknown.rows.y[tuning_rows] == i)),
                      "report": int(np.sum(unknown.rows.y[report_rows] == i))} for i, t in enumerate(unknown.type_names)},
    }
    test = data.splits.get("test")
    if test is not None and len(test) and len(report_rows):  # measured once, after the choice
        figures["report"] = _report(model, chosen, test, subset(unknown.rows, report_rows), unknown.type_names,
                                    n=n, tta=tta, seed=seed, logits=logits)
    return Rejection(chosen, figures)


def _report(model: Any, chosen: openset.OpenSet, test: SplitData, unknown: SplitData, type_names: list[str], *,
            n: int, tta: bool, seed: int, logits: bool) -> dict:
    """Every score's AUROC and FPR@95 (bootstrap intervals), and the chosen threshold's effect on test."""
    known_out, unknown_out = output_of(model, test, n, tta, logits), output_of(model, unknown, n, tta, logits)
    k_all, u_all = chosen.every_value(known_out), chosen.every_value(unknown_out)
    kept = ~chosen.is_unknown(k_all[chosen.score])
    correct = known_out.proba.argmax(1) == test.y
    accuracy, with_reject = float(correct.mean()), float((correct & kept).mean())
    rejected = chosen.is_unknown(u_all[chosen.score])
    return {
        "n_known": len(test), "n_unknown": len(unknown),
        "scores": {name: openset.evaluate(k_all[name], u_all[name], seed=seed) for name in k_all},
        "known_kept": float(kept.mean()), "unknown_rejected": float(rejected.mean()),
        "accuracy": accuracy, "accuracy_with_reject": with_reject, "accuracy_cost_pp": 100 * (accuracy - with_reject),
        "accuracy_of_kept": float(correct[kept].mean()) if kept.any() else None,
        "per_type": {t: {"n": int(np.sum(unknown.y == i)), "rejected": float(rejected[unknown.y == i].mean()),
                         "auroc": openset.auroc(k_all[chosen.score], u_all[chosen.score][unknown.y == i])}
                     for i, t in enumerate(type_names) if np.any(unknown.y == i)},
    }
