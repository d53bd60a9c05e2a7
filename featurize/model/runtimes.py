"""How a recipe's network becomes the files the store keeps, and how those files run.

Export (once per recipe, into the store; needs TensorFlow only for Keras sources):
- OpenVINO: a float IR with a dynamic batch axis. Keras models go through a TF SavedModel read by
  ``openvino.Core.read_model``, ONNX files are read directly; clothprobe never calls OpenVINO's conversion
  tool (``ov.convert_model``), which sends usage telemetry by default.
- int8: NNCF post-training quantization of that float IR, calibrated on the recipe's photos.
- Keras: the network saved as a ``.keras`` file.

Load (every run; an OpenVINO entry loads without importing TensorFlow): a ``Runner`` maps a float32 batch
of a fixed size to the network's output.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.model.recipe import Recipe

Runner = Callable[[np.ndarray], np.ndarray]
OV_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}  # int8: the layers left in float run f32
IR_FILE = "model.xml"
KERAS_FILE = "model.keras"


# ---------------------------------------------------------------------------------------------------
# The network, from its source


def random_init(model: Any, seed: int) -> None:
    """Seeded random weights from a local generator (He-normal kernels, unit scales, zero shifts), so a
    ``weights=None`` model is reproducible without touching any global seed. Non-trainable constants
    (in-model normalisation) are kept; batch-norm statistics become mean 0, variance 1."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape, name = tuple(var.shape), var.path.rsplit("/", 1)[-1]
        if name == "moving_variance":
            value = np.ones(shape)
        elif name == "moving_mean" or (var.trainable and len(shape) <= 1 and name != "gamma"):
            value = np.zeros(shape)
        elif var.trainable and len(shape) <= 1:
            value = np.ones(shape)
        elif var.trainable:
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        else:
            continue
        var.assign(value.astype(var.dtype))


def _weights_file(recipe: Recipe, weights: Any) -> str | None:
    """The weights file of a keras.applications recipe, checked against the recipe's hash."""
    from clothprobe.featurize.model.backbones import get_backbone
    from clothprobe.featurize.model.weights import resolve_weights

    if recipe.random_init_seed is not None:
        return None
    bb = get_backbone(recipe.backbone)
    if weights is None and recipe.model_path and Path(recipe.model_path).is_file():
        weights = recipe.model_path
    resolved = resolve_weights(bb, weights or "imagenet")
    if resolved.sha256 != recipe.weights_sha256:
        raise ClothprobeError(
            f"The {bb.name} weights found ({resolved.source}) have sha256 {resolved.sha256[:16]}..., but these "
            f"embeddings need weights with sha256 {recipe.weights_sha256[:16]}.... Point --weights at the file "
            f"that was used for cli featurize."
        )
    return str(resolved.path)


def _model_file(recipe: Recipe) -> Path:
    from clothprobe._util.files import file_sha256

    path = Path(recipe.model_path)
    if not path.is_file():
        raise ClothprobeError(f"The model file of {recipe.backbone} is not at {path} any more; put it back, or "
                              f"featurize again with --backbone {recipe.backbone.split(':')[0]}:NEW_PATH.")
    if file_sha256(path) != recipe.weights_sha256:
        raise ClothprobeError(f"{path} has changed since these embeddings were made (its SHA-256 differs); "
                              f"featurize again with it.")
    return path


def keras_model(recipe: Recipe, weights: Any = None) -> Any:
    """The recipe's network as a Keras model whose output is the tensor to embed (imports TensorFlow)."""
    import keras

    from clothprobe.featurize.model.backbones import get_backbone

    if recipe.source == "keras-applications":
        path = _weights_file(recipe, weights)
        try:
            model = get_backbone(recipe.backbone).build(path, recipe.input_size)
        except (ValueError, OSError) as err:
            raise ClothprobeError(f"Cannot load weights {path} into backbone '{recipe.backbone}': {err}. "
                                  f"Is it a no-top {recipe.backbone} weights file?") from None
        if path is None:
            random_init(model, recipe.random_init_seed or 0)
        return _with_taps(model, recipe)
    path = _model_file(recipe)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, TypeError, OSError... for a file it will not load
        raise ClothprobeError(f"Cannot load {path} as a Keras model in safe mode ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:300]}). Lambda layers and pickled code are refused.") from None
    if recipe.output:
        try:
            model = keras.Model(model.inputs, model.get_layer(recipe.output).output)
        except ValueError:
            names = ", ".join(layer.name for layer in model.layers[-8:])
            raise ClothprobeError(f"{path} has no layer {recipe.output!r} (its last layers: {names}); fix "
                                  f"`output` in its sidecar.") from None
    return model


