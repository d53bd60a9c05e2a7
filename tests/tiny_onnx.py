"""Exported-model files for the serving tests, made here with onnx.helper: they follow the export contract
(``export/contract.py``: input, outputs, metadata written by ``ExportedModel.to_metadata``) around a tiny graph,
uint8 images -> mean colour -> MatMul -> Softmax, so an image's answer is its dominant colour. With ``openset``,
the open-set score is the top probability and the threshold a constant: a grey photo is "none of these"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clothprobe.export.contract import INPUT, OPENSET_SCORE, OPENSET_THRESHOLD, PROBABILITIES, ExportedModel

COLOURS = {"red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255)}
GREY = (128, 128, 128)


def info(size: int = 16, openset: float | None = 0.6, classes: tuple[str, ...] = tuple(COLOURS)) -> ExportedModel:
    return ExportedModel(classes=classes, input_size=size, precision="float32", run="colours/tiny/logreg",
                         recipe_fingerprint="0123456789abcdef", clothprobe_version="0.1.0", validation_accuracy=0.9,
                         test_accuracy=0.875,
                         openset=None if openset is None else {"score": "msp", "threshold": openset})


def make_model(path: Path, *, size: int = 16, openset: float | None = 0.6, sharpness: float = 12.0,
               metadata: dict[str, str] | None = None, batch: int | str = "n") -> Path:
    """A contract-conforming file at ``path``; ``metadata`` replaces the contract's when given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    described = info(size, openset)
    weights = sharpness * np.eye(3, len(described.classes), dtype=np.float32)
    nodes = [helper.make_node("Cast", [INPUT], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Div", ["mean", "full"], ["colour"]),
             helper.make_node("MatMul", ["colour", "weights"], ["logits"]),
             helper.make_node("Softmax", ["logits"], [PROBABILITIES], axis=1)]
    outputs = [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, [batch, len(described.classes)])]
    initializers = [numpy_helper.from_array(weights, "weights"),
                    numpy_helper.from_array(np.array(255.0, np.float32), "full")]
    if openset is not None:
        nodes += [helper.make_node("ReduceMax", [PROBABILITIES], [OPENSET_SCORE], axes=[1], keepdims=0),
                  helper.make_node("Identity", ["threshold"], [OPENSET_THRESHOLD])]
        initializers.append(numpy_helper.from_array(np.array(openset, np.float32), "threshold"))
        outputs += [helper.make_tensor_value_info(OPENSET_SCORE, TensorProto.FLOAT, [batch]),
                    helper.make_tensor_value_info(OPENSET_THRESHOLD, TensorProto.FLOAT, [])]
    graph = helper.make_graph(nodes, "colours",
                              [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, [batch, size, size, 3])],
                              outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="clothprobe-tests")
    model.ir_version = 8
    onnx.helper.set_model_props(model, metadata if metadata is not None else described.to_metadata())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
