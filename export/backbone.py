"""The first stage of an export: a batch of RGB uint8 images in, the rows the run's head reads out.

It is the run's own network (``featurize.model.runtimes.keras_model``: weights found and checked as featurize
finds them) wrapped in Keras so that the file does what ``featurize.embed`` does around it: the cast to float,
the recipe's preprocessing (scale, mean, std, BGR), the mirrored view stacked under the original when the run
uses TTA and the pooling of a feature map; Keras 3 turns it into ONNX (``Model.export(format="onnx")``, through
tf2onnx). Then, in ONNX ops, exactly the tap columns the run was fitted on (``RunEmbedding.columns``) and the
float16 rounding of every tap but the final one (``featurize.model.taps.round_taps``: the head was fitted on
rounded values).

The output, ``features``, holds the original view's rows first, then the mirrored view's (``2n`` rows with TTA).
An end-to-end run's network is wrapped the same way, without views, taps or pooling: its output is its
probabilities.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe.export.contract import INPUT
from clothprobe.export.graph import FEATURES, OPSET

NETWORK = "network"  # the network's pooled taps, every one the cache holds, before the run's columns

if TYPE_CHECKING:
    from clothprobe.featurize.model.backbones import Preprocess
    from clothprobe.featurize.model.recipe import Recipe
    from clothprobe.runs.predicting import RunEmbedding


def rounded_columns(recipe: Recipe, columns: np.ndarray | None) -> np.ndarray:
    """For each column the run uses, whether ``round_taps`` rounds it to float16 (every tap but the final one)."""
    from clothprobe.featurize.model.taps import FINAL_DTYPE, tap_dtype, tap_widths

    if not recipe.taps:
        return np.zeros(0 if columns is None else len(columns), bool)
    mask = np.concatenate([np.full(width, tap_dtype(recipe, name) != FINAL_DTYPE) for name, width in tap_widths(recipe)])
    return mask if columns is None else mask[columns]


def backbone_stage(how: RunEmbedding, tta: bool, weights: Any = None) -> Any:
    """The stage for a cached-features run embedding with ``how`` (an ``onnx.ModelProto``)."""
    from clothprobe.export.graph import join
    from clothprobe.featurize.model.runtimes import keras_model

    recipe = how.recipe
    wrapper = _wrapper(keras_model(recipe, weights), recipe.preprocess, views=2 if tta else 1, layout=recipe.layout,
                       pooling=recipe.pooling)
    network = _to_onnx(wrapper, recipe.input_size, NETWORK)
    width = network.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return join(network, _taps(width, how.columns, rounded_columns(recipe, how.columns)), [(NETWORK, NETWORK)])


def _taps(width: int, columns: np.ndarray | None, rounded: np.ndarray) -> Any:
    """``NETWORK`` (every tap, pooled) -> ``features``: the run's columns, rounded as ``round_taps`` rounds them.
    In ONNX ops, not Keras: TensorFlow's graph optimizer removes a float32 -> float16 -> float32 round trip."""
    from onnx import TensorProto

    from clothprobe.export.graph import Graph, tensor

    g = Graph("taps/")
    x = NETWORK if columns is None else g.op("Gather", NETWORK, g.const(np.asarray(columns, np.int64)), axis=1)
    if rounded.any():
        half = g.op("Cast", g.op("Cast", x, to=TensorProto.FLOAT16), to=TensorProto.FLOAT)
        x = g.op("Where", g.const(rounded, bool), half, x)
    g.output(x, FEATURES)
    used = width if columns is None else len(columns)
    return g.model([tensor(NETWORK, TensorProto.FLOAT, ["rows", width])],
                   [tensor(FEATURES, TensorProto.FLOAT, ["rows", used])])


def e2e_stage(recipe: Recipe, network: Any) -> Any:
    """The stage for an end-to-end run: its whole network, its probabilities as ``features``."""
    return _to_onnx(_wrapper(network, recipe.preprocess, views=1, layout="NHWC", pooling="none"), recipe.input_size,
                    FEATURES)


def _preprocess(x: Any, how: Preprocess) -> Any:
    """``Preprocess.apply`` in Keras ops (float32, channels last)."""
    from keras import ops

    if how.in_model:
        return x
    if how.channel_order == "BGR":
        x = ops.flip(x, axis=3)
    x = x * np.float32(how.scale) - np.asarray(how.mean, np.float32)
    if how.std != (1.0, 1.0, 1.0):
        x = x / np.asarray(how.std, np.float32)
    return x


def _wrapper(network: Any, preprocess: Preprocess, *, views: int, layout: str, pooling: str) -> Any:
    """``network`` as a Keras model from uint8 images to one vector per view of each image (see the module
    docstring)."""
    import keras
    from keras import ops

    class Embed(keras.Model):
        def call(self, images: Any) -> Any:
            x = ops.cast(images, "float32")
            if views == 2:
                x = ops.concatenate([x, ops.flip(x, axis=2)], axis=0)
            x = _preprocess(x, preprocess)
            if layout == "NCHW":
                x = ops.transpose(x, (0, 3, 1, 2))
            out = ops.cast(network(x, training=False), "float32")
            if len(out.shape) == 4 and pooling != "none":
                reduce = ops.max if pooling == "max" else ops.mean
                out = reduce(out, axis=(1, 2) if layout == "NHWC" else (2, 3))
            return out

    return Embed()


def _to_onnx(wrapper: Any, size: int, output: str) -> Any:
    """The Keras model as ONNX (input ``images`` uint8 ``(n, size, size, 3)``, one output named ``output``)."""
    import tensorflow as tf

    from clothprobe.errors import ClothprobeError
    from clothprobe.export.graph import normalized

    out = wrapper(np.zeros((1, size, size, 3), np.uint8))  # Keras exports a model that has been called
    if len(out.shape) != 2:
        raise ClothprobeError(f"The network gives an output of shape {tuple(out.shape)[1:]} per image; an export "
                              f"needs one vector per image (set pooling avg or max in its sidecar).")
    model = keras_to_onnx(wrapper, tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT))
    (given,) = model.graph.output
    return normalized(model, "backbone/", {given.name: output})


def keras_to_onnx(model: Any, signature: Any) -> Any:
    """A Keras model that has been called, as an ``onnx.ModelProto`` with one input (``signature``, a
    ``tf.TensorSpec`` whose name becomes the input's), through Keras's ONNX export."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="clothprobe-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras's tf2onnx patch for NumPy 2 (np.object)
        path = Path(tmp) / "model.onnx"
        model.export(str(path), format="onnx", verbose=False, opset_version=OPSET, input_signature=[signature])
        return onnx.load(str(path))