def _with_taps(model: Any, recipe: Recipe) -> Any:
    """The network computing ``recipe.taps`` in one pass (featurize/model/taps.py), or ``model`` itself."""
    if not recipe.taps:
        return model
    from clothprobe.featurize.model.taps import backbone_taps, tap_model

    offered = {t.name: t for t in backbone_taps(recipe)}
    return tap_model(model, [offered[name] for name in recipe.taps])


def openvino_model(recipe: Recipe, weights: Any = None) -> Any:
    """The recipe's network as a float OpenVINO model with a dynamic batch axis."""
    import openvino as ov

    core = ov.Core()
    if recipe.source == "onnx":
        model = _select_output(core.read_model(_onnx_file(recipe)), recipe)
    else:
        with tempfile.TemporaryDirectory(prefix="clothprobe-export-") as tmp:
            keras_model(recipe, weights).export(f"{tmp}/saved_model", format="tf_saved_model", verbose=False)
            model = core.read_model(f"{tmp}/saved_model")
    shape = [-1, recipe.input_size, recipe.input_size, 3] if recipe.layout == "NHWC" else [-1, 3, recipe.input_size, recipe.input_size]
    if len(model.inputs) != 1:
        raise ClothprobeError(f"{recipe.backbone} has {len(model.inputs)} inputs; clothprobe feeds one image tensor.")
    try:
        model.reshape(shape)
    except RuntimeError as err:
        raise ClothprobeError(f"{recipe.backbone} does not take {recipe.layout} input of {shape[1:]} "
                              f"({str(err).splitlines()[0][:200]}); check input_size and layout in its sidecar.") from None
    return model


def _onnx_file(recipe: Recipe) -> str:
    """The recipe's ONNX file, refused in one line when OpenVINO's ONNX reader does not take it (empty,
    garbage): left to ``read_model``, every other reader tries it and prints its own errors first."""
    from openvino.frontend import FrontEndManager

    path = _model_file(recipe)
    if not FrontEndManager().load_by_framework("onnx").supported(str(path)):
        raise ClothprobeError(f"{path} is not an ONNX model that OpenVINO can read (empty or another format); "
                              f"export the network to ONNX again.")
    return path


def _select_output(model: Any, recipe: Recipe) -> Any:
    """The ONNX model cut at the sidecar's ``output`` (an output or any intermediate tensor name)."""
    import openvino as ov

    if not recipe.output:
        if len(model.outputs) != 1:
            names = [o.any_name for o in model.outputs]
            raise ClothprobeError(f"{recipe.backbone} has {len(names)} outputs ({', '.join(names)}); name one as "
                                  f"`output` in its sidecar.")
        return model
    for op in model.get_ordered_ops():
        for out in op.outputs():
            if recipe.output in out.get_names():
                return ov.Model([out], model.get_parameters(), "clothprobe-embedding")
    raise ClothprobeError(f"{recipe.backbone} has no tensor named {recipe.output!r} (outputs: "
                          f"{', '.join(o.any_name for o in model.outputs)}); fix `output` in its sidecar.")


# ---------------------------------------------------------------------------------------------------
# Store entries


def export_float(recipe: Recipe, directory: Path, weights: Any = None) -> None:
    """Write the float model the store keeps for ``recipe`` into ``directory``."""
    if recipe.runtime == "keras":
        _export_keras(recipe, directory, weights)
        return
    import openvino as ov

    ov.save_model(openvino_model(recipe, weights), directory / IR_FILE, compress_to_fp16=False)


def _export_keras(recipe: Recipe, directory: Path, weights: Any) -> None:
    import keras

    previous = keras.config.dtype_policy()
    if recipe.precision == "bfloat16":  # Keras has no per-call policy: set it for this build only
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras_model(recipe, weights)
    finally:
        keras.config.set_dtype_policy(previous)
    model.trainable = False
    model.save(directory / KERAS_FILE)


