"""``predict()``: classify new photos with a finished run, embedding them exactly as its caches were made.

A cached-features run's manifest records, for each backbone, the cache it was fitted on and so its
embedding recipe (weights fingerprint, input size, preprocessing, precision, runtime); new photos are
embedded with the same recipe. An end-to-end run records its recipe too: photos are decoded at its size,
preprocessed by it and fed to the saved network. Every file's sha256 is checked against the manifest
before any model is loaded. ``calibrate=True`` applies the temperature fitted at fit time on the
predictions the choice was made on (validation, or out of fold), never on test.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clothprobe.classifiers.select import full_proba
from clothprobe.classifiers.stats import apply_temperature
from clothprobe.errors import ClothprobeError
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS, is_ignored
from clothprobe.rundir import read_manifest, verify


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
    calibrated: bool = False

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


@dataclass
class Embedded:
    """``views[v][k]`` (backbones side by side, in the run's order) belongs to ``files[good[k]]``; ``skipped``
    maps the position of each file that could not be used to the reason."""

    views: dict[str, np.ndarray]
    good: list[int]
    skipped: dict[int, str]


def _embed(files: list[Path], caches: dict[str, dict], tta: bool, batch_size: int, max_pixels: int,
           weights: str | None) -> Embedded:
    """Embed ``files`` with the recipe of each cache a run was fitted on (the one place predict embeds)."""
    from clothprobe.featurize.cache import CacheInfo
    from clothprobe.featurize.embed import embed_files
    from clothprobe.featurize.recipe import reproduce

    parts, skipped = [], {}
    for record in caches.values():
        recipe = reproduce(CacheInfo.from_dict(record).recipe)
        done = embed_files(recipe, files, flip=tta, batch_size=batch_size, max_pixels=max_pixels, weights=weights)
        parts.append(done)
        for i, why in done.skipped.items():
            skipped.setdefault(i, why)
    good = [i for i in range(len(files)) if i not in skipped]
    where = [{g: k for k, g in enumerate(p.good)} for p in parts]
    rows = [[w[i] for i in good] for w in where]  # each good file's row in each backbone's embeddings
    views = {view: np.hstack([p.views[view][r] for p, r in zip(parts, rows)]) if good else np.empty((0, 0))
             for view in (("embeddings", "flip") if tta else ("embeddings",))}
    return Embedded(views, good, skipped)


def _e2e_proba(files: list[Path], recipe_dict: dict, network, batch_size: int,  # noqa: ANN001
               max_pixels: int) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """An end-to-end run: photos decoded at its recipe's size, preprocessed by it, fed to its network."""
    from clothprobe.featurize.embed import decoded_batches
    from clothprobe.featurize.recipe import Recipe, reproduce

    recipe = reproduce(Recipe.from_dict(recipe_dict))
    rows, good, skipped = [], [], {}
    for start, decoded in decoded_batches(files, recipe.input_size, batch_size, max_pixels):
        ok = [k for k, (image, _) in enumerate(decoded) if image is not None]
        skipped.update({start + k: why for k, (image, why) in enumerate(decoded) if image is None})
        if ok:
            x = recipe.preprocess.apply(np.stack([decoded[k][0] for k in ok]))
            rows.append(np.asarray(network.predict(x, batch_size=batch_size, verbose=0), np.float64))
            good += [start + k for k in ok]
    proba = np.vstack(rows) if rows else np.zeros((0, 1))
    return proba / proba.sum(1, keepdims=True) if rows else proba, good, skipped


class Predictor:
    """A finished run opened for predictions: every file checked against its manifest, the model loaded once.

    Reused by ``predict()`` and by the scikit-learn estimator (``clothprobe.load_run``)."""

    def __init__(self, run_dir: str | Path, *, weights: str | None = None, batch_size: int = 16,
                 max_pixels: int = DEFAULT_MAX_PIXELS, calibrate: bool = False) -> None:
        from clothprobe.classifiers.modelio import load_e2e_model, load_model

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ClothprobeError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}.")
        self.run_dir, self.weights, self.batch_size, self.max_pixels = Path(run_dir), weights, batch_size, max_pixels
        self.manifest = read_manifest(self.run_dir)
        verify(self.run_dir, self.manifest)  # before anything is loaded
        self.temperature = None
        if calibrate:
            if self.manifest.calibration is None:
                raise ClothprobeError(f"{self.run_dir} records no calibration temperature; fit it again to use "
                                      f"--calibrate.")
            self.temperature = self.manifest.calibration.temperature
        if self.manifest.kind == "end-to-end":
            self.model, self.network = None, load_e2e_model(self.run_dir)[1]
        else:
            self.model, self.network = load_model(self.run_dir), None

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    def proba(self, files: list[Path]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        """Probabilities over the run's classes for the files that could be used, their positions, and why
        the others could not."""
        n = len(self.classes)
        if self.network is not None:
            proba, good, skipped = _e2e_proba(files, self.manifest.recipe or {}, self.network, self.batch_size,
                                              self.max_pixels)
        else:
            done = _embed(files, self.manifest.caches, self.manifest.tta, self.batch_size, self.max_pixels,
                          self.weights)
            good, skipped = done.good, done.skipped
            proba = full_proba(self.model, done.views["embeddings"], n) if good else np.zeros((0, n))
            if good and self.manifest.tta:
                proba = (proba + full_proba(self.model, done.views["flip"], n)) / 2
        if self.temperature is not None and len(proba):
            proba = apply_temperature(proba, self.temperature)
        return proba, good, skipped

    def predict(self, images: Sequence[str | Path]) -> PredictResult:
        started = time.perf_counter()
        files = list_images(images)
        proba, good, skipped = self.proba(files)
        model_seconds = time.perf_counter() - started
        predictions = [Prediction(str(files[i]), dict(zip(self.classes, map(float, row)))) for i, row in zip(good, proba)]
        return PredictResult(run=self.manifest.id, classes=self.classes, predictions=predictions,
                             skipped=[(str(files[i]), why) for i, why in sorted(skipped.items())],
                             model_seconds=model_seconds, seconds=time.perf_counter() - started,
                             calibrated=self.temperature is not None)


def predict(
    images: Sequence[str | Path],
    model_dir: str | Path,
    weights: str | None = None,
    batch_size: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    calibrate: bool = False,
) -> PredictResult:
    """Class probabilities for each image; files that cannot be decoded are skipped and reported."""
    started = time.perf_counter()
    result = Predictor(model_dir, weights=weights, batch_size=batch_size, max_pixels=max_pixels,
                       calibrate=calibrate).predict(images)
    result.seconds = time.perf_counter() - started
    return result


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
