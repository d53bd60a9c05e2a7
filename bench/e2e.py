"""Benchmark: end-to-end Xception training next to the best cache-first run, accuracy and cost.

    python bench/e2e.py --weights ~/.cache/offline-imagenet                    # CPU: a short run (below)
    python bench/e2e.py --weights DIR --epochs 12 --image-size 299             # the notebook's full run (GPU)

The end-to-end side is `cli e2e` (frozen base + Dense 100 + Dropout, augmentation, best epoch by validation
accuracy). The cache-first side is the run with the best validation accuracy under --models (made by
`bench/fit.py` or `cli run`); its cost is its fit seconds plus the model time of featurizing the dataset
with its backbone(s), as its caches recorded it. Test accuracy of each (95% bootstrap intervals), an exact
McNemar test on the same test photos, the wall time of each and their ratio are printed and written to
bench/results/e2e.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from results_file import write_report  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def best_cached_run(models: Path, dataset: str):  # noqa: ANN201 - clothprobe.report.Run
    from clothprobe.report import collect_runs
    from clothprobe.runs.directory import RunKind

    by_dataset, _ = collect_runs(models)
    runs = [r for r in by_dataset.get(dataset, []) if r.kind is RunKind.CACHED_FEATURES]
    if not runs:
        sys.exit(f"No cache-first runs of {dataset} under {models}; run bench/fit.py first.")
    if runs[0].metrics.featurize_seconds is None:
        sys.exit(f"{runs[0].directory}: its caches recorded no featurize time; featurize them again.")
    return runs[0]


def acc(split) -> str:  # noqa: ANN001 - a rundir.SplitMetrics or None
    if split is None:
        return "-"
    low, high = split.interval("accuracy") or (float("nan"), float("nan"))
    return f"{100 * split.accuracy:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


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
    from clothprobe.report import Run
    from clothprobe.report.runs import paired as paired_test
    from clothprobe.runs.directory import read_manifest

    dataset = a.data.resolve().name
    cached = best_cached_run(a.models, dataset)
    cm = cached.metrics
    cached_cost = cm.featurize_seconds + cm.fit_seconds

    started = time.perf_counter()
    run = e2e(a.data, backbone="xception", weights=a.weights, epochs=a.epochs, image_size=a.image_size,
              batch_size=a.batch_size, models_dir=a.models, progress=sys.stderr.isatty(),
              on_epoch=lambda r: print(f"epoch {r['epoch']}: val {r['val_accuracy']:.4f} ({r['seconds']:.0f} s)",
                                       flush=True))
    e2e_wall = time.perf_counter() - started
    m = run.metrics
    rows = [
        ("cache-first: " + cached.id + " (best on validation)", acc(cm.validation), acc(cm.test),
         f"{cm.featurize_seconds:.0f} + {cm.fit_seconds:.0f}", f"{cached_cost:.0f}"),
        (f"end to end: xception, {a.image_size} px, {a.epochs} epoch(s), best epoch {m.chosen['best_epoch']}",
         acc(m.validation), acc(m.test), f"{m.fit_seconds:.0f} (wall {e2e_wall:.0f})", f"{m.fit_seconds:.0f}"),
    ]
    header = ("approach", "val acc [95% CI]", "test acc [95% CI]", "seconds (featurize + fit | training)", "total s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    paired = paired_test(cached, Run(run.run_dir, m, read_manifest(run.run_dir)))
    lines += ["", f"- Cost ratio, end to end / cache-first: {m.fit_seconds / cached_cost:.2f}x; test accuracy, "
                  f"cache-first minus end to end: {100 * (cm.test.accuracy - m.test.accuracy):+.1f} pp"
                  + (f" (exact McNemar on the same {paired.n} test photos: p = {paired.p_value:.3f})" if paired else "")
                  + ".",
              "- Featurize time of the cache-first run: as its caches recorded it (model time of the whole dataset).",
              f"- {os.cpu_count()} CPU cores"
              + (f"; a shortened end-to-end run ({a.epochs} epochs at {a.image_size} px, the notebook: 12 at 299)"
                 if (a.epochs, a.image_size) != (12, 299) else "") + ".",
              "- Epochs: " + json.dumps([{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}
                                          for e in m.epochs])]
    text = "\n".join(lines) + "\n"
    write_report(a.report, text)


if __name__ == "__main__":
    main()