@contextlib.contextmanager
def _nncf_telemetry_off() -> Iterator[None]:
    """NNCF sends usage events by default; not for clothprobe's calls (restored afterwards)."""
    from nncf.telemetry import decorator
    from nncf.telemetry.wrapper import NNCFTelemetryStub

    saved = decorator.telemetry
    decorator.telemetry = NNCFTelemetryStub()
    try:
        yield
    finally:
        decorator.telemetry = saved


@contextlib.contextmanager
def _nncf_progress() -> Iterator[None]:
    """NNCF's progress bars and INFO lines are progress: on stderr when it is a terminal, else nowhere (a log
    file or a pipe would keep every redraw). Only for this call: stdout and NNCF's log level are restored."""
    import logging

    logger = logging.getLogger("nncf")
    level = logger.level
    quiet = not sys.stderr.isatty()
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr if not quiet else io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def nncf_quiet() -> Iterator[None]:
    """An NNCF call of clothprobe's: no telemetry, progress only on a terminal (``cli export`` quantizes too)."""
    with _nncf_telemetry_off(), _nncf_progress():
        yield


class CalibrationSet:
    """The calibration photos as model inputs (``prepare`` of a one-image batch), one image per item, decoded
    again on every pass (NNCF iterates more than once), so memory holds one image, not hundreds. ``usable``: how
    many decode; none at all is an error, before any quantization. ``cli featurize`` and ``cli export`` both
    calibrate on it."""

    def __init__(self, files: Sequence[Path], prepare: Callable[[np.ndarray], Any], size: int) -> None:
        self.files, self.prepare, self.size = list(files), prepare, size
        self.usable = sum(1 for _ in self)
        if self.usable == 0:
            raise ClothprobeError(f"None of the {len(self.files)} calibration photos could be decoded; int8 needs "
                                  f"photos like the ones the model will see (--calibration DIR).")

    def __iter__(self) -> Iterator[Any]:
        from clothprobe.featurize.embed import decoded_batches

        for _, batch in decoded_batches(self.files, self.size, 8):
            for image, _ in batch:
                if image is not None:
                    yield self.prepare(image[None])


def quantize_int8(recipe: Recipe, float_ir: Path, directory: Path, calibration: Sequence[Path],
                  prepare: Callable[[np.ndarray], np.ndarray]) -> None:
    """NNCF post-training quantization of the float IR, calibrated on ``calibration`` photos."""
    import openvino as ov

    from clothprobe._util.extras import require

    nncf = require("nncf", "int8", "--precision int8 (NNCF post-training quantization)")
    data = CalibrationSet(calibration, prepare, recipe.input_size)
    with nncf_quiet():
        quantized = nncf.quantize(ov.Core().read_model(float_ir), nncf.Dataset(data), subset_size=data.usable,
                                  fast_bias_correction=True)
    ov.save_model(quantized, directory / IR_FILE, compress_to_fp16=False)


def load_runner(recipe: Recipe, files: Callable[[str], Path], rows: int, cache_dir: Path | None = None,
                threads: int | None = None) -> Runner:
    """The stored model compiled for batches of exactly ``rows`` (one shape: compiled once, and an
    image's embedding does not depend on its batch neighbours)."""
    if recipe.runtime == "keras":
        return _keras_runner(files(KERAS_FILE), recipe, rows)
    import openvino as ov

    core = ov.Core()
    model = core.read_model(files(IR_FILE))
    model.reshape([rows, *list(model.inputs[0].get_partial_shape())[1:]])
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_HINTS[recipe.precision]}
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer([x])[0], dtype=np.float32)


def _keras_runner(path: Path, recipe: Recipe, rows: int) -> Runner:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    shape = (rows, recipe.input_size, recipe.input_size, 3) if recipe.layout == "NHWC" else (rows, 3, recipe.input_size, recipe.input_size)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=True)
    def forward(x):  # noqa: ANN001, ANN202
        return tf.cast(model(x, training=False), tf.float32)

    return lambda x: forward(x).numpy()
