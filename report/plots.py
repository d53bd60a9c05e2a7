"""The report's figures as PNG bytes. Matplotlib's object API (no pyplot state), fixed sizes and no
timestamps in the files, so the same runs give byte-identical images."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clothprobe.report.runs import Run

GALLERY_SIZE = 12
THUMB_PX = 160


def _png(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float):  # noqa: ANN202
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def confusion(run: Run) -> bytes:
    """Test confusion matrix of one run: counts, and normalised by row (recall on the diagonal)."""
    classes = list(run.metrics["test"]["per_class"])
    counts = np.array(run.metrics["test"]["confusion_matrix"], dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(13, 5.6)
    for ax, matrix, title, fmt in zip(fig.subplots(1, 2), (counts, rows), ("counts", "row-normalised"),
                                      ("{:.0f}", "{:.2f}")):
        ax.imshow(matrix, cmap="Blues", vmin=0)
        ax.set_title(f"{run.id}: test {title}")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
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
    classes = list(runs[0].metrics["test"]["per_class"])
    fig = _figure(13, 8)
    width = 0.8 / len(runs)
    x = np.arange(len(classes))
    for ax, key in zip(fig.subplots(3, 1, sharex=True), ("precision", "recall", "f1")):
        for k, run in enumerate(runs):
            values = [run.metrics["test"]["per_class"][c][key] for c in classes]
            ax.bar(x + (k - (len(runs) - 1) / 2) * width, values, width, label=run.id)
        ax.set_ylabel(key)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    fig.axes[0].legend(fontsize=8, loc="lower left")
    fig.axes[0].set_title("per-class test metrics of the top runs (by validation accuracy)")
    return _png(fig)


def accuracy_vs_time(runs: list[Run], references: list[tuple[str, float]]) -> bytes:
    """Test accuracy against the seconds each run cost (featurize + fit, or training), log scale."""
    fig = _figure(10, 6)
    ax = fig.subplots()
    groups: dict[str, list[tuple[float, float, str]]] = {}
    for r in runs:
        if r.score("test") is None:
            continue
        # a cached run whose cache did not record its featurize time is placed at its fit time, and says so
        secs, label = (r.total_seconds, r.kind) if r.total_seconds else (r.metrics.get("fit_seconds"), f"{r.kind} (fit only)")
        if secs:
            groups.setdefault(label, []).append((secs, r.score("test"), r.id))
    for (label, pts), marker in zip(sorted(groups.items()), "os^Dv"):
        ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], marker=marker, label=label)
        for secs, acc, name in pts:
            ax.annotate(name.split("/", 1)[1], (secs, 100 * acc), fontsize=6, xytext=(3, 2), textcoords="offset points")
    by_accuracy: dict[float, list[str]] = {}
    for name, acc in references:
        by_accuracy.setdefault(acc, []).append(name)
    for acc, names in sorted(by_accuracy.items()):
        ax.axhline(100 * acc, color="grey", ls="--", lw=0.8)
        ax.text(0.99, 100 * acc, "; ".join(names) + " (reported)", fontsize=7, va="bottom", ha="right",
                color="grey", transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_xlabel("seconds (featurize + fit for cached features; training for end to end)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    return _png(fig)


@dataclass
class Mistake:
    path: str
    true: str
    predicted: str
    confidence: float


def mistakes(run: Run, limit: int = GALLERY_SIZE) -> list[Mistake]:
    """The run's wrong test predictions, most confident first (ties by path)."""
    path = run.directory / "predictions.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["true"] != r["predicted"]]
    found = [Mistake(r["path"], r["true"], r["predicted"], float(r[f"p_{r['predicted']}"])) for r in rows]
    return sorted(found, key=lambda m: (-m.confidence, m.path))[:limit]


def data_root(run: Run) -> Path | None:
    roots = [c.get("data_root") for c in run.manifest.get("caches", {}).values()]
    root = run.manifest.get("data_root") or next((r for r in roots if r), None)
    return Path(root) if root else None


def gallery(run: Run, wrong: list[Mistake]) -> bytes:
    """Thumbnails of the wrong test images with true and predicted class and confidence."""
    from PIL import Image, ImageOps

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
            with Image.open(root / m.path) as im:
                thumb = ImageOps.exif_transpose(im).convert("RGB")
                thumb.thumbnail((THUMB_PX, THUMB_PX))
            ax.imshow(np.asarray(thumb))
        except (OSError, ValueError):
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", fontsize=8)
        ax.set_title(f"{m.true} -> {m.predicted}\n{100 * m.confidence:.0f}%", fontsize=8)
    return _png(fig)
