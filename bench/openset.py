"""Benchmark: open-set scores ("none of these") on real caches, and how they carry over to garment types never
seen in tuning.

Needs the dataset's cache and a folder of photos outside its classes (``--unknown``), which is featurized with
the same recipe as ``cli fit --unknown`` does it, e.g.
    cli featurize --backbone xception --data ../shared/data/clothing-dataset-small

    python bench/openset.py --features ../shared-cache/features

The head is cli fit's logistic regression (balanced class weights, C chosen on the validation split). Then:

1. ``cli fit --unknown``'s protocol: half the unknown photos (seeded, per type) + validation choose the score
   and its threshold (the highest costing at most 1 pp of validation accuracy); test + the other half measure
   every score.
2. Leave one garment type out: each type in turn is left out of tuning (the other types' photos tune), and
   every score is measured on test knowns against that type alone, with the known-class accuracy cost of the
   chosen threshold (test photos below it counted wrong). This is what generalization to new garments means.
3. Outlier exposure, type by type: the other types' photos split into negatives and tuning photos; no
   negatives, against negatives as the k-NN contrast set (``cli fit --negatives``), against negatives as an
   extra rejected class of the head (score: 1 - its probability); measured on the left-out type.

Nothing is chosen on test or on the left-out type. Every AUROC and FPR@95 has a 95% bootstrap interval.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from results_file import write_report  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
COSTS = (1, 2, 5, 10)  # --unknown-cost values whose operating points are reported


def _f(e: dict, key: str) -> str:
    low, high = e[f"{key}_ci"]
    return f"{e[key]:.3f} ({low:.3f}-{high:.3f})"


def _head(data, seed: int, X=None, y=None, tta: bool = False):  # noqa: ANN001, ANN202 - a FeatureSet; a fitted pipeline
    """cli fit's logistic regression, its C chosen on the validation split (optionally on other training rows)."""
    from dataclasses import replace

    from clothprobe.classifiers.data import SplitData
    from clothprobe.classifiers.registry import get_classifier
    from clothprobe.classifiers.select import select

    if X is not None:
        data = replace(data, splits={**data.splits, "train": SplitData(X, y, np.arange(len(y)).astype(str))},
                       class_names=[*data.class_names, "other garment"])
    return select(get_classifier("logreg"), data, "weights", seed, tta and X is None).model


def _protocol(model, data, unknown, seed: int, tta: bool) -> str:  # noqa: ANN001
    from clothprobe.classifiers.rejection import fit_rejection

    figures = fit_rejection(model, data, unknown, tta=tta, seed=seed).figures
    r = figures["report"]
    summary = (f"Chosen on validation ({figures['tuning']['validation_known']}) + the tuning half "
               f"({figures['tuning']['unknown']} photos): **{figures['score']}**, threshold {figures['threshold']:.4g}. "
               f"Measured on {r['n_known']} test + {r['n_unknown']} unknown photos: keeps {100 * r['known_kept']:.1f}% "
               f"of test photos, rejects {100 * r['unknown_rejected']:.1f}% of unknown ones; test accuracy "
               f"{100 * r['accuracy']:.1f}% -> {100 * r['accuracy_with_reject']:.1f}% with rejected photos counted "
               f"wrong ({r['accuracy_cost_pp']:.1f} pp); accuracy of the photos kept {100 * r['accuracy_of_kept']:.1f}%.")
    lines = [summary, "", "| score | tuning AUROC | AUROC (95% CI) | FPR@95 (95% CI) |", "|---|---|---|---|"]
    for name, e in r["scores"].items():
        mark = " (chosen)" if name == figures["score"] else ""
        lines.append(f"| {name}{mark} | {figures['tuning_auroc'][name]:.3f} | {_f(e, 'auroc')} | {_f(e, 'fpr95')} |")
    lines += ["", "Per type (reporting half, chosen score): " + ", ".join(
        f"{t} AUROC {v['auroc']:.3f}, rejected {100 * v['rejected']:.0f}%" for t, v in r["per_type"].items())]
    lines += ["", "Operating points (`cli fit --unknown-cost`: the validation accuracy the threshold may cost), "
              "measured on test + the reporting half:", "",
              "| --unknown-cost (pp) | threshold | test kept % | unknown rejected % | test accuracy cost pp |",
              "|---|---|---|---|---|"]
    for cost in COSTS:
        f = fit_rejection(model, data, unknown, tta=tta, seed=seed, max_cost=cost / 100).figures
        lines.append(f"| {cost:g} | {f['threshold']:.4g} | {100 * f['report']['known_kept']:.1f} | "
                     f"{100 * f['report']['unknown_rejected']:.1f} | {f['report']['accuracy_cost_pp']:.1f} |")
    return "\n".join(lines)


