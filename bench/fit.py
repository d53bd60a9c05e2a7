"""Benchmark: every classifier x balance mode on the real caches, chosen both ways, side by side.

Needs caches made with real weights, e.g.
    cli featurize --backbone xception --data ../shared/data/clothing-dataset-small --tta flip
    cli featurize --backbone vgg16    --data ../shared/data/clothing-dataset-small --tta flip

    python bench/fit.py                                   # xception, all heads, all balance modes, +/- TTA
    python bench/fit.py --backbones xception,vgg16+xception --clfs logreg --select validation

For each run and each way of choosing the settings (``--select validation``: fitted on train, scored on
the validation split; ``--select cv``: repeated stratified k-fold over train + validation, refitted on
both) it prints fit seconds (search included), the accuracy the choice rested on (validation, or out of
fold) and test accuracy, each with its 95% bootstrap interval, and marks the run each way would choose.
Runs are written under --models/select-<mode>/ (cli report reads them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from results_file import write_report  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_TEST = 0.90  # end-to-end Xception, 299 px, augmentation (reference notebook, not measured here)


def _acc(block) -> str:  # noqa: ANN001 - a rundir.SplitMetrics
    low, high = block.interval("accuracy")
    return f"{100 * block.accuracy:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def _run(a: argparse.Namespace) -> list[dict]:
    from clothprobe.classifiers import fit

    rows = []
    for backbone in a.backbones.split(","):
        for tta in (t == "yes" for t in a.tta.split(",")):
            for clf in a.clfs.split(","):
                for balance in a.balances.split(","):
                    row = {"backbone": backbone}
                    for mode in a.select.split(","):
                        (r,) = fit(a.dataset, backbone=backbone, clf=clf, balance=balance, tta=tta, select=mode,
                                   features_dir=a.features, models_dir=a.models / f"select-{mode}")
                        row["run"], row[mode] = r.metrics.run, r.metrics
                        print(f"{backbone:>16} {r.metrics.run:<22} {mode:<10} fit {r.metrics.fit_seconds:6.1f} s  "
                              f"val {_acc(r.metrics.validation)}  test {_acc(r.metrics.test)}", flush=True)
                    rows.append(row)
    return rows


def _table(rows: list[dict], modes: list[str]) -> str:
    from clothprobe.report.runs import rank_key  # the report's own ranking, so both name the same run

    header = ["backbone", "run"] + [f"{m}: {c}" for m in modes for c in ("fit s", "chosen on, acc (95% CI)",
                                                                         "test acc (95% CI)", "settings")]
    best = {m: min(range(len(rows)), key=lambda i: rank_key(rows[i][m], f"{rows[i]['backbone']}/{rows[i]['run']}"))
            for m in modes}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        mark = "".join(f" **(chosen by {m})**" for m in modes if best[m] == i)
        cells = [row["backbone"], row["run"] + mark]
        for m in modes:
            r = row[m]
            cells += [f"{r.fit_seconds:.1f}", f"{r.selection_n} photos: {_acc(r.validation)}", _acc(r.test),
                      str({**r.params, **r.chosen})]
        lines.append("| " + " | ".join(cells) + " |")
    summary = [f"Chosen by {m}: {rows[best[m]]['backbone']} {rows[best[m]]['run']}, test accuracy "
               f"{_acc(rows[best[m]][m].test)} ({100 * (rows[best[m]][m].test.accuracy - REFERENCE_TEST):+.1f} pp "
               f"against the end-to-end Xception reference, 90%)." for m in modes]
    return "\n".join(lines) + "\n\n" + " ".join(summary) + f" {os.cpu_count()} CPU cores.\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--models", type=Path, default=ROOT / "models" / "bench")
    p.add_argument("--backbones", default="xception")
    p.add_argument("--clfs", default="logreg,lgbm,dense")
    p.add_argument("--balances", default="none,weights,smote")
    p.add_argument("--tta", default="no,yes", help="no, yes or both (no,yes)")
    p.add_argument("--select", default="validation,cv", help="validation, cv or both (validation,cv)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "fit.md")
    a = p.parse_args()

    text = _table(_run(a), a.select.split(","))
    write_report(a.report, text)


if __name__ == "__main__":
    main()
