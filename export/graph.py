"""Building ONNX graphs by hand, and joining the stages of an export into one model.

An export is three stages, each an ONNX model with named inputs and outputs (the interface names below): the
backbone (``images`` -> ``features``: ``export/backbone.py``), the head (``HEAD_IN`` -> ``HEAD_PROBA`` and,
for a linear head, ``HEAD_LOGITS``: ``export/heads.py``) and the run's output (the views averaged, the
open-set score: ``export/outputs.py``). Every stage is made at one operator set (``OPSET``, and ``ML_OPSET``
for ``ai.onnx.ml``) and one IR version, which every onnxruntime since 1.10 reads; ``normalized`` prefixes a
stage's inner names (its interface names stay) and ``join`` connects two stages with ``onnx.compose``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 15  # the highest onnxmltools converts LightGBM at; every onnxruntime since 1.10 runs it
ML_OPSET = 3
IR_VERSION = 8  # the IR of opset 15 (onnx.helper.VERSION_TABLE)

FEATURES = "features"  # the backbone's output: every view's rows, the original view first
HEAD_IN = "head_features"
HEAD_PROBA = "head_proba"  # float64 (rows, the estimator's classes)
HEAD_LOGITS = "head_logits"  # float64 (rows, the estimator's logits), linear heads only
OUT_FEATURES = "out_features"
OUT_PROBA = "out_proba"
OUT_LOGITS = "out_logits"


class Graph:
    """Nodes and constants of one stage; every name it makes starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.constants: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: Any, dtype: Any = None, hint: str = "c") -> str:
        """A constant tensor (an initializer) holding ``value``."""
        from onnx import numpy_helper

        name = self._name(hint)
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> Any:
        """One node; its output name (a list of names when ``outputs`` > 1)."""
        from onnx import helper

        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def output(self, value: str, name: str) -> None:
        """Give the tensor ``value`` the interface name ``name``."""
        self.op_named("Identity", [value], name)

    def op_named(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> None:
        """One node whose output is the interface name ``name``."""
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=self._name(op_type), **attrs))

    def model(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> Any:
        """The stage as a model (``inputs``/``outputs``: ``onnx.helper.make_tensor_value_info`` results)."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, self.prefix.strip("/") or "stage", list(inputs), list(outputs),
                                  initializer=self.constants)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def tensor(name: str, elem_type: int, shape: Sequence[int | str | None]) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, list(shape))


def normalized(model: Any, prefix: str, rename: dict[str, str] | None = None) -> Any:
    """``model`` (from tf2onnx, skl2onnx, onnxmltools or a ``Graph``) ready to join: inner names prefixed,
    interface names renamed as ``rename`` says, operator sets and IR version the export's own."""
    from onnx import compose

    model = compose.add_prefix(model, prefix, rename_inputs=False, rename_outputs=False)
    for old, new in (rename or {}).items():
        _rename(model.graph, old, new)
    return set_versions(model)


def set_versions(model: Any) -> Any:
    """``model`` at the export's operator sets and IR version (converted if it was made at another opset)."""
    from onnx import helper, version_converter

    imports = {o.domain: o.version for o in model.opset_import}
    if imports.get("", OPSET) != OPSET:
        model = version_converter.convert_version(model, OPSET)
    versions = {**imports, "": OPSET, **({"ai.onnx.ml": ML_OPSET} if "ai.onnx.ml" in imports else {})}
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    model.ir_version = IR_VERSION
    return model


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def join(first: Any, second: Any, connect: Sequence[tuple[str, str]]) -> Any:
    """``second`` fed by ``first``: each ``(output of first, input of second)`` pair connected; the outputs are
    ``second``'s, the inputs those of both that ``connect`` leaves open."""
    from onnx import compose

    joined = compose.merge_models(first, second, io_map=list(connect), outputs=[o.name for o in second.graph.output],
                                  producer_name="clothprobe", producer_version=_version())
    return set_versions(joined)  # merge_models lists each operator set once per model


def _version() -> str:
    from clothprobe import __version__

    return __version__
