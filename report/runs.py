"""Finished runs read back from a models directory, and the reference notebooks' reported figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clothprobe.errors import ClothprobeError


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
    """One finished run: its directory, ``metrics.json`` and ``manifest.json``."""

    directory: Path
    metrics: dict
    manifest: dict

    @property
    def id(self) -> str:
        return f"{self.metrics.get('backbone', '?')}/{self.metrics['run']}"

    @property
    def kind(self) -> str:
        return self.metrics.get("kind", "cached-features")

    def score(self, split: str, key: str = "accuracy") -> float | None:
        block = self.metrics.get(split)
        return None if not block else block.get(key)

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy; with no validation split, the cross-validated score the choice was made on."""
        value = self.score("validation")
        if value is None and self.metrics.get("candidates"):
            value = max(c["accuracy"] for c in self.metrics["candidates"])
        return value

    @property
    def total_seconds(self) -> float | None:
        fit_s, feat_s = self.metrics.get("fit_seconds"), self.metrics.get("featurize_seconds")
        if self.kind != "cached-features":
            return fit_s
        return None if fit_s is None or feat_s is None else fit_s + feat_s


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ClothprobeError(f"Cannot read {path} ({err}); fit that run again or delete its directory.") from None


def collect_runs(models_dir: str | Path) -> list[Run]:
    """Every finished run under ``models_dir``, best validation accuracy first (ties: by id).

    Sorting on validation is the honest order: test accuracy is shown, never used to rank.
    """
    models_dir = Path(models_dir)
    runs = []
    for metrics_path in sorted(models_dir.rglob("metrics.json")):
        directory = metrics_path.parent
        if directory.name.startswith(".") or not (directory / "manifest.json").is_file():
            continue  # a run being written (temporary directory) or not finished
        runs.append(Run(directory, _read_json(metrics_path), _read_json(directory / "manifest.json")))
    if not runs:
        raise ClothprobeError(
            f"Nothing to report: no finished runs (metrics.json + manifest.json) under {models_dir}. "
            f"Make some with: cli fit --data DIR --clf all"
        )
    return sorted(runs, key=lambda r: (-(r.val_accuracy if r.val_accuracy is not None else -1.0), r.id))
