"""Benchmark: `cli featurize` against the reference notebooks' pipeline, side by side in one run.

For each backbone, on the same images and the same ImageNet base:
  reference   ImageDataGenerator(preprocessing_function=preprocess_input).flow_from_directory(...)
              + model.predict, float32 (the notebooks' own pipeline)
  clothprobe  featurize() with its defaults (runtime and precision chosen for this machine)
  clothprobe-keras   featurize() with --runtime keras --precision float32 (separates pipeline from runtime)
  cached rerun       `cli featurize` again on the unchanged folder (whole command, Python start-up included)
Each runs in its own process, so peak memory (ru_maxrss) is that pipeline's alone.

Prints a table with images/s (steady state: after model build and one warm-up batch, for every pipeline),
the ratio to the reference, wall seconds of the whole process after interpreter start-up (imports, model
build, conversion included), peak memory and the cached rerun time; the cosine
between the default embeddings and float32 Keras ones; and, when full caches exist, logistic-regression
accuracy on them (C chosen on validation, test touched once). Writes the table to --report.

    python bench/featurize.py --weights ~/.cache/offline-imagenet            # validation split (341 images)
    python bench/featurize.py --weights DIR --split train --limit 640 --backbones xception
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: list[str]) -> dict:
    """Run this script in a fresh process for one measurement; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_reference(backbone: str, data: str, weights: str, batch: int) -> dict:
    """The notebooks' pipeline: ImageDataGenerator + flow_from_directory + model.predict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it as legacy

    from clothprobe.featurize.backbones import get_backbone

    bb = get_backbone(backbone)
    size = bb.input_size
    make = getattr(keras.applications, bb.constructor)
    base = make(weights=weights, include_top=False, input_shape=(size, size, 3))
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D()])
    model.predict(np.zeros((batch, size, size, 3), np.float32), verbose=0)  # warm-up, as featurize does
    gen = ImageDataGenerator(preprocessing_function=bb.preprocess_fn()).flow_from_directory(
        data, target_size=(size, size), batch_size=batch, shuffle=False, class_mode="categorical")
    start = time.perf_counter()
    emb = model.predict(gen, verbose=0)
    seconds = time.perf_counter() - start
    return {"images": len(emb), "seconds": seconds, "wall": time.perf_counter() - STARTED,
            "peak_rss_mb": peak_rss_mb()}


def run_clothprobe(backbone: str, data: str, weights: str, batch: int, out: str, runtime: str, precision: str) -> dict:
    from clothprobe.featurize import featurize

    r = featurize(data, backbone=backbone, weights=weights, batch_size=batch, out=out, runtime=runtime,
                  precision=precision)
    return {"images": r.computed, "seconds": r.model_seconds, "wall": time.perf_counter() - STARTED, "runtime": r.runtime,
            "precision": r.precision, "peak_rss_mb": peak_rss_mb()}


def subset(data: Path, split: str, limit: int | None, dest: Path) -> int:
    """A single-split copy (symlinks) of one split, the first ``limit`` images in sorted order."""
    files = sorted((data / split).glob("*/*"))
    files = [f for f in files if not f.name.startswith(".")][:limit]
    for f in files:
        link = dest / "train" / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.resolve())
    return len(files)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def logreg_accuracy(cache_path: Path) -> tuple[float, float, float] | None:
    """Standardised logistic regression; C chosen on validation; returns (C, val acc, test acc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from clothprobe.featurize import load_features

    if not cache_path.is_file():
        return None
    c = load_features(cache_path)
    if not {"train", "validation", "test"} <= set(c.splits):
        return None
    tr, va, te = c.split("train"), c.split("validation"), c.split("test")
    best = None
    for C in (0.01, 0.03, 0.1, 0.3, 1.0):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(tr.embeddings, tr.labels)
        val = model.score(va.embeddings, va.labels)
        if best is None or val > best[1]:
            best = (C, val, model)
    C, val, model = best
    return C, val, model.score(te.embeddings, te.labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=Path(os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "~/.cache/offline-imagenet")).expanduser(),
                   help="directory with <backbone>_notop.weights.h5 (see offline_weights.py)")
    p.add_argument("--backbones", default="vgg16,xception")
    p.add_argument("--split", default="validation", help="split whose images are featurized")
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--features", type=Path, default=ROOT / "features" / "clothing-dataset-small",
                   help="full caches to score with logistic regression, if present")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "featurize.md")
    p.add_argument("--_reference", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_clothprobe", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._reference:
        bb, data, weights = a._reference
        print(json.dumps(run_reference(bb, data, weights, a.batch_size)))
        return
    if a._clothprobe:
        bb, data, weights, out, runtime = a._clothprobe
        precision = "float32" if runtime == "keras" else "auto"
        print(json.dumps(run_clothprobe(bb, data, weights, a.batch_size, out, runtime, precision)))
        return

    from clothprobe.featurize import load_features

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = subset(a.data, a.split, a.limit, tmp / "data")
        print(f"{n} images from {a.data / a.split}, batch {a.batch_size}, {os.cpu_count()} CPU cores", flush=True)
        for bb in a.backbones.split(","):
            weights = str(a.weights / f"{bb}_notop.weights.h5")
            ref = child(["--_reference", bb, str(tmp / "data" / "train"), weights, "--batch-size", str(a.batch_size)])
            ours = child(["--_clothprobe", bb, str(tmp / "data"), weights, str(tmp / f"{bb}.h5"), "auto",
                          "--batch-size", str(a.batch_size)])
            keras_fp32 = child(["--_clothprobe", bb, str(tmp / "data"), weights, str(tmp / f"{bb}-keras.h5"), "keras",
                                "--batch-size", str(a.batch_size)])
            start = time.perf_counter()
            rerun = subprocess.run([sys.executable, "-m", "clothprobe.cli", "featurize", "--data", str(tmp / "data"),
                                    "--backbone", bb, "--weights", weights, "--out", str(tmp / f"{bb}.h5")],
                                   capture_output=True, text=True)
            rerun_s = time.perf_counter() - start
            assert rerun.returncode == 0 and "computed 0" in rerun.stdout, rerun.stdout + rerun.stderr
            ref_rate = ref["images"] / ref["seconds"]
            for name, r in (("reference (IDG + predict, keras fp32)", ref),
                            (f"clothprobe ({ours['runtime']}, {ours['precision']})", ours),
                            ("clothprobe (keras, float32)", keras_fp32)):
                rate = r["images"] / r["seconds"]
                rows.append((bb, name, r["images"], f"{rate:.2f}", f"{rate / ref_rate:.2f}x", f"{r['wall']:.1f}",
                             f"{r['peak_rss_mb']:.0f}"))
            rows.append((bb, "clothprobe cached rerun (whole command)", n, "", "", f"{rerun_s:.2f}", ""))
            cos = cosine(load_features(tmp / f"{bb}.h5").split("train").embeddings,
                         load_features(tmp / f"{bb}-keras.h5").split("train").embeddings)
            notes.append(f"{bb}: cosine(default, keras float32) min {cos.min():.6f}, mean {cos.mean():.6f}")
            acc = logreg_accuracy(a.features / f"{bb}.h5")
            if acc:
                notes.append(f"{bb}: logistic regression on full cache {a.features / f'{bb}.h5'}: C={acc[0]} "
                             f"(chosen on validation), validation {acc[1]:.4f}, test {acc[2]:.4f}")
            print(f"{bb} done", flush=True)

    header = ("backbone", "pipeline", "images", "img/s", "vs reference", "wall s", "peak MB")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    print(text)
    a.report.parent.mkdir(parents=True, exist_ok=True)
    a.report.write_text(f"`python bench/featurize.py {' '.join(sys.argv[1:])}`\n\n{text}")
    print(f"written to {a.report}")


if __name__ == "__main__":
    main()
