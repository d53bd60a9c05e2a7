"""The second stage of an export: the run's head over the rows the backbone gives (``head_features``, float32),
its probabilities over the estimator's classes out (``head_proba``, float64) and, for a linear head, its logits
(``head_logits``, float64: what ``decision_function`` gives, ``[0, z]`` for two classes, as the open-set
energy reads them).

One converter per model kind (``classifiers.modelio.ModelParts``), as data in ``CONVERTERS``:

- ``linear``: the scaler and the logistic regression as ONNX ops in float64, as ``modelio`` computes them;
- ``lightgbm``: the booster through onnxmltools (``convert_lightgbm``), its scikit-learn scaler (if any)
  through skl2onnx;
- ``keras`` (the dense head): the Keras model through Keras's own ONNX export, its scaler through skl2onnx;
- ``keras-e2e``: the end-to-end network already gave probabilities (``export/backbone.py``): passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from clothprobe.export.graph import HEAD_IN, HEAD_LOGITS, HEAD_PROBA, ML_OPSET, OPSET, Graph, join, normalized, tensor

if TYPE_CHECKING:
    from clothprobe.classifiers.modelio import ModelParts

ESTIMATED = "head_estimated"  # the estimator's own probabilities, before the cast to float64
SCALED = "head_scaled"  # the rows after the scikit-learn steps before the estimator


def head_stage(parts: ModelParts, width: int) -> Any:
    """The head of ``parts`` over ``width``-column rows, as an ONNX model (see the module docstring)."""
    return CONVERTERS[parts.kind](parts, width)


def has_logits(parts: ModelParts) -> bool:
    """Whether the stage gives ``head_logits`` (the heads whose saved model keeps a ``decision_function``)."""
    return parts.kind == "linear"


def _linear(parts: ModelParts, width: int) -> Any:
    from onnx import TensorProto

    a = parts.linear or {}
    g = Graph("head/")
    x = g.op("Cast", HEAD_IN, to=TensorProto.DOUBLE)
    if "mean" in a:
        x = g.op("Div", g.op("Sub", x, g.const(a["mean"], np.float64)), g.const(a["scale"], np.float64))
    z = g.op("Add", g.op("MatMul", x, g.const(np.asarray(a["coef"]).T, np.float64)),
             g.const(a["intercept"], np.float64))
    if len(a["coef"]) == 1:  # two classes: the logistic of one score
        p = g.op("Sigmoid", z)
        g.output(g.op("Concat", g.op("Sub", g.const([[1.0]], np.float64), p), p, axis=1), HEAD_PROBA)
        g.output(g.op("Concat", g.op("Mul", z, g.const([[0.0]], np.float64)), z, axis=1), HEAD_LOGITS)
    else:
        g.output(g.op("Softmax", z, axis=1), HEAD_PROBA)
        g.output(z, HEAD_LOGITS)
    rows = len(a["coef"]) if len(a["coef"]) > 1 else 2
    return g.model([tensor(HEAD_IN, TensorProto.FLOAT, ["rows", width])],
                   [tensor(HEAD_PROBA, TensorProto.DOUBLE, ["rows", rows]),
                    tensor(HEAD_LOGITS, TensorProto.DOUBLE, ["rows", rows])])


def _with_scaler(parts: ModelParts, width: int, estimator: Callable[[str], Any]) -> Any:
    """``preprocess`` (skl2onnx) then ``estimator(input name)`` (an ONNX model giving ``ESTIMATED``), then the
    cast to float64."""
    from onnx import TensorProto

    model = estimator(SCALED if parts.preprocess is not None else HEAD_IN)
    if parts.preprocess is not None:
        model = join(_sklearn(parts.preprocess, width), model, [(SCALED, SCALED)])
    g = Graph("head/cast/")
    g.op_named("Cast", [ESTIMATED], HEAD_PROBA, to=TensorProto.DOUBLE)
    cast = g.model([tensor(ESTIMATED, TensorProto.FLOAT, ["rows", "k"])],
                   [tensor(HEAD_PROBA, TensorProto.DOUBLE, ["rows", "k"])])
    return join(model, cast, [(ESTIMATED, ESTIMATED)])


def _sklearn(pipeline: Any, width: int) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(pipeline, initial_types=[(HEAD_IN, FloatTensorType([None, width]))],
                            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    (output,) = model.graph.output
    return normalized(model, "head/scaler/", {output.name: SCALED})


def _lightgbm(parts: ModelParts, width: int) -> Any:
    def booster(name: str) -> Any:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = convert_lightgbm(parts.estimator, initial_types=[(name, FloatTensorType([None, width]))],
                                 target_opset=OPSET, zipmap=False)
        proba = next(o.name for o in model.graph.output if o.type.tensor_type.elem_type == 1)  # float: not the label
        return normalized(model, "head/lightgbm/", {proba: ESTIMATED})

    return _with_scaler(parts, width, booster)


def _keras(parts: ModelParts, width: int) -> Any:
    def network(name: str) -> Any:
        import tensorflow as tf

        from clothprobe.export.backbone import keras_to_onnx

        parts.estimator(np.zeros((1, width), np.float32))
        model = keras_to_onnx(parts.estimator, tf.TensorSpec((None, width), tf.float32, name=name))
        (output,) = model.graph.output
        return normalized(model, "head/keras/", {output.name: ESTIMATED})

    return _with_scaler(parts, width, network)


def _passed_on(parts: ModelParts, width: int) -> Any:
    from onnx import TensorProto

    g = Graph("head/")
    g.op_named("Cast", [HEAD_IN], HEAD_PROBA, to=TensorProto.DOUBLE)
    return g.model([tensor(HEAD_IN, TensorProto.FLOAT, ["rows", width])],
                   [tensor(HEAD_PROBA, TensorProto.DOUBLE, ["rows", width])])


CONVERTERS: dict[str, Callable[[ModelParts, int], Any]] = {
    "linear": _linear,
    "lightgbm": _lightgbm,
    "keras": _keras,
    "keras-e2e": _passed_on,
}
