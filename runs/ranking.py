"""``suggest()``: which unlabeled photos to label next. A finished run scores them; the ones it is least sure
about come first (uncertainty sampling: the margin between its two most probable classes, or the entropy of its
probabilities), and near duplicates are collapsed into one row, so a burst of ten shots of one coat costs one
label, not ten. The rows are a score file (``ScoreWriter``) with a ``rank``, the ``uncertainty``, the photos
collapsed into the row (``near_duplicates``) and an empty ``label`` column for the person labelling.

Near duplicates are found as ``cli audit`` finds them: photos whose embeddings (the run's own, as it embeds new
photos) have a cosine at least the threshold, by default measured on these very photos as the median cosine of a
photo and its mirror image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import FLIPPED, ORIGINAL
from clothprobe.featurize.images import DEFAULT_MAX_PIXELS


def margin(proba: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2): 1 when the two most probable classes tie, 0 when one class takes everything."""
    top = -np.sort(-proba, axis=1)
    return 1 - (top[:, 0] - (top[:, 1] if proba.shape[1] > 1 else 0))


def entropy(proba: np.ndarray) -> np.ndarray:
    """The entropy of the probabilities over log(classes): 1 when uniform, 0 when certain."""
    p = np.clip(proba, 1e-12, 1)
    return -(proba * np.log(p)).sum(1) / np.log(max(2, proba.shape[1]))


STRATEGIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"margin": margin, "entropy": entropy}
COLUMNS = {"rank": "int64", "uncertainty": "float64", "near_duplicates": "string", "label": "string"}
SHOWN = 20  # rows of the terminal table


@dataclass
class Suggestion:
    path: str
    uncertainty: float
    probabilities: dict[str, float]  # every class, in the run's class order
    alike: list[str] = field(default_factory=list)  # near duplicates collapsed into this row

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


@dataclass
class SuggestResult:
    run: str
    classes: list[str]
    strategy: str
    near_threshold: float
    threshold_source: str
    suggestions: list[Suggestion]  # most uncertain first
    skipped: list[tuple[str, str]]
    photos: int  # scored
    seconds: float = 0.0
    calibrated: bool = False


def collapse(X: np.ndarray, uncertainty: np.ndarray, paths: Sequence[str], threshold: float) -> list[list[int]]:
    """Groups of near duplicates (connected by cosine >= ``threshold``), each as row indices with its most
    uncertain photo first (ties: by path), the groups ordered the same way."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from clothprobe.audit.findings import similar_pairs

    i, j, _ = similar_pairs(X, threshold)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(X), len(X)))
    _, component = connected_components(graph, directed=False)
    order = sorted(range(len(X)), key=lambda k: (-uncertainty[k], paths[k]))
    groups: dict[int, list[int]] = {}
    for k in order:
        groups.setdefault(int(component[k]), []).append(k)
    return list(groups.values())  # insertion order: by each group's first (most uncertain) photo


def _threshold(views: dict[str, np.ndarray], given: float | None) -> tuple[float, str]:
    from clothprobe.audit.findings import mirror_threshold

    if given is not None:
        return given, "given (--near-threshold)"
    if len(views[ORIGINAL]) < 2:
        return 1.0, "one photo: nothing to collapse"
    return mirror_threshold(views[ORIGINAL], views[FLIPPED]), "measured: median cosine of a photo and its mirror image"


def suggest(images: Sequence[str | Path], model_dir: str | Path, *, strategy: str = "margin",
            near_threshold: float | None = None, limit: int | None = None, weights: str | None = None,
            batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS, calibrate: bool = False) -> SuggestResult:
    """The photos under ``images`` ordered by how much labeling each would help the run at ``model_dir`` (a run
    fitted on cached embeddings), near duplicates collapsed; ``limit``: the first so many rows."""
    from clothprobe._util.bounds import check_options
    from clothprobe.runs.directory import RunKind, read_manifest
    from clothprobe.runs.predicting import Predictor, list_images

    started = time.perf_counter()
    check_options(near_threshold=near_threshold, limit=limit, batch_size=batch_size)
    if strategy not in STRATEGIES:
        raise ClothprobeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")
    if read_manifest(model_dir).kind is RunKind.END_TO_END:
        raise ClothprobeError(f"{model_dir} is an end-to-end run; suggest needs a run fitted on cached embeddings "
                              f"(cli fit): it collapses near duplicates by their embeddings.")
    predictor = Predictor(model_dir, weights=weights, batch_size=batch_size, max_pixels=max_pixels,
                          calibrate=calibrate, unknown=False)
    files = list_images(images)
    done = predictor.embed(files, flip=predictor.manifest.tta or near_threshold is None)
    proba, _ = predictor.from_views(done.views)
    threshold, source = _threshold(done.views, near_threshold)
    uncertainty = STRATEGIES[strategy](proba)
    paths = [str(files[i]) for i in done.good]
    classes = predictor.classes
    rows = [Suggestion(paths[g[0]], float(uncertainty[g[0]]), dict(zip(classes, map(float, proba[g[0]]))),
                       [paths[k] for k in g[1:]])
            for g in collapse(done.views[ORIGINAL], uncertainty, paths, threshold)]
    return SuggestResult(run=predictor.manifest.id, classes=classes, strategy=strategy,
                         near_threshold=threshold, threshold_source=source, suggestions=rows[:limit],
                         skipped=[(str(files[i]), why) for i, why in sorted(done.skipped.items())],
                         photos=len(paths), seconds=time.perf_counter() - started,
                         calibrated=predictor.temperature is not None)


def write_suggestions(result: SuggestResult, output: str | Path | None, top_k: int = 3, fmt: str | None = None) -> None:
    """``result`` as a score file (``ScoreWriter``: CSV, JSON or Parquet; ``output`` None: stdout) with the
    ranking's columns after ``path``: ``rank``, ``uncertainty``, ``near_duplicates`` (``; ``-separated) and an
    empty ``label``."""
    from clothprobe.runs.predicting import ScoreWriter

    rows = result.suggestions
    proba = np.array([[s.probabilities[c] for c in result.classes] for s in rows], np.float64)
    proba = proba.reshape(-1, len(result.classes))
    values = {"rank": list(range(1, len(rows) + 1)), "uncertainty": [s.uncertainty for s in rows],
              "near_duplicates": ["; ".join(s.alike) for s in rows], "label": [""] * len(rows)}
    with ScoreWriter(output, result.classes, top_k, fmt, run=result.run, calibrated=result.calibrated,
                     extra=COLUMNS) as writer:
        writer.write([s.path for s in rows], proba, result.skipped, extra_values=values)
