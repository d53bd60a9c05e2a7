"""The run's open-set score (``classifiers.openset``) in ONNX ops, one builder per score as data in ``SCORES``.

Each builder adds nodes to a ``Graph`` and returns a float64 ``(n,)`` tensor, computed as ``OpenSetScorer``
and ``Combiner`` compute it: ``msp`` (ReduceMax of the probabilities), ``energy`` (ReduceLogSumExp of the
logits), ``knn`` (the L2-normalized rows against the normalized training bank: MatMul, then the k-th largest
by TopK, in float32 as numpy does it), ``knn_negatives`` (``knn`` less the same against the negative photos),
``mahalanobis`` (the PCA projection and the shared precision matrix, float64) and ``combined`` (the
standardized components through the non-negative logistic regression). Only the chosen score's components are
built: the file holds the training bank only when the run's score needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clothprobe.export.graph import Graph

if TYPE_CHECKING:
    from clothprobe.classifiers.openset import OpenSet, OpenSetScorer


@dataclass
class Rows:
    """What the scores look at, as tensor names: ``X`` the original view's rows (float32), ``proba`` the run's
    probabilities (float64, every class), ``logits`` the head's logits (float64) or None."""

    X: str
    proba: str
    logits: str | None = None


def openset_score(g: Graph, openset: OpenSet, rows: Rows) -> str:
    """Nodes computing ``openset.values`` for ``rows``; the float64 ``(n,)`` tensor's name."""
    from clothprobe.classifiers.openset import COMBINED

    names = openset.combiner.names if openset.score == COMBINED else [openset.score]
    cache: dict[str, str] = {}
    values = {name: SCORES[name](g, openset.scorer, rows, cache) for name in names}
    if openset.score != COMBINED:
        return values[openset.score]
    c = openset.combiner
    columns = [g.op("Unsqueeze", values[name], g.const([1], np.int64)) for name in c.names]
    S = columns[0] if len(columns) == 1 else g.op("Concat", *columns, axis=1)
    standardized = g.op("Div", g.op("Sub", S, g.const(c.mean, np.float64)), g.const(c.scale, np.float64))
    return g.op("Add", g.op("MatMul", standardized, g.const(c.coef, np.float64)), g.const(c.intercept, np.float64))


def _msp(g: Graph, scorer: OpenSetScorer, rows: Rows, cache: dict[str, str]) -> str:
    return g.op("ReduceMax", rows.proba, axes=[1], keepdims=0)


def _energy(g: Graph, scorer: OpenSetScorer, rows: Rows, cache: dict[str, str]) -> str:
    from clothprobe.errors import ClothprobeError

    if rows.logits is None:
        raise ClothprobeError("The open-set score 'energy' needs the head's logits, which it does not give.")
    return g.op("ReduceLogSumExp", rows.logits, axes=[1], keepdims=0)


def _normalized(g: Graph, rows: Rows, cache: dict[str, str]) -> str:
    """The rows divided by their L2 norm (at least 1e-12), float32, once per graph."""
    if "normalized" not in cache:
        norm = g.op("ReduceL2", rows.X, axes=[1], keepdims=1)
        cache["normalized"] = g.op("Div", rows.X, g.op("Max", norm, g.const(np.float32(1e-12))))
    return cache["normalized"]


def _kth_similarity(g: Graph, Xn: str, bank: np.ndarray, k: int) -> str:
    """Cosine similarity of each normalized row to its k-th nearest row of ``bank`` (normalized), as float64."""
    from onnx import TensorProto

    k = min(k, len(bank))
    sims = g.op("MatMul", Xn, g.const(np.asarray(bank, np.float32).T, hint="bank"))
    top, _ = g.op("TopK", sims, g.const([k], np.int64), axis=1, largest=1, sorted=1, outputs=2)
    kth = g.op("Gather", top, g.const(np.int64(k - 1)), axis=1)
    return g.op("Cast", kth, to=TensorProto.DOUBLE)


def _knn(g: Graph, scorer: OpenSetScorer, rows: Rows, cache: dict[str, str]) -> str:
    if "knn" not in cache:
        cache["knn"] = _kth_similarity(g, _normalized(g, rows, cache), scorer.bank_, scorer.k)
    return cache["knn"]


def _knn_negatives(g: Graph, scorer: OpenSetScorer, rows: Rows, cache: dict[str, str]) -> str:
    negatives = _kth_similarity(g, _normalized(g, rows, cache), scorer.negatives_, scorer.k)
    return g.op("Sub", _knn(g, scorer, rows, cache), negatives)


def _mahalanobis(g: Graph, scorer: OpenSetScorer, rows: Rows, cache: dict[str, str]) -> str:
    from onnx import TensorProto

    Xn = g.op("Cast", _normalized(g, rows, cache), to=TensorProto.DOUBLE)
    Z = g.op("MatMul", g.op("Sub", Xn, g.const(scorer.pca_mean_, np.float64)),
             g.const(np.asarray(scorer.pca_components_).T, np.float64))
    d = g.op("Sub", g.op("Unsqueeze", Z, g.const([1], np.int64)), g.const(scorer.class_means_, np.float64))
    squared = g.op("ReduceSum", g.op("Mul", g.op("MatMul", d, g.const(scorer.precision_, np.float64)), d),
                   g.const([2], np.int64), keepdims=0)
    return g.op("Neg", g.op("ReduceMin", squared, axes=[1], keepdims=0))


SCORES: dict[str, Callable[[Graph, OpenSetScorer, Rows, dict[str, str]], str]] = {
    "msp": _msp,
    "energy": _energy,
    "knn": _knn,
    "mahalanobis": _mahalanobis,
    "knn_negatives": _knn_negatives,
}
