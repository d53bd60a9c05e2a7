"""Benchmark: end-to-end Xception training next to the best cache-first run, accuracy and cost.

    python bench/e2e.py --weights ~/.cache/offline-imagenet                    # CPU: a short run (below)
    python bench/e2e.py --weights DIR --epochs 12 --image-size 299             # the notebook's full run (GPU)

The end-to-end side is `cli e2e` (frozen base + Dense 100 + Dropout, augmentation, best epoch by validation
accuracy). The cache-first side is the run with the best validation accuracy under --models (made by
`bench/fit.py` or `cli run`); its cost is its fit seconds plus the model time of featurizing the dataset
with its backbone(s). Caches record that time (`seconds_per_image`); for a cache made before they did, it
is measured here on --sample validation images with the cache's own settings and scaled to the dataset,
and the table says so. Test accuracy of each, wall time of each and their ratio are printed and written to
bench/results/e2e.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def best_cached_run(models: Path, dataset: str):  # noqa: ANN201 - clothprobe.report.Run
    from clothprobe.report import collect_runs

    runs = [r for r in collect_runs(models / dataset) if r.kind == "cached-features"]
    if not runs:
        sys.exit(f"No cache-first runs under {models / dataset}; run bench/fit.py first.")
    return runs[0]


def featurize_seconds(run, data: Path, weights: str, sample: int) -> tuple[float, str]:  # noqa: ANN001
    """The model time of featurizing the whole dataset with the run's backbone(s), and how it was had."""
    from clothprobe.featurize import featurize, load_features

    total, how = 0.0, []
    for backbone, cache in run.manifest["caches"].items():
        if cache.get("featurize_seconds"):
            total += cache["featurize_seconds"]
            how.append(f"{backbone}: recorded by the cache")
            continue
        recorded = load_features(cache["path"])
        config = recorded.recipe
        files = sorted((data / "validation").rglob("*.jpg"))[:sample]
        with tempfile.TemporaryDirectory() as tmp:
            subset = Path(tmp) / "subset" / "train"
            for f in files:
                dest = subset / f.parent.name / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f, dest)
            result = featurize(subset.parent, backbone=backbone, weights=weights, features_dir=Path(tmp) / "f",
                               precision=config.precision, runtime=config.runtime, tta="flip" in recorded.views)
        n_images = cache["images"]
        total += result.model_seconds / result.computed * n_images
        how.append(f"{backbone}: measured on {result.computed} images ({config.runtime}, {config.precision}, "
                   f"views {'+'.join(recorded.views)}), scaled to {n_images}")
    return total, "; ".join(how)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--epochs", type=int, default=2, help="CPU default: 2 (the notebook: 12)")
    p.add_argument("--image-size", type=int, default=150, help="CPU default: 150 px (the notebook: 299)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sample", type=int, default=64, help="images to time featurizing on, when not recorded")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "e2e.md")
    a = p.parse_args()

    from clothprobe.e2e import e2e

    dataset = a.data.resolve().name
    cached = best_cached_run(a.models, dataset)
    feat_s, feat_how = featurize_seconds(cached, a.data, a.weights, a.sample)
    cached_cost = feat_s + cached.metrics["fit_seconds"]

    started = time.perf_counter()
    run = e2e(a.data, backbone="xception", weights=a.weights, epochs=a.epochs, image_size=a.image_size,
              batch_size=a.batch_size, models_dir=a.models, progress=sys.stderr.isatty(),
              on_epoch=lambda r: print(f"epoch {r['epoch']}: val {r['val_accuracy']:.4f} ({r['seconds']:.0f} s)",
                                       flush=True))
    e2e_wall = time.perf_counter() - started
    m = run.metrics

    def acc(split: dict | None) -> str:
        return f"{100 * split['accuracy']:.1f}%" if split else "-"

    rows = [
        ("cache-first: " + cached.id + " (best on validation)", acc(cached.metrics["validation"]),
         acc(cached.metrics["test"]), f"{feat_s:.0f} + {cached.metrics['fit_seconds']:.0f}", f"{cached_cost:.0f}"),
        (f"end to end: xception, {a.image_size} px, {a.epochs} epoch(s), best epoch {m['chosen']['best_epoch']}",
         acc(m["validation"]), acc(m["test"]), f"{m['fit_seconds']:.0f} (wall {e2e_wall:.0f})",
         f"{m['fit_seconds']:.0f}"),
    ]
    header = ("approach", "val acc", "test acc", "seconds (featurize + fit | training)", "total s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    gain = 100 * (cached.metrics["test"]["accuracy"] - m["test"]["accuracy"])
    lines += ["", f"- Cost ratio, end to end / cache-first: {m['fit_seconds'] / cached_cost:.2f}x; "
                  f"test accuracy, cache-first minus end to end: {gain:+.1f} pp.",
              f"- Featurize time of the cache-first run: {feat_how}.",
              f"- {os.cpu_count()} CPU cores"
              + (f"; a shortened end-to-end run ({a.epochs} epochs at {a.image_size} px, the notebook: 12 at 299)"
                 if (a.epochs, a.image_size) != (12, 299) else "") + ".",
              "- Epochs: " + json.dumps([{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}
                                          for e in m["epochs"]])]
    text = "\n".join(lines) + "\n"
    print(text)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(f"`python bench/e2e.py {' '.join(sys.argv[1:])}`\n\n{text}")
    print(f"written to {a.report}")


if __name__ == "__main__":
    main()