def _leave_one_out(model, data, unknown, seed: int, tta: bool) -> str:  # noqa: ANN001
    from clothprobe.classifiers import openset
    from clothprobe.classifiers.rejection import output_of, subset

    n, test, val = len(data.class_names), data.splits["test"], data.splits["validation"]
    scorer = openset.OpenSetScorer().fit(data.splits["train"].X, data.splits["train"].y)
    known_val, known_test = output_of(model, val, n, tta), output_of(model, test, n, tta)
    correct = known_test.proba.argmax(1) == test.y
    rows, header = [], None
    for t, name in enumerate(unknown.type_names):
        others, held = np.flatnonzero(unknown.rows.y != t), np.flatnonzero(unknown.rows.y == t)
        chosen = openset.tune(scorer, known_val, output_of(model, subset(unknown.rows, others), n, tta), known_y=val.y,
                              seed=seed)
        k_all = chosen.every_value(known_test)
        u_all = chosen.every_value(output_of(model, subset(unknown.rows, held), n, tta))
        evals = {s: openset.evaluate(k_all[s], u_all[s], seed=seed) for s in k_all}
        kept = ~chosen.is_unknown(k_all[chosen.score])
        cost = 100 * (correct.mean() - (correct & kept).mean())
        header = header or list(evals)
        rows.append(f"| {name} ({len(held)}) | {chosen.score} | {_f(evals[chosen.score], 'auroc')} | "
                    f"{_f(evals[chosen.score], 'fpr95')} | {100 * kept.mean():.1f} | {cost:.1f} | "
                    + " | ".join(f"{evals[s]['auroc']:.3f}" for s in header) + " |")
    head = ("| left-out type (photos) | chosen on the other types | AUROC (95% CI) | FPR@95 (95% CI) | test kept % | "
            "accuracy cost pp | " + " | ".join(f"AUROC {s}" for s in header) + " |")
    return "\n".join([head, "|" + "---|" * (6 + len(header)), *rows])


def _negatives(model, data, unknown, seed: int) -> str:  # noqa: ANN001
    """Outlier exposure, left-out type by type: the other types' photos split (seeded, per type) into negatives
    and tuning photos. Three ways, all tuned on the same tuning photos and measured on the left-out type:
    no negatives; negatives as the k-NN contrast set (cli fit --negatives); negatives as an extra class of the
    head (score 1 - its probability; the head's C chosen on validation)."""
    from clothprobe.classifiers import openset
    from clothprobe.classifiers.rejection import output_of, subset

    train, val, test = data.splits["train"], data.splits["validation"], data.splits["test"]
    n = len(data.class_names)
    known_val, known_test = output_of(model, val, n, False), output_of(model, test, n, False)
    lines = [("| left-out type | tuning / negative photos | no negatives: chosen, AUROC | --negatives (k-NN contrast): "
              "chosen, AUROC | negatives as an extra class: AUROC | extra class: test accuracy |"), "|---|---|---|---|---|---|"]
    for t, name in enumerate(unknown.type_names):
        others, held = np.flatnonzero(unknown.rows.y != t), np.flatnonzero(unknown.rows.y == t)
        neg_part, tune_part = openset.split_unknown(unknown.rows.y[others], seed)
        negatives, tuning = others[neg_part], others[tune_part]
        tuning_out = output_of(model, subset(unknown.rows, tuning), n, False)
        held_out = output_of(model, subset(unknown.rows, held), n, False)
        cells = []
        for bank in (None, unknown.rows.X[negatives]):
            scorer = openset.OpenSetScorer().fit(train.X, train.y, bank)
            chosen = openset.tune(scorer, known_val, tuning_out, known_y=val.y, seed=seed)
            e = openset.evaluate(chosen.values(known_test), chosen.values(held_out), seed=seed)
            cells.append(f"{chosen.score}, {_f(e, 'auroc')}")
        extra = _head(data, seed, np.vstack([train.X, unknown.rows.X[negatives]]),
                      np.concatenate([train.y, np.full(len(negatives), n)]))
        p_test, p_held = extra.predict_proba(test.X), extra.predict_proba(unknown.rows.X[held])
        e = openset.evaluate(1 - p_test[:, n], 1 - p_held[:, n], seed=seed)
        accuracy = float(np.mean(p_test[:, :n].argmax(1) == test.y))
        lines.append(f"| {name} ({len(held)}) | {len(tuning)} / {len(negatives)} | {cells[0]} | {cells[1]} | "
                     f"{_f(e, 'auroc')} | {100 * accuracy:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--unknown", type=Path, default=ROOT.parent / "shared" / "data" / "unknown-garments",
                   help="The folder of other garments (featurized here like the dataset, as fit --unknown does).")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--backbone", default="xception")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-negatives", action="store_true", help="Skip the outlier-exposure experiment.")
    p.add_argument("--taps", default="final", help="final, last-K, all or tap names, as for fit --taps (not auto)")
    p.add_argument("--tta", action="store_true", help="Average the flipped view's probabilities (caches with it).")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "openset.md")
    a = p.parse_args()
    if a.taps == "auto":
        p.error("--taps auto stands for four tap sets; give one (final, last-4, all, ...)")
    if a.tta and not a.no_negatives:
        p.error("the outlier-exposure experiment runs without the flipped view: add --no-negatives to --tta")

    from clothprobe.classifiers.data import load_feature_set
    from clothprobe.classifiers.rejection import load_unknown, with_taps
    from clothprobe.classifiers.taps import restrict, tap_candidates

    data = load_feature_set(a.backbone, a.dataset, a.features)
    (choice,) = tap_candidates(data, a.taps)
    data = restrict(data, choice)
    unknown = with_taps(load_unknown(a.unknown, a.features, data, tta=a.tta), data, a.tta)
    model = _head(data, a.seed, tta=a.tta)
    loo = _leave_one_out(model, data, unknown, a.seed, a.tta)
    parts = ["## cli fit --unknown's protocol", _protocol(model, data, unknown, a.seed, a.tta),
             "## Leave one garment type out", loo]
    if not a.no_negatives:
        parts += ["## Outlier exposure, leave one garment type out", _negatives(model, data, unknown, a.seed)]
    parts.append(f"{a.backbone} features, taps {a.taps} ({data.splits['train'].X.shape[1]} columns), TTA "
                 f"{'on' if a.tta else 'off'}, logistic regression; seed {a.seed}; {os.cpu_count()} CPU cores.")
    write_report(a.report, "\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
