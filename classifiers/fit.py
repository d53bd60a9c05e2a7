"""``fit()``: train heads on cached embeddings, choose settings on validation data, score test once, save."""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.classifiers.data import FeatureSet, load_feature_set
from clothprobe.classifiers.metrics import classification_metrics
from clothprobe.classifiers.modelio import save_model, write_run
from clothprobe.classifiers.registry import BALANCES, CLASSIFIERS, check_balance, check_loss, get_classifier
from clothprobe.classifiers.select import predict_split, select
from clothprobe.errors import ClothprobeError


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict

    @property
    def name(self) -> str:
        return self.metrics["run"]


def versions() -> dict[str, str]:
    import imblearn
    import lightgbm
    import sklearn
    import skops

    from clothprobe import __version__

    return {"clothprobe": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "imbalanced-learn": imblearn.__version__,
            "lightgbm": lightgbm.__version__, "skops": skops.__version__}


def run_name(clf: str, balance: str, tta: bool, loss: str) -> str:
    return f"{clf}-{balance}" + ("-tta" if tta else "") + ("-focal" if loss == "focal" else "")


def _expand(value: str, choices: list[str] | tuple[str, ...], check) -> list[str]:  # noqa: ANN001
    return list(choices) if value == "all" else [check(value)]


def fit(
    dataset: str,
    backbone: str = "xception",
    clf: str = "logreg",
    balance: str = "weights",
    tta: bool = False,
    loss: str = "categorical",
    seed: int = 0,
    features_dir: str | Path = "features",
    models_dir: str | Path = "models",
    out: str | Path | None = None,
    on_result=None,  # noqa: ANN001 - called with each FitResult as it finishes
) -> list[FitResult]:
    """Fit ``clf`` (or ``all``) with ``balance`` (or ``all``) on the caches of ``backbone`` (``a+b`` joins)."""
    clfs = _expand(clf, list(CLASSIFIERS), lambda c: get_classifier(c).name)
    balances = _expand(balance, BALANCES, check_balance)
    check_loss(loss)
    if loss == "focal" and "dense" not in clfs:
        raise ClothprobeError("--loss focal applies to the dense head only; use --clf dense (or all).")
    if out is not None and len(clfs) * len(balances) > 1:
        raise ClothprobeError("--out names one run directory; give one --clf and one --balance with it.")
    data = load_feature_set(backbone, dataset, features_dir)
    if "train" not in data.splits:
        raise ClothprobeError(f"The caches of {data.name} have no train split; featurize a folder with train/.")
    if tta and not data.has_flip:
        raise ClothprobeError(
            f"--tta needs the flipped view, which the {data.name} cache lacks; make it with: "
            f"cli featurize --backbone {data.backbones[0]} --data DIR/{dataset} --tta flip"
        )
    results = []
    for name in clfs:
        for bal in balances:
            run_loss = loss if name == "dense" else "categorical"
            run_dir = Path(out) if out else Path(models_dir) / dataset / data.name / run_name(name, bal, tta, run_loss)
            result = fit_one(data, dataset, name, bal, tta, run_loss, seed, run_dir)
            if on_result:
                on_result(result)
            results.append(result)
    return results


def fit_one(data: FeatureSet, dataset: str, clf: str, balance: str, tta: bool, loss: str, seed: int,
            run_dir: Path) -> FitResult:
    spec = get_classifier(clf)
    n_classes = len(data.class_names)
    started = time.perf_counter()
    selection = select(spec, data, balance, seed, tta, loss)
    fit_seconds = time.perf_counter() - started
    metrics: dict = {
        "run": run_name(clf, balance, tta, loss), "dataset": dataset, "backbone": data.name, "classifier": clf,
        "balance": balance, "tta": tta, "loss": loss, "seed": seed, "kind": "cached-features",
        "selection": selection.mode, "params": selection.params, "chosen": selection.chosen,
        "candidates": [vars(c) for c in selection.candidates], "fit_seconds": fit_seconds,
        "featurize_seconds": _featurize_seconds(data),
        "train_counts": dict(zip(data.class_names, np.bincount(data.splits["train"].y, minlength=n_classes).tolist())),
    }
    val = data.splits.get("validation")
    metrics["validation"] = (classification_metrics(val.y, predict_split(selection.model, val, n_classes, tta),
                                                    data.class_names) if val is not None and len(val) else None)
    test = data.splits.get("test")
    test_proba = None
    if test is not None and len(test):  # touched once, after the choice
        started = time.perf_counter()
        test_proba = predict_split(selection.model, test, n_classes, tta)
        metrics["predict_seconds"] = time.perf_counter() - started
        metrics["test"] = classification_metrics(test.y, test_proba, data.class_names)
    else:
        metrics["test"] = None

    def write_files(directory: Path) -> dict:
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if test_proba is not None:
            write_predictions(directory / "predictions.csv", test.paths, test.y, test_proba, data.class_names)
        return {"model": save_model(selection.model, spec.file_format, directory)}

    manifest = {
        "run": metrics["run"], "dataset": dataset, "classes": data.class_names, "backbones": data.backbones,
        "caches": data.caches, "classifier": clf, "balance": balance, "tta": tta, "loss": loss, "seed": seed,
        "params": selection.params, "chosen": selection.chosen, "versions": versions(),
    }
    write_run(run_dir, write_files, manifest)
    return FitResult(run_dir, metrics)


def _featurize_seconds(data: FeatureSet) -> float | None:
    """Model time to embed the whole dataset with every backbone used, when the caches recorded it."""
    seconds = [c["featurize_seconds"] for c in data.caches.values()]
    return None if None in seconds else float(sum(seconds))


def write_predictions(path: Path, paths: np.ndarray, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in classes)])
        for p, t, row in zip(paths, y, proba):
            writer.writerow([p, classes[t], classes[int(row.argmax())], *(f"{v:.6f}" for v in row)])
