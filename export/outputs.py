"""The last stage of an export: the file's outputs (``export/contract.py``) from the head's rows.

As ``runs.predicting`` does: each row's probabilities spread over every class of the run
(``classifiers.proba.full_proba``: a class the estimator never saw gets 0) and divided by their sum, then
averaged over the views (the mirrored one with TTA: ``head_proba``); with a reject option, the open-set score
on the original view's rows and on those probabilities, with the logits averaged over the views as
``classifiers.openset.head_output`` does when the run says so, and the run's threshold. float64 inside, float32
out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothprobe.export.contract import OPENSET_SCORE, OPENSET_THRESHOLD, PROBABILITIES
from clothprobe.export.graph import OUT_FEATURES, OUT_LOGITS, OUT_PROBA, Graph, tensor

if TYPE_CHECKING:
    from clothprobe.classifiers.openset import OpenSet


@dataclass(frozen=True)
class Layout:
    """The head's rows: ``views`` per photo (stacked, original first), ``width`` feature columns, the
    estimator's ``classes`` (indices into the run's ``n_classes``), ``logits`` columns (0: none)."""

    views: int
    width: int
    classes: tuple[int, ...]
    n_classes: int
    logits: int = 0


def output_stage(layout: Layout, openset: OpenSet | None = None, logits_of_every_view: bool = True) -> object:
    """The stage as an ONNX model: inputs ``out_features``, ``out_proba`` (and ``out_logits`` when the
    open-set score reads them), outputs as the contract names them."""
    from onnx import TensorProto

    g = Graph("outputs/")
    spread = np.zeros((len(layout.classes), layout.n_classes))
    spread[np.arange(len(layout.classes)), list(layout.classes)] = 1.0
    full = g.op("MatMul", OUT_PROBA, g.const(spread, np.float64))
    full = g.op("Div", full, g.op("ReduceSum", full, g.const([1], np.int64), keepdims=1))
    proba = _view_mean(g, full, layout.views, layout.n_classes)
    g.op_named("Cast", [proba], PROBABILITIES, to=TensorProto.FLOAT)
    inputs = [tensor(OUT_FEATURES, TensorProto.FLOAT, ["rows", layout.width]),
              tensor(OUT_PROBA, TensorProto.DOUBLE, ["rows", len(layout.classes)])]
    outputs = [tensor(PROBABILITIES, TensorProto.FLOAT, ["n", layout.n_classes])]
    if openset is not None:
        inputs += _openset(g, layout, openset, proba, logits_of_every_view)
        outputs += [tensor(OPENSET_SCORE, TensorProto.FLOAT, ["n"]), tensor(OPENSET_THRESHOLD, TensorProto.FLOAT, [])]
    return g.model(inputs, outputs)


def needs_logits(openset: OpenSet | None) -> bool:
    """Whether the run's open-set score reads the head's logits (``energy``, alone or combined)."""
    from clothprobe.classifiers.openset import COMBINED

    if openset is None:
        return False
    return "energy" in (openset.combiner.names if openset.score == COMBINED else [openset.score])


def _view_mean(g: Graph, rows: str, views: int, width: int) -> str:
    """``(views * n, width)`` rows, the views stacked -> their mean per photo, ``(n, width)``."""
    if views == 1:
        return rows
    stacked = g.op("Reshape", rows, g.const([views, -1, width], np.int64))
    return g.op("ReduceMean", stacked, axes=[0], keepdims=0)


def _original(g: Graph, rows: str, views: int, width: int) -> str:
    """The original view's rows (the first ``n`` of ``views * n``)."""
    if views == 1:
        return rows
    stacked = g.op("Reshape", rows, g.const([views, -1, width], np.int64))
    return g.op("Gather", stacked, g.const(np.int64(0)), axis=0)


def _openset(g: Graph, layout: Layout, openset: OpenSet, proba: str, logits_of_every_view: bool) -> list:
    """Nodes of the score and the threshold; the extra inputs they read."""
    from onnx import TensorProto

    from clothprobe.export.openset import Rows, openset_score

    logits, inputs = None, []
    if needs_logits(openset):
        pick = _view_mean if logits_of_every_view else _original
        logits = pick(g, OUT_LOGITS, layout.views, layout.logits)
        inputs.append(tensor(OUT_LOGITS, TensorProto.DOUBLE, ["rows", layout.logits]))
    X = _original(g, OUT_FEATURES, layout.views, layout.width)
    score = openset_score(g, openset, Rows(X, proba, logits))
    g.op_named("Cast", [score], OPENSET_SCORE, to=TensorProto.FLOAT)
    g.op_named("Identity", [g.const(np.float32(openset.threshold))], OPENSET_THRESHOLD)
    return inputs
