"""Model files: the one module that writes and reads a run's model (the manifest's ``model`` entry).
Never a pickle. The run directory around them is ``clothprobe/runs/directory.py``'s.

The fitted pipeline is stored without its sampler (SMOTE only acts while fitting) as:

- ``model.npz`` (format ``linear``): a standard scaler and a logistic regression as their numbers (numpy's
  npz, read with ``allow_pickle=False``). Predicting needs numpy only: no scikit-learn import, which alone
  takes longer than the rest of a warm ``cli predict`` (bench/featurize.py);
- ``preprocess.skops`` (when there is a scaler; skops, trusted types only) plus the estimator in its own
  format: ``model.lgbm.txt`` (LightGBM's text format) or ``model.keras`` (Keras's format, safe mode);
- ``model.skops``: the whole pipeline, as runs of format ``skops`` (clothprobe before ``linear``) hold it;
- an end-to-end run's whole network as ``model.keras`` (format ``keras-e2e``).

Loading checks every sha256 in the manifest first, and that the caches it is used with are the ones it
was fitted on, and refuses with one message naming the file otherwise: a file that is not what its
format says (a pickle, a Keras model with a Lambda layer, a damaged LightGBM file, LightGBM trees whose indices
lead out of range, ``lgbmtext.py``) or whose classes are not the manifest's is refused before it is used.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.classifiers import lgbmtext
from clothprobe.classifiers.proba import softmax
from clothprobe.errors import ClothprobeError
from clothprobe.runs.directory import Manifest, read_manifest, verify

SAMPLER_STEPS = ("smote",)
LINEAR_FILE = "model.npz"
LINEAR_MAX_BYTES = 1 << 28  # 10 classes x 2,560 dims is 0.2 MB
LGBM_PROBE_TIMEOUT_S = 120
# LightGBM aborts the whole process (C++ terminate, exit 134) on some malformed trees; a child reads the file first
_LGBM_PROBE = """
import sys
import numpy as np
import lightgbm
booster = lightgbm.Booster(model_file=sys.argv[1])
booster.predict(np.zeros((1, booster.num_feature())))
"""


def _dump_skops(obj: Any, path: Path) -> None:
    import skops.io

    skops.io.dump(obj, path)


def _load_skops(path: Path) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
        if not untrusted:
            return skops.io.load(path)
    except Exception as err:  # noqa: BLE001 - any failure to read an untrusted file is a refusal
        raise ClothprobeError(f"{path} is not a readable skops file ({type(err).__name__}); refusing to load it. "
                              f"Fit the model again.") from None
    raise ClothprobeError(f"{path} contains types that are not trusted ({', '.join(untrusted)}); refusing to load it.")


def _save_linear(steps: list[tuple[str, Any]], directory: Path) -> dict:
    """A (scaler +) logistic regression as the numbers its ``predict_proba`` uses."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    *pre, (_, clf) = steps
    if not isinstance(clf, LogisticRegression) or len(pre) > 1 or any(not isinstance(s, StandardScaler) for _, s in pre):
        raise ValueError(f"the linear format stores a StandardScaler + LogisticRegression, not {[n for n, _ in steps]}")
    arrays = {"coef": clf.coef_, "intercept": clf.intercept_}
    if pre:
        arrays.update(mean=pre[0][1].mean_, scale=pre[0][1].scale_)
    np.savez(directory / LINEAR_FILE, **arrays)
    return {"file": LINEAR_FILE}


def _linear_logits(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray | None = None,
                   scale: np.ndarray | None = None) -> np.ndarray:
    """What scikit-learn's ``decision_function`` computes (a column per row of ``coef``)."""
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[1] != coef.shape[1]:
        raise ClothprobeError(f"The model expects {coef.shape[1]}-d embeddings, got an array of shape {X.shape}.")
    if mean is not None:
        X = (X - mean) / scale
    return X @ coef.T + intercept


