"""Benchmark: every classifier x balance mode on the real caches, in one table.

Needs caches made with real weights, e.g.
    cli featurize --backbone xception --data ../shared/data/clothing-dataset-small --tta flip
    cli featurize --backbone vgg16    --data ../shared/data/clothing-dataset-small --tta flip

    python bench/fit.py                                   # xception, all heads, all balance modes, +/- TTA
    python bench/fit.py --backbones xception,vgg16+xception --clfs logreg

Prints fit seconds (search included) and validation / test accuracy and macro-F1 per run, marks the run
with the best validation accuracy (the honest choice) and compares its test accuracy with the reference
notebooks' end-to-end Xception (90% test). Runs are written under --models (cli report reads them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TEST = 0.90  # end-to-end Xception, 299 px, augmentation (reference notebook, not measured here)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--backbones", default="xception")
    p.add_argument("--clfs", default="logreg,lgbm,dense")
    p.add_argument("--balances", default="none,weights,smote")
    p.add_argument("--tta", default="no,yes", help="no, yes or both (no,yes)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "fit.md")
    a = p.parse_args()

    from clothprobe.classifiers import fit

    rows = []
    for backbone in a.backbones.split(","):
        for tta in (t == "yes" for t in a.tta.split(",")):
            for clf in a.clfs.split(","):
                for balance in a.balances.split(","):
                    (r,) = fit(a.dataset, backbone=backbone, clf=clf, balance=balance, tta=tta,
                               features_dir=a.features, models_dir=a.models)
                    m = r.metrics
                    rows.append((backbone, m["run"], m["fit_seconds"], m["validation"]["accuracy"],
                                 m["validation"]["macro_f1"], m["test"]["accuracy"], m["test"]["macro_f1"],
                                 {**m["params"], **m["chosen"]}))
                    print(f"{backbone:>16} {m['run']:<22} fit {m['fit_seconds']:6.1f} s  val {m['validation']['accuracy']:.4f}"
                          f"  test {m['test']['accuracy']:.4f}", flush=True)
    best = max(range(len(rows)), key=lambda i: (rows[i][3], rows[i][4], -i))
    header = ("backbone", "run", "fit s", "val acc", "val macro-F1", "test acc", "test macro-F1", "settings")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (bb, run, sec, va, vf, ta, tf, settings) in enumerate(rows):
        mark = " **(best on validation)**" if i == best else ""
        lines.append(f"| {bb} | {run}{mark} | {sec:.1f} | {va:.4f} | {vf:.4f} | {ta:.4f} | {tf:.4f} | {settings} |")
    b = rows[best]
    summary = (f"Best on validation: {b[0]} {b[1]}, test accuracy {b[5]:.4f} "
               f"({100 * (b[5] - REFERENCE_TEST):+.1f} pp against the end-to-end Xception reference, 90%). "
               f"{os.cpu_count()} CPU cores.")
    text = "\n".join(lines) + "\n\n" + summary + "\n"
    print(text)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(f"`python bench/fit.py {' '.join(sys.argv[1:])}`\n\n{text}")
    print(f"written to {a.report}")


if __name__ == "__main__":
    main()
