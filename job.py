"""``run_all()``: the main job in one call, featurize -> fit -> report, reusing each stage as it is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe.classifiers import FitResult, fit
from clothprobe.classifiers.data import parse_backbones
from clothprobe.classifiers.fitting import plan_fit
from clothprobe.classifiers.registry import get_classifier
from clothprobe.classifiers.select import DEFAULT_SELECT
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import FeaturizeResult, featurize
from clothprobe.featurize.model.backbones import RUN_BACKBONES
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.taps import DEFAULT_TAPS
from clothprobe.featurize.table import LabelsTable, open_dataset
from clothprobe.report import Report, build_report
from clothprobe.report.folder import ReportFolder


@dataclass
class JobResult:
    featurized: list[FeaturizeResult] = field(default_factory=list)
    fits: list[FitResult] = field(default_factory=list)
    report: Report | None = None


def feature_sets(backbones: Sequence[str]) -> list[str]:
    """Each backbone alone, and all of them joined when there are several (``vgg16+xception``)."""
    return [*backbones, "+".join(backbones)] if len(backbones) > 1 else list(backbones)


def run_all(
    data: str | Path,
    backbones: str = RUN_BACKBONES,
    weights: str = "imagenet",
    clf: str = "all",
    balance: str = "all",
    tta: bool = True,
    seed: int = 0,
    select: str = DEFAULT_SELECT,
    taps: str = DEFAULT_TAPS,
    precision: str = "auto",
    features_dir: str | Path = "features",
    models_dir: str | Path = "models",
    reports_dir: str | Path = "reports",
    progress: bool = False,
    on_featurized: Callable[[FeaturizeResult], None] | None = None,
    on_fit: Callable[[FitResult], None] | None = None,
    labels: LabelsTable | None = None,
) -> JobResult:
    """Featurize ``data`` with each backbone (comma-separated) in ``precision``, caching ``taps``, fit ``clf`` x
    ``balance`` on each cache and on their join (each head with its ``run_taps``: logistic regression chooses
    its tap set like every other setting, ``fit --taps auto``; the slower heads take the final tap), and write
    the report over every run under ``models_dir``. ``labels``: the photos, classes and splits come from this
    labels table, ``data`` being its image folder. Every option is checked before any featurizing."""
    specs = [part.strip() for part in backbones.split(",") if part.strip()]  # as featurize takes them (onnx:PATH)
    names = parse_backbones("+".join(specs))  # as the caches record them
    plan = plan_fit("+".join(names), clf, balance, select=select)
    head_taps = {head: get_classifier(head).run_taps for head in plan.clfs}  # the job's tap request per head
    open_dataset(data, labels)  # the folder's layout or the table, before an hour of featurizing
    for spec in specs:  # each backbone's weights found (and hashed) now, not after the first is featurized
        resolve_recipe(spec, weights=weights, seed=seed, taps=taps, precision=precision)
    for folder, what in ((models_dir, "--models-dir"), (reports_dir, "--reports-dir"), (features_dir, "--features-dir")):
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ClothprobeError(f"{what} {folder} exists and is not a folder.")
    # a user's own index.html, or a reports dir inside the dataset: refused now, not at the end
    ReportFolder.plan(reports_dir, dict.fromkeys(["index.html", "report.md"], b""), (data,))
    job = JobResult()
    for spec in specs:
        result = featurize(data, backbone=spec, weights=weights, features_dir=features_dir, tta=tta, seed=seed,
                           taps=taps, precision=precision, progress=progress, labels=labels)
        job.featurized.append(result)
        if on_featurized:
            on_featurized(result)
    dataset = Path(data).expanduser().resolve().name
    for backbone in feature_sets(names):
        job.fits += fit(dataset, backbone=backbone, clf=clf, balance=balance, tta=tta, seed=seed, select=select,
                        taps=head_taps, features_dir=features_dir, models_dir=models_dir, on_result=on_fit,
                        data_dir=data)
    job.report = build_report(models_dir, reports_dir)
    return job
