"""The report's figures as PNG bytes. Matplotlib's object API (no pyplot state), fixed sizes and no
timestamps in the files, so the same runs give byte-identical images."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.featurize.images import DEFAULT_MAX_PIXELS
from clothprobe.report.runs import Run

GALLERY_SIZE = 12
THUMB_PX = 160


def _png(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    """The figure as PNG bytes. A class name in a script the font lacks (emoji, CJK) is drawn as boxes:
    matplotlib's one warning per missing glyph is not shown (for this drawing only)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from (current )?font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _t(text: str) -> str:
    """User text as matplotlib shows it literally (``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float):  # noqa: ANN202
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def confusion(run: Run) -> bytes:
    """Test confusion matrix of one run: counts, and normalised by row (recall on the diagonal)."""
    classes = list(run.metrics.test.per_class)
    counts = np.array(run.metrics.test.confusion_matrix, dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(13, 5.6)
    for ax, matrix, title, fmt in zip(fig.subplots(1, 2), (counts, rows), ("counts", "row-normalised"),
                                      ("{:.0f}", "{:.2f}")):
        ax.imshow(matrix, cmap="Blues", vmin=0)
        ax.set_title(_t(f"{run.id}: test {title}"))
        ax.set_xticks(range(len(classes)), [_t(c) for c in classes], rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), [_t(c) for c in classes])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = matrix.max() or 1
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")
    return _png(fig)


def per_class(runs: list[Run]) -> bytes:
    """Test precision, recall and F1 per class for a few runs, side by side."""
    classes = list(runs[0].metrics.test.per_class)
    fig = _figure(13, 8)
    width = 0.8 / len(runs)
    x = np.arange(len(classes))
    for ax, key in zip(fig.subplots(3, 1, sharex=True), ("precision", "recall", "f1")):
        for k, run in enumerate(runs):
            values = [run.metrics.test.per_class.get(c, {}).get(key, 0.0) for c in classes]
            ax.bar(x + (k - (len(runs) - 1) / 2) * width, values, width, label=_t(run.id))
        ax.set_ylabel(key)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(x, [_t(c) for c in classes], rotation=30, ha="right")
    fig.axes[0].legend(fontsize=8, loc="lower left")
    fig.axes[0].set_title("per-class test metrics of the top runs (by validation accuracy)")
    return _png(fig)


LABEL_PT = 7  # font size of the point labels
LABEL_LINE = 1.5  # label spacing, in font sizes


def spread(positions: list[float], gap: float, low: float = 0.0, high: float = 1.0) -> list[float]:
    """Positions moved as little as possible so that neighbours are at least ``gap`` apart, inside
    [low, high] (given in any order; returned in the same order)."""
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    placed = [min(max(positions[i], low), high) for i in order]
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    if placed and placed[-1] > high:
        placed[-1] = high
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(positions)
    for k, i in enumerate(order):
        out[i] = placed[k]
    return out


def _cost_points(runs: list[Run]) -> list[tuple[float, float, str, str]]:
    """(seconds, test accuracy %, run id, group) for each run that has a cost."""
    points = []
    for r in runs:
        # a cached run whose cache did not record its featurize time is placed at its fit time, and says so
        secs, group = (r.total_seconds, r.kind) if r.total_seconds else (r.metrics.fit_seconds, f"{r.kind} (fit only)")
        if secs and r.score("test") is not None:
            points.append((float(secs), 100 * r.score("test"), r.id, group))
    return points


def accuracy_vs_time_figure(runs: list[Run], references: list[tuple[str, float]]):  # noqa: ANN201 - a Figure
    """Test accuracy against the seconds each run cost (featurize + fit, or training), log scale. Every point
    is labelled with its full run id (backbone included) in a column beside the plot, joined by a line, so
    labels never overlap however close the points are."""
    points = _cost_points(runs)
    height = max(6.0, (len(points) + 4) * LABEL_PT * LABEL_LINE / 72 / 0.8)
    fig = _figure(12, height)
    ax = fig.add_axes((0.08, 0.1, 0.55, 0.8))
    for (group, marker) in zip(sorted({p[3] for p in points}), "os^Dv"):
        mine = [p for p in points if p[3] == group]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], marker=marker, label=group)
    values = [p[1] for p in points] + [100 * acc for _, acc in references]
    if values:
        ax.set_ylim(min(values) - 2, max(values) + 2)
    by_accuracy: dict[float, list[str]] = {}
    for name, acc in references:
        by_accuracy.setdefault(acc, []).append(name)
    for acc, names in sorted(by_accuracy.items()):
        ax.axhline(100 * acc, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (featurize + fit for cached features; training for end to end)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=8, loc="lower right")
    labels = [(y, text, (x, y), "black") for x, y, text, _ in points]
    labels += [(100 * acc, "; ".join(names) + " (reported)", None, "grey") for acc, names in by_accuracy.items()]
    to_axes = ax.transData + ax.transAxes.inverted()
    wanted = [to_axes.transform((1.0, y))[1] for y, *_ in labels]
    gap = LABEL_PT * LABEL_LINE / 72 / (0.8 * height)
    for (y, text, xy, colour), pos in zip(labels, spread(wanted, gap)):
        line = {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "grey"}} if xy else {}
        ax.annotate(_t(text), xy=xy or (1.0, y), xycoords="data" if xy else ("axes fraction", "data"),
                    xytext=(1.03, pos), textcoords="axes fraction", fontsize=LABEL_PT, va="center", color=colour,
                    annotation_clip=False, **line)
    return fig


def accuracy_vs_time(runs: list[Run], references: list[tuple[str, float]]) -> bytes:
    return _png(accuracy_vs_time_figure(runs, references))


def reliability_plot(run: Run) -> bytes | None:
    """Accuracy against confidence on the test photos, before and after the run's temperature."""
    from clothprobe.classifiers.stats import apply_temperature, reliability

    predictions = run.predictions()
    if predictions is None or not len(predictions.paths):
        return None
    index = {c: i for i, c in enumerate(predictions.classes)}
    y = np.array([index.get(t, -1) for t in predictions.true])
    curves = [("as fitted", predictions.proba)]
    if run.manifest.calibration is not None:
        t = run.manifest.calibration.temperature
        curves.append((f"temperature {t:.2f}", apply_temperature(predictions.proba, t)))
    fig = _figure(6.5, 5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    for (label, proba), marker in zip(curves, "os"):
        curve = reliability(y, proba)
        ax.plot(curve.confidence, curve.accuracy, marker=marker, label=f"{label}: ECE {100 * curve.ece:.1f}%")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_t(f"{run.id}: {len(y)} test photos, 15 confidence bins"), fontsize=9)
    return _png(fig)