def _linear_proba(X: np.ndarray, **arrays: np.ndarray) -> np.ndarray:
    """What scikit-learn's ``predict_proba`` computes: softmax of the scores (the logistic for two classes)."""
    z = _linear_logits(X, **arrays)
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1 - p, p])
    return softmax(z)


def _linear_shapes_ok(arrays: dict[str, np.ndarray], rows: int) -> bool:
    if set(arrays) not in ({"coef", "intercept"}, {"coef", "intercept", "mean", "scale"}):
        return False
    coef = arrays["coef"]
    if coef.ndim != 2:
        return False
    dims = coef.shape[1]
    return (coef.shape[0] == rows and arrays["intercept"].shape == (rows,)
            and all(arrays[k].shape == (dims,) for k in ("mean", "scale") if k in arrays))


def _read_linear(path: Path, n_classes: int) -> dict[str, np.ndarray]:
    """The arrays of a linear head of ``n_classes`` classes, checked (a refusal for anything else)."""
    try:
        with zipfile.ZipFile(path) as z:  # a bound before numpy allocates: a crafted file may claim any size
            if sum(info.file_size for info in z.infolist()) > LINEAR_MAX_BYTES:
                raise ValueError("larger than any linear head")
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: np.asarray(f[name], np.float64) for name in f.files}
    except Exception as err:  # noqa: BLE001 - any failure to read an untrusted file is a refusal
        raise ClothprobeError(f"{path} is not a readable linear model ({type(err).__name__}: {str(err)[:200]}); "
                              f"refusing to load it. Fit the model again.") from None
    if not _linear_shapes_ok(arrays, rows=1 if n_classes == 2 else n_classes):
        raise ClothprobeError(f"{path} is not a linear model of this run's {n_classes} classes (arrays: "
                              f"{ {k: v.shape for k, v in arrays.items()} }); refusing to load it. Fit the model again.")
    return arrays


def _load_linear(path: Path, n_classes: int) -> tuple[Callable[[np.ndarray], np.ndarray], Callable]:
    arrays = _read_linear(path, n_classes)
    return (lambda X: _linear_proba(X, **arrays)), (lambda X: _linear_logits(X, **arrays)[:, 0] if n_classes == 2
                                                    else _linear_logits(X, **arrays))


def _lgbm_probe(path: Path) -> None:
    """Read and use the model in a child process first: a file LightGBM cannot read ends there, not here."""
    try:
        done = subprocess.run([sys.executable, "-c", _LGBM_PROBE, str(path)], check=False, capture_output=True,
                              text=True, timeout=LGBM_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ClothprobeError(f"{path}: LightGBM did not finish reading it in {LGBM_PROBE_TIMEOUT_S} s; refusing "
                              f"it. Fit the model again.") from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if "[Fatal]" in line or "Error" in line]
        why = said[0].strip()[:200] if said else f"the reader stopped with exit code {done.returncode}"
        raise ClothprobeError(f"{path} is not a readable LightGBM model ({why}); refusing it. Fit the model again.")


def load_keras(path: Path):  # noqa: ANN201 - a keras.Model
    """A ``.keras`` file in safe mode (no Lambda layers or other code); any failure is one clear error."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - any failure to read an untrusted file is a refusal
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ClothprobeError(f"Cannot load {path} as a safe Keras model ({reason}); refusing it. "
                              f"Fit the model again.") from None


def _with_outputs(model: Any, n_classes: int, path: Path) -> Any:
    """``model``, once its one output is known to hold a probability per class of the run (its manifest's)."""
    shapes = [tuple(out.shape) for out in model.outputs]
    if len(shapes) != 1 or shapes[0][-1:] != (n_classes,):
        raise ClothprobeError(f"{path} outputs {shapes}, not one probability per class of this run's {n_classes}; "
                              f"refusing it. Fit the model again.")
    return model


def _save_estimator(estimator: Any, file_format: str, directory: Path) -> dict:
    """Write the final estimator in its own format; return what loading needs besides the file."""
    if file_format == "lightgbm":
        estimator.booster_.save_model(directory / "model.lgbm.txt")
        return {"file": "model.lgbm.txt"}
    if file_format == "keras":
        estimator.model_.save(directory / "model.keras")
        return {"file": "model.keras"}
    raise ValueError(f"unknown model file format {file_format!r}")


def _binary_columns(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p]) if p.ndim == 1 else p


