"""``predict()``: classify new photos with a finished run, embedding them exactly as its caches were made.

The run's manifest says which backbone(s), weights fingerprint, input size, precision and runtime made
the embeddings it was fitted on; the same are used here, and weights whose sha256 differs are refused.
The model is loaded only after every file's sha256 matches the manifest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clothprobe.classifiers.modelio import load_model, read_manifest
from clothprobe.classifiers.select import full_proba
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.backbones import get_backbone
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, is_ignored
from clothprobe.featurize.weights import resolve_weights

RANDOM_INIT = "random-init-seed-"  # the weights fingerprint featurize records for weights=None


@dataclass
class Prediction:
    path: str
    probabilities: dict[str, float]  # every class, in the run's class order

    def top(self, k: int) -> list[tuple[str, float]]:
        ranked = sorted(self.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:k]


@dataclass
class PredictResult:
    run: str
    classes: list[str]
    predictions: list[Prediction]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    model_seconds: float = 0.0  # building the backbone(s) and embedding
    seconds: float = 0.0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / len(self.predictions) if self.predictions else 0.0


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every non-hidden file under a folder (sorted); each file once."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and not any(is_ignored(part) for part in p.relative_to(path).parts))
        elif path.is_file():
            files.append(path)
        else:
            raise ClothprobeError(f"{path} does not exist; give image files or folders of images.")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise ClothprobeError(f"No files found in {', '.join(map(str, inputs))}.")
    return unique


def _weights_for(cache: dict, backbone: str, weights: str | None) -> tuple[Path | None, int]:
    """The weights file the run's cache was made with (checked by sha256), and the seed for random ones."""
    expected = cache["config"]["weights_sha256"]
    if expected.startswith(RANDOM_INIT):
        return None, int(expected[len(RANDOM_INIT):])
    resolved = resolve_weights(get_backbone(backbone), weights or "imagenet")
    if resolved.sha256 != expected:
        raise ClothprobeError(
            f"The {backbone} weights found ({resolved.source}) have sha256 {resolved.sha256[:16]}..., but the run "
            f"was fitted on embeddings from weights with sha256 {expected[:16]}.... Point --weights at the file "
            f"that was used for cli featurize."
        )
    return resolved.path, 0


def predict(
    images: Sequence[str | Path],
    model_dir: str | Path,
    weights: str | None = None,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PredictResult:
    """Class probabilities for each image; files that cannot be decoded are skipped and reported."""
    from clothprobe.featurize.embed import Embedder

    started = time.perf_counter()
    if read_manifest(Path(model_dir)).get("kind") == "end-to-end":
        raise ClothprobeError(f"{model_dir} is an end-to-end run (cli e2e); cli predict takes runs from cli fit.")
    model = load_model(model_dir)  # checks every sha256 first
    manifest = model.manifest
    classes = list(manifest["classes"])
    files = list_images(images)
    tta = bool(manifest.get("tta"))
    views: dict[str, list[np.ndarray]] = {"embeddings": [], "flip": []}
    skipped: dict[int, str] = {}
    model_started = time.perf_counter()
    for backbone in manifest["backbones"]:
        cache = manifest["caches"][backbone]
        weights_path, seed = _weights_for(cache, backbone, weights)
        config = cache["config"]
        embedder = Embedder(get_backbone(backbone), weights_path, config["precision"], config["input_size"],
                            min(batch_size, len(files)), tta, seed, config["runtime"])
        rows: dict[str, dict[int, np.ndarray]] = {v: {} for v in embedder.view_names}
        for batch in embedder.run(files, max_pixels):
            skipped.update(batch.skipped)
            for view, array in batch.views.items():
                rows[view].update(zip(batch.indices, array))
        for view, by_index in rows.items():
            views[view].append(by_index)
    model_seconds = time.perf_counter() - model_started
    good = [i for i in range(len(files)) if i not in skipped]
    predictions = []
    if good:
        X = np.hstack([np.stack([part[i] for i in good]) for part in views["embeddings"]])
        proba = full_proba(model, X, len(classes))
        if tta:
            X_flip = np.hstack([np.stack([part[i] for i in good]) for part in views["flip"]])
            proba = (proba + full_proba(model, X_flip, len(classes))) / 2
        predictions = [Prediction(str(files[i]), dict(zip(classes, map(float, row)))) for i, row in zip(good, proba)]
    return PredictResult(
        run=f"{'+'.join(manifest['backbones'])}/{manifest['run']}",
        classes=classes,
        predictions=predictions,
        skipped=[(str(files[i]), why) for i, why in sorted(skipped.items())],
        model_seconds=model_seconds,
        seconds=time.perf_counter() - started,
    )


def to_records(result: PredictResult, top_k: int) -> list[dict]:
    """One JSON-ready record per image: the top-k classes and every class's probability."""
    return [{"path": p.path, "top": [{"class": c, "probability": round(v, 6)} for c, v in p.top(top_k)],
             "probabilities": {c: round(v, 6) for c, v in p.probabilities.items()}} for p in result.predictions]


def write_csv(result: PredictResult, fh, top_k: int) -> None:  # noqa: ANN001 - a text file
    import csv

    writer = csv.writer(fh)
    writer.writerow(["path", *(f"top{k}{s}" for k in range(1, top_k + 1) for s in ("", "_p")),
                     *(f"p_{c}" for c in result.classes)])
    for p in result.predictions:
        top = [x for c, v in p.top(top_k) for x in (c, f"{v:.6f}")]
        writer.writerow([p.path, *top, *(f"{p.probabilities[c]:.6f}" for c in result.classes)])

