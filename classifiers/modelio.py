"""Model files: the one module that writes and reads a run's directory. Never a pickle.

A run directory holds ``manifest.json`` (classes, backbones, cache fingerprints, chosen settings, library
versions and the sha256 of every other file), the model files, ``metrics.json`` and ``predictions.csv``.
The fitted pipeline is stored without its sampler (SMOTE only acts while fitting) as:

- ``model.skops``: the whole inference pipeline, for heads whose estimator skops stores (trusted types only);
- ``preprocess.skops`` (when there is a scaler) plus the estimator in its own format:
  ``model.lgbm.txt`` (LightGBM's text format) or ``model.keras`` (Keras's format, loaded in safe mode).

Loading checks every sha256 in the manifest first, and that the caches it is used with are the ones it
was fitted on, and refuses with a message naming the file otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.files import file_sha256 as sha256

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SAMPLER_STEPS = ("smote",)


def _dump_skops(obj: Any, path: Path) -> None:
    import skops.io

    skops.io.dump(obj, path)


def _load_skops(path: Path) -> Any:
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    if untrusted:
        raise ClothprobeError(f"{path} contains types that are not trusted ({', '.join(untrusted)}); refusing to load it.")
    return skops.io.load(path)


def _save_estimator(estimator: Any, file_format: str, directory: Path) -> dict:
    """Write the final estimator in its own format; return what loading needs besides the file."""
    if file_format == "lightgbm":
        estimator.booster_.save_model(directory / "model.lgbm.txt")
        return {"file": "model.lgbm.txt"}
    if file_format == "keras":
        estimator.model_.save(directory / "model.keras")
        return {"file": "model.keras"}
    raise ValueError(f"unknown model file format {file_format!r}")


def _load_estimator(file_format: str, directory: Path) -> Callable[[np.ndarray], np.ndarray]:
    if file_format == "lightgbm":
        import lightgbm

        booster = lightgbm.Booster(model_file=str(directory / "model.lgbm.txt"))
        return lambda X: np.asarray(booster.predict(X))
    if file_format == "keras":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras

        model = keras.saving.load_model(directory / "model.keras", compile=False, safe_mode=True)
        return lambda X: np.asarray(model.predict(np.asarray(X, np.float32), batch_size=1024, verbose=0), np.float64)
    raise ClothprobeError(f"{directory / MANIFEST} names an unknown model format {file_format!r}.")


def save_model(pipeline: Any, file_format: str, directory: Path) -> dict:
    """Write the fitted pipeline's model files into ``directory``; return the manifest's ``model`` entry."""
    from sklearn.pipeline import Pipeline

    steps = [(name, step) for name, step in pipeline.steps if name not in SAMPLER_STEPS]
    estimator = steps[-1][1]
    entry: dict[str, Any] = {"format": file_format, "classes": np.asarray(estimator.classes_).tolist()}
    if file_format == "skops":
        _dump_skops(Pipeline(steps), directory / "model.skops")
        entry["file"] = "model.skops"
        return entry
    if len(steps) > 1:
        _dump_skops(Pipeline(steps[:-1]), directory / "preprocess.skops")
        entry["preprocess"] = "preprocess.skops"
    entry.update(_save_estimator(estimator, file_format, directory))
    return entry


def write_run(directory: Path, write_files: Callable[[Path], dict], manifest: dict) -> None:
    """Fill a fresh temporary directory with ``write_files`` and the manifest, then move it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = {**manifest, **write_files(tmp), "format_version": FORMAT_VERSION}
        manifest["sha256"] = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.name != MANIFEST}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ClothprobeError(f"No {MANIFEST} in {directory}; is it a run directory written by cli fit?")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ClothprobeError(f"{path} is not valid JSON ({err}); fit the model again.") from None


def verify(directory: Path, manifest: dict) -> None:
    """Refuse a run whose files are missing or differ from the sha256 values in its manifest."""
    for name, expected in sorted(manifest.get("sha256", {}).items()):
        path = Path(directory) / name
        if not path.is_file():
            raise ClothprobeError(f"{path} is missing (listed in {MANIFEST}); fit the model again.")
        if sha256(path) != expected:
            raise ClothprobeError(
                f"{path} does not match the sha256 in {MANIFEST}: it was changed after fitting. "
                f"Refusing to load it; fit the model again."
            )


@dataclass
class LoadedModel:
    """A run's model read back from its files: ``predict_proba`` over the run's class names."""

    manifest: dict
    _predict: Callable[[np.ndarray], np.ndarray]
    classes_: np.ndarray

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._predict(X)


def load_model(directory: str | Path, fingerprints: dict[str, str] | None = None) -> LoadedModel:
    """Load a run's model after checking hashes and (if given) the caches' fingerprints."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    for backbone, fp in (fingerprints or {}).items():
        fitted_on = manifest.get("caches", {}).get(backbone, {}).get("fingerprint")
        if fitted_on != fp:
            raise ClothprobeError(
                f"The model in {directory} was fitted on a {backbone} cache with fingerprint {fitted_on}, but the "
                f"cache given has {fp} (other weights or settings). Fit again on this cache."
            )
    entry = manifest["model"]
    if entry["format"] == "skops":
        pipeline = _load_skops(directory / entry["file"])
        predict = pipeline.predict_proba
    else:
        estimator = _load_estimator(entry["format"], directory)
        pre = _load_skops(directory / entry["preprocess"]) if "preprocess" in entry else None
        predict = estimator if pre is None else (lambda X: estimator(pre.transform(X)))
    return LoadedModel(manifest, predict, np.asarray(entry["classes"]))