def _load_estimator(file_format: str, directory: Path, manifest: Manifest,
                    n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    if file_format == "lightgbm":
        booster = _read_estimator(file_format, directory, manifest, n_classes)
        return lambda X: _binary_columns(np.asarray(booster.predict(X)))
    if file_format == "keras":
        from clothprobe.classifiers.dense import keras_proba

        model = _read_estimator(file_format, directory, manifest, n_classes)
        return lambda X: keras_proba(model, X)
    raise ClothprobeError(f"{directory / 'manifest.json'} names an unknown model format {file_format!r}.")


def _read_estimator(file_format: str, directory: Path, manifest: Manifest, n_classes: int) -> Any:
    """The final estimator in its own format, checked: a ``lightgbm.Booster`` or a ``keras.Model``."""
    if file_format == "keras":
        path = _run_file(directory, manifest, "model.keras")
        return _with_outputs(load_keras(path), n_classes, path)
    import lightgbm

    path = _run_file(directory, manifest, "model.lgbm.txt")
    lgbmtext.check(path, n_classes)  # its header and every tree, before LightGBM reads a byte
    _lgbm_probe(path)
    try:
        return lightgbm.Booster(model_file=str(path))
    except lightgbm.basic.LightGBMError as err:
        raise ClothprobeError(f"{path} is not a readable LightGBM model ({str(err)[:200]}); refusing it. "
                              f"Fit the model again.") from None


def save_model(pipeline: Any, file_format: str, directory: Path) -> dict:
    """Write the fitted pipeline's model files into ``directory``; return the manifest's ``model`` entry."""
    from sklearn.pipeline import Pipeline

    steps = [(name, step) for name, step in pipeline.steps if name not in SAMPLER_STEPS]
    estimator = steps[-1][1]
    entry: dict[str, Any] = {"format": file_format, "classes": np.asarray(estimator.classes_).tolist()}
    if file_format == "linear":
        return {**entry, **_save_linear(steps, directory)}
    if len(steps) > 1:
        _dump_skops(Pipeline(steps[:-1]), directory / "preprocess.skops")
        entry["preprocess"] = "preprocess.skops"
    entry.update(_save_estimator(estimator, file_format, directory))
    return entry


def save_e2e_model(model: Any, directory: Path) -> dict:
    """An end-to-end network (base + head) as one ``.keras`` file; return the manifest's model entry."""
    model.save(directory / "model.keras")
    return {"format": "keras-e2e", "file": "model.keras"}


def load_e2e_model(directory: str | Path) -> tuple[Manifest, Any]:
    """An end-to-end run's manifest and network, after checking every sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    if manifest.model.get("format") != "keras-e2e":
        raise ClothprobeError(f"{directory} is not an end-to-end run (its model format is "
                              f"{manifest.model.get('format')!r}).")
    path = _run_file(directory, manifest, manifest.model.get("file", "model.keras"))
    return manifest, _with_outputs(load_keras(path), len(manifest.classes), path)


def _run_file(directory: Path, manifest: Manifest, name: object) -> Path:
    """A file the model entry names: one of the run's own hash-checked files (``verify`` ran), never a path
    leading elsewhere."""
    if not isinstance(name, str) or name not in manifest.sha256:
        raise ClothprobeError(f"{directory / 'manifest.json'}: the model entry names {name!r}, which is not one of "
                              f"the run's hash-checked files; refusing to load it. Fit the model again.")
    return directory / name


@dataclass
class LoadedModel:
    """A run's model read back from its files: ``predict_proba`` over the run's class indices."""

    manifest: Manifest
    _predict: Callable[[np.ndarray], np.ndarray]
    classes_: np.ndarray
    decision_function: Callable[[np.ndarray], np.ndarray] | None = None  # the logits, for a linear head

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._predict(X)


def load_model(directory: str | Path, fingerprints: dict[str, str] | None = None) -> LoadedModel:
    """Load a run's model after checking hashes and (if given) the caches' fingerprints."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    for backbone, fp in (fingerprints or {}).items():
        fitted_on = manifest.caches.get(backbone, {}).get("fingerprint")
        if fitted_on != fp:
            raise ClothprobeError(
                f"The model in {directory} was fitted on a {backbone} cache with fingerprint {fitted_on}, but the "
                f"cache given has {fp} (other weights or settings). Fit again on this cache."
            )
    entry = manifest.model
    try:
        file_format, classes = entry["format"], np.asarray(entry["classes"])
    except KeyError as err:
        raise ClothprobeError(f"{directory / 'manifest.json'}: the model entry lacks {err}; fit again.") from None
    if classes.tolist() != list(range(len(manifest.classes))):  # the head's outputs are the manifest's classes
        raise ClothprobeError(f"{directory / 'manifest.json'}: the model's classes {classes.tolist()!r} are not the "
                              f"{len(manifest.classes)} classes the manifest names ({', '.join(manifest.classes)}); "
                              f"refusing the run. Fit it again.")
    logits = None
    if file_format == "linear":
        predict, logits = _load_linear(_run_file(directory, manifest, entry.get("file")), len(classes))
    elif file_format == "skops":
        predict = _load_skops(_run_file(directory, manifest, entry.get("file"))).predict_proba
    else:
        estimator = _load_estimator(file_format, directory, manifest, len(classes))
        pre = _load_skops(_run_file(directory, manifest, entry["preprocess"])) if "preprocess" in entry else None
        predict = estimator if pre is None else (lambda X: estimator(pre.transform(X)))
    return LoadedModel(manifest, predict, classes, logits)


@dataclass
class ModelParts:
    """A run's model as the objects an exporter converts (``clothprobe/export``). ``kind``: ``linear`` (``linear``
    holds ``coef``, ``intercept`` and, with a scaler, ``mean`` and ``scale``, as ``decision_function`` uses
    them), ``lightgbm`` (``estimator``: a ``lightgbm.Booster``), ``keras`` (``estimator``: the head's
    ``keras.Model``) or ``keras-e2e`` (``estimator``: the whole network). ``preprocess``: the scikit-learn steps
    before the estimator, or None. ``classes``: the class indices of the estimator's columns."""

    kind: str
    classes: np.ndarray
    linear: dict[str, np.ndarray] | None = None
    estimator: Any = None
    preprocess: Any = None


def model_parts(directory: str | Path) -> ModelParts:
    """A run's model read back for export after checking every sha256; a run saved in the old ``skops`` format
    (the whole pipeline in one file) is refused with what to do."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify(directory, manifest)
    entry = manifest.model
    file_format = entry.get("format")
    if file_format == "keras-e2e":
        return ModelParts(file_format, np.arange(len(manifest.classes)),
                          estimator=load_keras(_run_file(directory, manifest, entry.get("file", "model.keras"))))
    classes = np.asarray(entry.get("classes", []))
    if file_format == "linear":
        return ModelParts(file_format, classes, linear=_read_linear(_run_file(directory, manifest, entry.get("file")),
                                                                    len(classes)))
    if file_format not in ("lightgbm", "keras"):
        raise ClothprobeError(f"{directory} keeps its model in the {file_format!r} format, which cannot be exported; "
                              f"fit it again with this clothprobe and export that run.")
    pre = _load_skops(_run_file(directory, manifest, entry["preprocess"])) if "preprocess" in entry else None
    return ModelParts(file_format, classes, estimator=_read_estimator(file_format, directory, manifest, len(classes)),
                      preprocess=pre)
