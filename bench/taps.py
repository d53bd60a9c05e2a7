"""Benchmark: pooled taps from several blocks (issue 16) against the final layer alone, on the full data.

    python bench/taps.py --data ../shared/data/clothing-dataset-small          # featurizes what is missing
    python bench/taps.py --data DIR --sets xception,vgg16,vgg16+xception --select validation,cv

For each backbone it featurizes every tap once (``--taps all``; a cache already up to date is reused and
its recorded model time is reported), then, for each feature set and each tap request (``final``,
``all``, ``auto`` chosen on validation, and ``auto`` chosen by cv with ``--select ...,cv``), fits
logistic regression (C and the tap set chosen without the test split) and prints validation and test
accuracy with 95% bootstrap intervals, the exact McNemar test against final-only on the same test photos,
fit seconds (search included), the taps kept, and the validation accuracy per minute of featurizing.
It also times the compiled network with and without taps on the same decoded photos, interleaved in one
process (``--speed-images``); fits LightGBM and the dense head (``--heads``) on each tap set and on the last
4 taps reduced by a PCA per tap, timed; and reports each cache's size and what rounding the final tap to float16
too would cost in validation accuracy (every other tap is already float16 as embedded: featurize/model/taps.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from results_file import write_report

from featurize import cpu_line, table  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]


def _acc(block) -> str:  # noqa: ANN001 - a rundir.SplitMetrics
    low, high = block.interval("accuracy")
    return f"{100 * block.accuracy:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def _featurize(a: argparse.Namespace, backbone: str) -> dict:
    from clothprobe.featurize import featurize, load_features

    result = featurize(a.data, backbone=backbone, taps="all", features_dir=a.features, progress=False)
    cache = load_features(result.cache_path)
    per_image = cache.header.seconds_per_image
    images = sum(len(s) for s in cache.splits.values())
    return {"backbone": backbone, "img_s": 1 / per_image if per_image else float("nan"),
            "minutes": per_image * images / 60, "mb": cache.megabytes, "columns": sum(w for _, w in cache.taps),
            "taps": len(cache.taps), "recipe": cache.recipe, "calibration": _calibration_files(a.data, cache)}


def _calibration_files(data: Path, cache) -> tuple:  # noqa: ANN001 - a FeatureCache
    """The photos an int8 cache was calibrated on (featurize's sample of the training split, by content), so the
    final-only int8 network can be made for the speed comparison."""
    from clothprobe.featurize.model.calibration import calibration_sample

    if cache.recipe.precision != "int8":
        return ()
    train = cache.split("train")
    chosen = calibration_sample([(data / p, sha) for p, sha in zip(train.paths, train.sha256)])
    assert chosen.digest == cache.recipe.calibration, "the cache was calibrated on another sample"
    return chosen.files


def _speed(recipe, images: int, rounds: int, calibration: tuple = ()) -> tuple[float, float]:  # noqa: ANN001
    """img/s of the final-only and the all-taps network on the same photos, alternated ``rounds`` times."""
    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model.selfcheck import probe_batch

    batch = 32
    pixels = np.concatenate([probe_batch(recipe.input_size)] * (batch // 8))
    # each int8 network is made from the calibration photos if the store lacks it (another CLOTHPROBE_HOME)
    nets = {"final": open_embedder(recipe.with_taps(()), batch_size=batch, calibration_files=calibration),
            "taps": open_embedder(recipe, batch_size=batch, calibration_files=calibration)}
    seconds = {k: 0.0 for k in nets}
    for net in nets.values():
        net.embed_array(pixels)  # first call: set-up, not timed
    for _ in range(rounds):
        for name, net in nets.items():
            started = time.perf_counter()
            for _ in range(max(1, images // batch)):
                net.embed_array(pixels)
            seconds[name] += time.perf_counter() - started
    done = rounds * max(1, images // batch) * batch
    return done / seconds["final"], done / seconds["taps"]


def _float16_cost(a: argparse.Namespace, feature_set: str) -> tuple[float, float]:
    """Validation accuracy of logreg on all taps as stored (the final tap float32, the others float16) and with
    every column rounded to float16."""
    from dataclasses import replace

    from clothprobe.classifiers import load_feature_set
    from clothprobe.classifiers.registry import get_classifier
    from clothprobe.classifiers.select import select

    data = load_feature_set(feature_set, a.dataset, a.features)
    half = replace(data, splits={k: replace(s, X=s.X.astype(np.float16).astype(np.float32))
                                 for k, s in data.splits.items()})
    spec = get_classifier("logreg")
    return tuple(float((select(spec, d, "weights").held.proba.argmax(1) == d.splits["validation"].y).mean())
                 for d in (data, half))


def _fits(a: argparse.Namespace, feature_set: str, mode: str) -> list[dict]:
    """Every candidate tap set of ``auto`` fitted once (C chosen on validation, or cv), each scored on test
    for the table; the one ``auto`` keeps is picked by the same rule as ``cli fit`` (selection data only)."""
    from clothprobe.classifiers import load_feature_set
    from clothprobe.classifiers.metrics import classification_metrics
    from clothprobe.classifiers.registry import get_classifier
    from clothprobe.classifiers.select import predict_split, select
    from clothprobe.classifiers.stats import mcnemar
    from clothprobe.classifiers.taps import held_score, restrict, tap_candidates

    data = load_feature_set(feature_set, a.dataset, a.features)
    spec, rows = get_classifier("logreg"), []
    for choice in tap_candidates(data, "auto"):
        subset = restrict(data, choice)
        started = time.perf_counter()
        chosen = select(spec, subset, "weights", 0, False, "categorical", mode)
        seconds = time.perf_counter() - started
        test = subset.splits["test"]
        proba = predict_split(chosen.model, test, len(data.class_names), False)
        held = classification_metrics(chosen.held.y, chosen.held.proba, data.class_names, 0, chosen.held.source)
        rows.append({"set": feature_set, "select": mode, "taps": choice.name, "score": held_score(chosen.held.y, chosen.held.proba),
                     "val": _acc(held), "val_acc": held.accuracy, "correct": proba.argmax(1) == test.y,
                     "test": _acc(classification_metrics(test.y, proba, data.class_names, 0, "test split")),
                     "test_acc": float((proba.argmax(1) == test.y).mean()), "fit_s": seconds,
                     "columns": test.X.shape[1], "params": chosen.params})
        print(f"{feature_set:>16} {mode:<10} {choice.name:<7} val {rows[-1]['val']} test {rows[-1]['test']} "
              f"fit {seconds:.0f} s", flush=True)
    best = max(range(len(rows)), key=lambda i: (rows[i]["score"][0], -rows[i]["score"][1], -i))
    rows[best]["kept"] = True
    for r in rows:
        paired = mcnemar(r["correct"], rows[0]["correct"])
        r["mcnemar"] = "-" if r is rows[0] else (f"{100 * paired.difference:+.1f} pp, p={paired.p_value:.3f} "
                                                f"({paired.only_a}/{paired.only_b})")
    return rows


def _per_tap_pca(data, components: int):  # noqa: ANN001, ANN202 - a FeatureSet, the same reduced
    """Each tap of ``data`` projected on its first ``components`` principal axes, fitted on the training rows."""
    from dataclasses import replace

    from sklearn.decomposition import PCA

    from clothprobe.classifiers.data import SplitData, TapBlock

    train = data.splits["train"].X
    pcas = [PCA(min(components, b.width), random_state=0).fit(train[:, data.block_columns(i)])
            for i, b in enumerate(data.blocks)]

    def project(X: np.ndarray) -> np.ndarray:
        return np.hstack([p.transform(X[:, data.block_columns(i)]) for i, p in enumerate(pcas)]).astype(np.float32)

    splits = {k: SplitData(project(v.X), v.y, v.paths, None if v.X_flip is None else project(v.X_flip))
              for k, v in data.splits.items()}
    return replace(data, splits=splits, blocks=[TapBlock(b.backbone, b.tap, min(components, b.width)) for b in data.blocks])


def _heads_on_taps(a: argparse.Namespace, feature_set: str) -> list[tuple]:
    """LightGBM and the dense head (``--heads``) on every tap set ``auto`` offers, and on the last 4 taps reduced
    by a PCA per tap fitted on training rows: validation and test accuracy, fit seconds (search included)."""
    from clothprobe.classifiers import load_feature_set
    from clothprobe.classifiers.registry import get_classifier
    from clothprobe.classifiers.select import predict_split, select
    from clothprobe.classifiers.taps import restrict, tap_candidates

    data = load_feature_set(feature_set, a.dataset, a.features)
    choices = tap_candidates(data, "auto")
    variants = [(c.name, restrict(data, c), 0) for c in choices]
    last4 = next((c for c in choices if c.name == "last-4"), None)
    variants += [] if last4 is None else [(f"last-4, PCA {k} per tap", restrict(data, last4), k) for k in (64, 128)]
    rows = []
    for head in a.heads.split(","):
        for name, subset, components in variants:
            started = time.perf_counter()
            subset = _per_tap_pca(subset, components) if components else subset
            chosen = select(get_classifier(head), subset, "weights", 0)
            seconds = time.perf_counter() - started
            acc = [float((predict_split(chosen.model, subset.splits[s], len(data.class_names), False).argmax(1)
                          == subset.splits[s].y).mean()) for s in ("validation", "test")]
            rows.append((feature_set, head, name, subset.splits["train"].X.shape[1], f"{100 * acc[0]:.1f}",
                         f"{100 * acc[1]:.1f}", f"{seconds:.1f}"))
            print(" ".join(map(str, rows[-1])), flush=True)
    return rows


def _table(feats: list[dict], speeds: dict, half: dict, rows: list[dict]) -> str:
    lines = [("| backbone | taps cached | columns | cache MB | featurize img/s (min, all photos) | "
              "network img/s final -> all taps (ratio, same photos) | val acc as stored -> final tap float16 too |"),
             "|---|---|---|---|---|---|---|"]
    for f in feats:
        s, h = speeds[f["backbone"]], half[f["backbone"]]
        lines.append(f"| {f['backbone']} | {f['taps']} | {f['columns']} | {f['mb']:.0f} | {f['img_s']:.2f} "
                     f"({f['minutes']:.1f}) | {s[0]:.2f} -> {s[1]:.2f} ({s[1] / s[0]:.3f}) | "
                     f"{100 * h[0]:.1f} -> {100 * h[1]:.1f} |")
    minutes = {f["backbone"]: f["minutes"] for f in feats}
    lines += ["", ("| feature set | C chosen by | taps | columns | val acc (95% CI) | test acc (95% CI) | "
                   "test vs final, McNemar (only this / only final right) | fit s (C search) | "
                   "val acc per featurize minute |"),
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spent = sum(minutes[b] for b in r["set"].split("+"))
        kept = " **(auto keeps)**" if r.get("kept") else ""
        lines.append(f"| {r['set']} | {r['select']} | {r['taps']}{kept} | {r['columns']} | {r['val']} | {r['test']} | "
                     f"{r['mcnemar']} | {r['fit_s']:.0f} | {100 * r['val_acc'] / spent:.2f} pp/min ({spent:.1f} min) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "clothing-dataset-small")
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--sets", default="xception,vgg16,vgg16+xception")
    p.add_argument("--select", default="validation", help="validation, or validation,cv to add auto chosen by cv")
    p.add_argument("--speed-images", type=int, default=64)
    p.add_argument("--speed-rounds", type=int, default=2)
    p.add_argument("--heads", default="lgbm,dense", help="heads measured on wide tap sets ('' for none)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "taps.md")
    a = p.parse_args()

    backbones = sorted({b for s in a.sets.split(",") for b in s.split("+")}, key=a.sets.index)
    feats = [_featurize(a, b) for b in backbones]
    speeds = {f["backbone"]: _speed(f["recipe"], a.speed_images, a.speed_rounds, f["calibration"]) for f in feats}
    half = {b: _float16_cost(a, b) for b in backbones}
    rows = [row for s in a.sets.split(",") for mode in a.select.split(",") for row in _fits(a, s, mode)]
    heads = [row for s in a.sets.split(",") for row in (_heads_on_taps(a, s) if a.heads else [])]
    text = _table(feats, speeds, half, rows) + (
        f"\nLogistic regression, balance weights, no TTA; C chosen on the selection data (validation split, or "
        f"cv), the tap set kept by auto likewise; test accuracy shown for every candidate, never used to choose. "
        f"Val acc per featurize minute: the selection accuracy over the minutes of model time the feature set's "
        f"caches recorded. Featurize: {feats[0]['recipe'].runtime} {feats[0]['recipe'].precision}. "
        f"CPU: {cpu_line()}.\n")
    if heads:
        text += "\n" + "\n".join(table(("feature set", "head", "taps", "columns", "val acc", "test acc",
                                        "fit s (search included)"), heads)) + (
            "\n\nBalance weights, no TTA, settings chosen on the validation split; the PCA is fitted on training "
            "rows, its time included.\n")
    write_report(a.report, text)


if __name__ == "__main__":
    main()
