"""``fit()``: train heads on cached embeddings, choose settings without the test split, score test once, save."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from clothprobe._util.bounds import check_options
from clothprobe.classifiers.data import FeatureSet, load_feature_set, parse_backbones
from clothprobe.classifiers.metrics import classification_metrics
from clothprobe.classifiers.modelio import save_model
from clothprobe.classifiers.openset import MAX_ACCURACY_COST
from clothprobe.classifiers.openset import save as save_openset
from clothprobe.classifiers.registry import (
    BALANCES,
    CLASSIFIERS,
    ClassifierSpec,
    check_balance,
    check_loss,
    get_classifier,
)
from clothprobe.classifiers.rejection import RejectRequest, fit_rejection, load_unknown
from clothprobe.classifiers.search import Run, TapSearch, search_runs
from clothprobe.classifiers.select import DEFAULT_SELECT, Held, check_select, predict_split
from clothprobe.classifiers.stats import apply_temperature, expected_calibration_error, fit_temperature
from clothprobe.classifiers.taps import DEFAULT_FIT_TAPS, check_taps, restrict, tap_candidates
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.catalog import default_backbone, resolve_dataset
from clothprobe.featurize.dataset import check_every_class_trains
from clothprobe.featurize.model.backbones import DEFAULT_BACKBONE
from clothprobe.runs.directory import (
    Calibration,
    Manifest,
    Metrics,
    Predictions,
    RunKind,
    RunRecord,
    SplitMetrics,
    cached_run_name,
    check_target,
    run_path,
    write_run,
)


@dataclass
class FitResult:
    run_dir: Path
    metrics: Metrics

    @property
    def name(self) -> str:
        return self.metrics.run


@dataclass(frozen=True)
class FitPlan:
    """Every option of a fit, checked before any work: the heads and balance modes to fit, and each head's
    tap request."""

    clfs: list[str]
    balances: list[str]
    loss: str
    select: str
    taps: dict[str, str]

    def runs(self) -> list[tuple[str, str, str]]:
        """(classifier, balance, loss) of each run; the loss only applies to the dense head."""
        return [(c, b, self.loss if c == "dense" else "categorical") for c in self.clfs for b in self.balances]


def plan_fit(backbone: str | None = DEFAULT_BACKBONE, clf: str = "logreg", balance: str = "weights", loss: str = "categorical",
             select: str = DEFAULT_SELECT, out: str | Path | None = None, taps: str | Mapping[str, str] = DEFAULT_FIT_TAPS,
             unknown: str | Path | None = None, negatives: str | Path | None = None,
             unknown_cost: float = 100 * MAX_ACCURACY_COST) -> FitPlan:
    """Check every option (before featurizing or loading anything) and expand ``all``. ``taps``: one request
    for every head, or one per head (``{head: request}``). ``backbone`` None: chosen once the dataset is known
    (``fit``)."""
    if backbone is not None:
        parse_backbones(backbone)
    check_options(unknown_cost=unknown_cost)
    if unknown is not None and select != "validation":
        raise ClothprobeError(f"--unknown needs --select validation (given: {select}): the reject threshold is set "
                              f"on validation photos the model was not fitted on.")
    if negatives is not None and (unknown is None or Path(negatives).resolve() == Path(unknown).resolve()):
        raise ClothprobeError("--negatives DIR is used with --unknown OTHER_DIR: the negatives shape the scores, the "
                              "unknown photos choose and measure them, so they must be different photos.")
    clfs = list(CLASSIFIERS) if clf == "all" else [get_classifier(clf).name]
    balances = list(BALANCES) if balance == "all" else [check_balance(balance)]
    check_loss(loss)
    check_select(select)
    if loss == "focal" and "dense" not in clfs:
        raise ClothprobeError("--loss focal applies to the dense head only; use --clf dense (or all).")
    if out is not None:
        if len(clfs) * len(balances) > 1:
            raise ClothprobeError("--out names one run directory; give one --clf and one --balance with it.")
        check_target(out)
    return FitPlan(clfs, balances, loss, select, _head_taps(taps, clfs))


def _head_taps(taps: str | Mapping[str, str], clfs: list[str]) -> dict[str, str]:
    """Each head's checked tap request: ``taps`` for all of them, or the mapping's entry for each."""
    if isinstance(taps, str):
        return {c: check_taps(taps) for c in clfs}
    missing = [c for c in clfs if c not in taps]
    if missing:
        raise ClothprobeError(f"The tap requests name no request for {', '.join(missing)}; give one per head "
                              f"({', '.join(clfs)}) or one for all.")
    return {c: check_taps(taps[c]) for c in clfs}


def versions() -> dict[str, str]:
    import imblearn
    import lightgbm
    import sklearn
    import skops

    from clothprobe import __version__

    return {"clothprobe": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__,
            "lightgbm": lightgbm.__version__, "skops": skops.__version__}


def fit(
    dataset: str | None = None,
    backbone: str | None = None,
    clf: str = "logreg",
    balance: str = "weights",
    tta: bool = False,
    loss: str = "categorical",
    seed: int = 0,
    select: str = DEFAULT_SELECT,
    features_dir: str | Path = "features",
    models_dir: str | Path = "models",
    out: str | Path | None = None,
    on_result=None,  # noqa: ANN001 - called with each FitResult as it finishes
    taps: str | Mapping[str, str] = DEFAULT_FIT_TAPS,
    unknown: str | Path | None = None,
    negatives: str | Path | None = None,
    unknown_cost: float = 100 * MAX_ACCURACY_COST,
    data_dir: str | Path | None = None,
) -> list[FitResult]:
    """Fit ``clf`` (or ``all``) with ``balance`` (or ``all``) on the caches of ``backbone`` (``a+b`` joins) of
    ``dataset`` (None: the only dataset featurized under ``features_dir``; ``backbone`` None: its only cache, or
    the default backbone's where it has several). ``data_dir``: the dataset's folder, whose photos the caches must
    hold (``featurize/cache/identity.py``). ``select``: ``validation`` or ``cv`` (see ``classifiers/select.py``).
    ``taps``: which cached taps, ``auto`` chosen like the other settings (see ``classifiers/taps.py``), or
    ``{head: request}`` for each head. ``unknown``: a folder of photos outside the classes, featurized here like
    the dataset; each run gets a reject option (``classifiers/rejection.py``); ``negatives``: a folder of other
    garments its distance scores contrast with; ``unknown_cost``: the percentage points of validation accuracy the
    reject threshold may cost."""
    plan = plan_fit(backbone, clf, balance, loss, select, out, taps, unknown, negatives, unknown_cost)
    dataset = resolve_dataset(features_dir, dataset)
    backbone = backbone or default_backbone(features_dir, dataset)
    joined = "+".join(parse_backbones(backbone))
    run_dirs = [run_path(models_dir, dataset, joined, cached_run_name(name, bal, tta, run_loss), out)
                for name, bal, run_loss in plan.runs()]
    for run_dir in run_dirs:  # every folder is ours to write, before any fitting
        check_target(run_dir)
    data = load_feature_set(backbone, dataset, features_dir, data_dir)
    _check_data(data, tta)
    for request in sorted(set(plan.taps.values())):  # a tap no cache holds: one line, before any fitting
        tap_candidates(data, request)
    reject = None if unknown is None else RejectRequest(
        load_unknown(unknown, features_dir, data, tta),
        None if negatives is None else load_unknown(negatives, features_dir, data, False), unknown_cost / 100)
    jobs = [(name, bal, run_loss, run_dir) for (name, bal, run_loss), run_dir in zip(plan.runs(), run_dirs)]
    results = []
    for result in _fitted(data, jobs, tta, seed, plan.select, taps=plan.taps, reject=reject):
        if on_result:
            on_result(result)
        results.append(result)
    return results


def _fitted(data: FeatureSet, jobs: list[tuple[str, str, str, Path]], tta: bool, seed: int, select_mode: str, *,
            taps: dict[str, str], reject: RejectRequest | None) -> Iterator[FitResult]:
    """Each job's FitResult, in order. The runs of one head are searched together (``classifiers/search.py``:
    work shared between balance modes, fits side by side), then each is finished and written."""
    for clf, group in groupby(jobs, key=lambda job: job[0]):
        group = list(group)
        spec = get_classifier(clf)
        searches = search_runs(spec, data, [Run(bal, run_loss) for _, bal, run_loss, _ in group], tta=tta, seed=seed,
                               mode=select_mode, taps=taps[clf])
        subsets: dict[str, FeatureSet] = {}  # the kept tap sets' columns, while this head's runs are written
        for (_, bal, run_loss, run_dir), found in zip(group, searches):
            subset = subsets.setdefault(found.choice.name, restrict(data, found.choice))
            yield finish_run(subset, spec, found, bal, tta, run_loss, seed, run_dir, reject=reject)


def _check_data(data: FeatureSet, tta: bool) -> None:
    train = data.splits.get("train")
    if train is None or not len(train):
        raise ClothprobeError(f"The caches of {data.name} have no training images; featurize a folder with train/.")
    present = sorted({data.class_names[i] for i in np.unique(train.y)})
    if len(present) < 2:
        raise ClothprobeError(f"The {data.dataset} training split has images of {len(present)} class(es) "
                              f"({', '.join(present) or 'none'}); a classifier needs at least 2 classes.")
    check_every_class_trains(data.class_names, train.y, f"The {data.dataset} training split ({data.name} cache)")
    if tta and not data.has_flip:
        raise ClothprobeError(
            f"--tta needs the flipped view, which the {data.name} cache lacks; make it with: "
            f"cli featurize --backbone {data.backbones[0]} --data DIR/{data.dataset} --tta flip"
        )


def calibrate(held: Held, test_y: np.ndarray | None, test_proba: np.ndarray | None) -> tuple[Calibration, float | None]:
    """A temperature fitted on the predictions the choice rested on (never test), and the test ECE after it."""
    temperature = fit_temperature(held.calibration_y, held.calibration_proba)
    fitted_on = "validation split" if held.source == "validation split" else "out-of-fold predictions"
    after = None if test_proba is None else expected_calibration_error(test_y, apply_temperature(test_proba, temperature))
    return Calibration(temperature, fitted_on, int(len(held.calibration_y))), after


def finish_run(data: FeatureSet, spec: ClassifierSpec, found: TapSearch, balance: str, tta: bool, loss: str,
               seed: int, run_dir: Path, *, reject: RejectRequest | None = None) -> FitResult:
    """A searched run (``data``: the columns of its kept tap set): the reject option when asked for, test scored
    once, the temperature fitted on the selection data, and the run directory written."""
    clf, n_classes = spec.name, len(data.class_names)
    selection, tap_record, fit_seconds = found.selection, found.record, found.seconds
    asked = None if reject is None else reject.restricted(data, tta)
    rejection = None if asked is None else fit_rejection(selection.model, data, asked.unknown, tta=tta, seed=seed,
                                                         negatives=asked.negatives, max_cost=asked.max_cost,
                                                         logits=spec.file_format == "linear")
    held = selection.held
    validation = classification_metrics(held.y, held.proba, data.class_names, seed, held.source)
    test = data.splits.get("test")
    test_metrics: SplitMetrics | None = None
    predictions, predict_seconds, test_proba = None, None, None
    if test is not None and len(test):  # touched once, after the choice
        t = time.perf_counter()
        test_proba = predict_split(selection.model, test, n_classes, tta)
        predict_seconds = time.perf_counter() - t
        test_metrics = classification_metrics(test.y, test_proba, data.class_names, seed, "test split")
        predictions = Predictions(list(test.paths), [data.class_names[i] for i in test.y], test_proba,
                                  data.class_names)
    calibration, calibrated_ece = calibrate(held, None if test is None else test.y, test_proba)
    record = RunRecord(
        run=cached_run_name(clf, balance, tta, loss), dataset=data.dataset, kind=RunKind.CACHED_FEATURES,
        classifier=clf, balance=balance, tta=tta, loss=loss, seed=seed, params=selection.params,
        chosen=selection.chosen, calibration=calibration,
    )
    metrics = Metrics(
        **record.shared(), backbone=data.name, selection=selection.mode, selection_n=len(held.y),
        candidates=[vars(c) for c in selection.candidates],
        fit_seconds=fit_seconds, featurize_seconds=data.featurize_seconds, predict_seconds=predict_seconds,
        train_counts=dict(zip(data.class_names, np.bincount(data.splits["train"].y, minlength=n_classes).tolist())),
        validation=validation, test=test_metrics, calibrated_test_ece=calibrated_ece, taps=tap_record,
        openset=None if rejection is None else rejection.figures,
    )
    manifest = Manifest(
        **record.shared(), classes=data.class_names, backbones=data.backbones, versions=versions(),
        caches=data.caches, data_root=data.data_root,
    )

    def save(directory: Path) -> dict:
        if rejection is not None:
            manifest.openset = save_openset(rejection.openset, directory)
        return save_model(selection.model, spec.file_format, directory)

    write_run(run_dir, manifest, metrics, predictions, save)
    return FitResult(run_dir, metrics)