@dataclass
class Mistake:
    path: str
    true: str
    predicted: str
    confidence: float


def mistakes(run: Run, limit: int = GALLERY_SIZE) -> list[Mistake]:
    """The run's wrong test predictions, most confident first (ties by path)."""
    predictions = run.predictions()
    if predictions is None:
        return []
    found = [Mistake(path, true, guess, float(row.max()))
             for path, true, guess, row in zip(predictions.paths, predictions.true, predictions.predicted,
                                              predictions.proba) if true != guess]
    return sorted(found, key=lambda m: (-m.confidence, m.path))[:limit]


def data_root(run: Run) -> Path | None:
    root = run.manifest.data_root
    return Path(root) if root else None


def thumbnail(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A small RGB thumbnail; the pixel count is read from the header and checked before decoding, so a
    decompression bomb is never decoded. OSError/ValueError for anything that is not a usable image."""
    from PIL import Image, ImageOps

    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with warnings.catch_warnings():  # the size is checked below, before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > max_pixels:
                raise ValueError(f"{im.width}x{im.height} pixels is above the limit of {max_pixels:,}")
            im.draft("RGB", (THUMB_PX, THUMB_PX))
            thumb = ImageOps.exif_transpose(im).convert("RGB")
            thumb.thumbnail((THUMB_PX, THUMB_PX))
            return np.asarray(thumb)
    except Image.DecompressionBombError as err:
        raise ValueError(str(err)) from None


def gallery(run: Run, wrong: list[Mistake]) -> bytes:
    """Thumbnails of the wrong test images with true and predicted class and confidence."""
    root = data_root(run)
    cols = 6
    n_rows = max(1, -(-len(wrong) // cols))
    fig = _figure(2.2 * cols, 2.6 * n_rows)
    axes = np.atleast_1d(fig.subplots(n_rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, m in zip(axes, wrong):
        try:
            if root is None:
                raise FileNotFoundError(m.path)
            ax.imshow(thumbnail(root / m.path))
        except (OSError, ValueError) as err:
            why = "image not found" if isinstance(err, FileNotFoundError) else "image not shown"
            ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8)
        ax.set_title(_t(f"{m.true} -> {m.predicted}\n{100 * m.confidence:.0f}%"), fontsize=8)
    return _png(fig)
