"""Benchmark: `cli featurize` at each precision against the reference notebooks' pipeline, side by side in
one run, and what the model store buys `cli predict`.

For each backbone, on the same photos (a split of the real dataset) and the same ImageNet weights:
  reference       ImageDataGenerator(preprocessing_function=preprocess_input).flow_from_directory(...)
                  + model.predict, Keras float32 (the notebooks' own pipeline)
  float32 / bfloat16 / int8    featurize() on OpenVINO at that precision and 8, 16, 32 rows per request
                  (bfloat16 only where the CPU has bfloat16 units; int8 calibrated on 300 training photos)
  default         featurize() as a user runs it: auto precision (int8, guarded) and the rows measured
                  (timed as on a dataset of 800+ photos, whatever --limit says)
Each row also shows its share of the best end-to-end rate measured and how busy the network was in the
embedding loop (seconds inside the network / loop seconds: decoding runs ahead in threads).
Each pipeline runs in its own process; img/s is the embedding loop after the model is built (a stored
model for clothprobe, measured on its second run; a built one for the reference, the better of two
runs); "network alone" times clothprobe's stored network with its preprocessing on one fixed batch,
nothing decoded: the most the pipeline could reach on this CPU. Then, on full caches of the whole dataset
at each precision: cosine to float32, and logistic regression (C chosen on validation, test touched once) with
95% bootstrap intervals and an exact McNemar test of each precision against float32 on the same test photos.
Then `cli predict` of one photo with a cold and a warm model store, against `python -c "import tensorflow"`,
and a cached rerun of a folder holding undecodable files. Names the CPU; writes bench/results/featurize.md.

    python bench/featurize.py --weights ~/.cache/offline-imagenet
    python bench/featurize.py --backbones xception --limit 64 --no-full      # a quick look
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_report  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
PRECISIONS = ("float32", "bfloat16", "int8")


def cpu_line() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    field = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in info.splitlines() if ":" in ln}
    flags = field.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{field.get('Model name', '?')} (CPU family {field.get('CPU family', '?')}), {os.cpu_count()} cores, "
            f"flags: {' '.join(wanted)}" + (f"; ONEDNN_MAX_CPU_ISA={cap} (AVX2 stand-in)" if cap else ""))


def child(args: list[str], env: dict | None = None) -> dict:
    """This script in a fresh process for one measurement; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_reference(backbone: str, data: str, weights: str, batch: int) -> dict:
    """The notebooks' pipeline: ImageDataGenerator + flow_from_directory + model.predict."""
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator  # Keras 3 keeps it as legacy

    from clothprobe.featurize.model.backbones import get_backbone

    bb = get_backbone(backbone)
    size = bb.input_size
    base = getattr(keras.applications, bb.constructor)(weights=weights, include_top=False, input_shape=(size, size, 3))
    model = keras.Sequential([base, keras.layers.GlobalAveragePooling2D()])
    model.predict(np.zeros((batch, size, size, 3), np.float32), verbose=0)  # warm-up
    preprocess = importlib.import_module(f"keras.applications.{bb.keras_dir}").preprocess_input
    gen = ImageDataGenerator(preprocessing_function=preprocess).flow_from_directory(
        data, target_size=(size, size), batch_size=batch, shuffle=False, class_mode="categorical")
    start = time.perf_counter()
    emb = model.predict(gen, verbose=0)
    return {"images": len(emb), "seconds": time.perf_counter() - start}


def run_clothprobe(backbone: str, data: str, weights: str, batch: int | None, out: str, precision: str,
                   alone: bool) -> dict:
    """One featurize run (a fresh cache ``out``); ``batch`` None and ``precision`` auto: the defaults, with the
    rows per request timed as for a dataset of ``WORTH_TIMING`` photos or more (the few photos timed here
    would otherwise run untimed at ``UNTIMED_ROWS``)."""
    from clothprobe.featurize import featurize
    from clothprobe.featurize.engines.local import LocalEngine
    from clothprobe.featurize.model import rows as rows_module

    if batch is None:
        rows_module.WORTH_TIMING = 0  # this child process only

    engine = LocalEngine()
    r = featurize(data, backbone=backbone, weights=weights, batch_size=batch, out=out, runtime="openvino",
                  precision=precision, features_dir=str(Path(out).parent / "catalog"), engine=engine)
    rows = engine.batch_size or batch
    return {"images": r.computed, "seconds": r.model_seconds, "precision": r.precision, "rows": rows,
            "busy": engine.network_seconds / r.model_seconds if r.model_seconds else 0.0,
            "alone": network_alone(out, rows, weights) if alone else None}


def network_alone(cache: str, batch: int, weights: str, seconds: float = 8.0) -> float:
    """img/s of the cache's stored network (with its preprocessing and pooling) on one fixed batch, nothing
    decoded: the ceiling of the featurize pipeline on this CPU."""
    from clothprobe.featurize import load_features
    from clothprobe.featurize.embed import open_embedder

    embedder = open_embedder(load_features(cache).recipe, batch_size=batch, weights=weights)
    size = embedder.recipe.input_size
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    embedder.embed_array(images)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed_array(images)
        n += batch
    return n / (time.perf_counter() - start)


def subset(data: Path, split: str, limit: int | None, dest: Path) -> int:
    """A single-split copy (symlinks) of one split, the first ``limit`` images in sorted order."""
    files = [f for f in sorted((data / split).glob("*/*")) if not f.name.startswith(".")][:limit]
    for f in files:
        link = dest / "train" / f.parent.name / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.resolve())
    return len(files)


def speed_rows(a: argparse.Namespace, tmp: Path, backbone: str, precisions: list[str], home: Path) -> list:
    """The seed pipeline, then each precision at 8/16/32 rows per request and the default (auto precision,
    measured rows), end to end and network alone, each against the reference and the best rate measured."""
    weights = str(a.weights / f"{backbone}_notop.weights.h5")
    env = {"CLOTHPROBE_HOME": str(home)}
    # best of two: a process run right after another backbone's was measured at half speed here (VGG16 after
    # Xception: 8.3 against 15.8 img/s, reproducibly, even after a minute's pause), an effect a second run clears
    refs = [child(["--_reference", backbone, str(tmp / "data" / "train"), weights, "--batch-size", "32"], env)
            for _ in range(2)]
    ref = max(refs, key=lambda r: r["images"] / r["seconds"])
    ref_rate = ref["images"] / ref["seconds"]
    measured = []
    for p in [*precisions, "auto"]:
        # a first run fills the store (export, quantization, self-check, rows timing, guard); then measured runs
        child(["--_clothprobe", backbone, str(tmp / "data"), weights, str(tmp / f"warm-{backbone}-{p}.h5"), p], env)
        for rows in (a.rows if p != "auto" else [None]):
            size = [] if rows is None else ["--batch-size", str(rows)]
            r = child(["--_clothprobe", backbone, str(tmp / "data"), weights, str(tmp / f"{backbone}-{p}-{rows}.h5"),
                       p, *size, "--_alone"], env)
            measured.append((p, rows, r))
    best = max(r["images"] / r["seconds"] for _, _, r in measured)
    out = [(backbone, "reference (IDG + predict, Keras float32), best of 2", "-", ref["images"], f"{ref_rate:.1f}",
            "1.00x", "-", "-", "-", "-")]
    for p, rows, r in measured:
        rate = r["images"] / r["seconds"]
        label = (f"default: auto -> {r['precision']}, rows timed as for 800+ photos" if p == "auto"
                 else f"{r['precision']}")
        out.append((backbone, label, r["rows"], r["images"], f"{rate:.1f}", f"{rate / ref_rate:.2f}x",
                     f"{100 * rate / best:.0f}%", f"{100 * r['busy']:.0f}%", f"{r['alone']:.1f}",
                     f"{r['alone'] / ref_rate:.2f}x"))
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def logreg(cache_path: Path) -> dict:
    """Standardised logistic regression, C chosen on validation; test predicted once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from clothprobe.classifiers.stats import bootstrap_intervals
    from clothprobe.featurize import load_features

    c = load_features(cache_path)
    tr, va, te = c.split("train"), c.split("validation"), c.split("test")
    best = None
    for C in (0.003, 0.01, 0.03, 0.1, 0.3):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000)).fit(tr.embeddings, tr.labels)
        val = model.score(va.embeddings, va.labels)
        if best is None or val > best[1]:
            best = (C, val, model)
    C, val, model = best
    pred = model.predict(te.embeddings)
    n = len(c.class_names)
    return {"C": C, "val": val, "test": float((pred == te.labels).mean()), "paths": list(te.paths),
            "correct": (pred == te.labels).tolist(),
            "test_ci": bootstrap_intervals(te.labels, pred, n)["accuracy"],
            "val_ci": bootstrap_intervals(va.labels, model.predict(va.embeddings), n)["accuracy"]}


def accuracy_rows(a: argparse.Namespace, backbone: str, precisions: list[str], home: Path) -> list:
    """Full caches of the whole dataset at each precision (kept under --features for reruns)."""
    from clothprobe.classifiers.stats import mcnemar
    from clothprobe.featurize import load_features

    weights = str(a.weights / f"{backbone}_notop.weights.h5")
    results, rows = {}, []
    for p in precisions:
        out = a.features / f"{backbone}-{p}.h5"
        child(["--_clothprobe", backbone, str(a.data), weights, str(out), p], {"CLOTHPROBE_HOME": str(home)})
        results[p] = logreg(out)
    ref = load_features(a.features / f"{backbone}-float32.h5")
    for p in precisions:
        r = results[p]
        cos = cosine(load_features(a.features / f"{backbone}-{p}.h5").split("test").embeddings, ref.split("test").embeddings)
        test = mcnemar(np.array(r["correct"]), np.array(results["float32"]["correct"]))
        vs = "-" if p == "float32" else f"{100 * (r['test'] - results['float32']['test']):+.1f} pp (McNemar p={test.p_value:.2f})"
        rows.append((backbone, p, f"{cos.min():.4f} / {cos.mean():.4f}", r["C"],
                     f"{100 * r['val']:.1f} [{100 * r['val_ci'][0]:.1f}, {100 * r['val_ci'][1]:.1f}]",
                     f"{100 * r['test']:.1f} [{100 * r['test_ci'][0]:.1f}, {100 * r['test_ci'][1]:.1f}]", vs))
    return rows


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start, proc


def predict_rows(a: argparse.Namespace, tmp: Path, backbone: str, precision: str) -> list:
    """`cli predict` of one photo, cold and warm store, against importing TensorFlow."""
    from clothprobe.classifiers import fit

    cache = a.features / f"{backbone}-{precision}.h5"
    features = tmp / "fit-features"
    (features / "clothing-dataset-small").mkdir(parents=True, exist_ok=True)
    shutil.copy(cache, features / "clothing-dataset-small" / f"{backbone}.h5")
    (run,) = fit("clothing-dataset-small", backbone=backbone, clf="logreg", balance="weights",
                 features_dir=features, models_dir=tmp / "models")
    photo = next(iter(sorted((a.data / "test" / "shirt").glob("*.jpg"))))
    home = tmp / "predict-home"
    env = {"CLOTHPROBE_HOME": str(home), "CLOTHPROBE_WEIGHTS_DIR": str(a.weights)}
    cmd = [sys.executable, "-m", "clothprobe.cli", "predict", str(photo), "--model", str(run.run_dir)]
    cold, proc = timed(cmd, env)
    assert proc.returncode == 0, proc.stderr
    warm = min(timed(cmd, env)[0] for _ in range(3))
    tf_import = min(timed([sys.executable, "-c", "import tensorflow"])[0] for _ in range(3))
    return [(f"cli predict, 1 photo, cold store ({backbone} {precision}: export + compile)", f"{cold:.2f}"),
            ("cli predict, 1 photo, warm store (best of 3)", f"{warm:.2f}"),
            ('python -c "import tensorflow" (best of 3)', f"{tf_import:.2f}")]


def rerun_row(a: argparse.Namespace, tmp: Path, backbone: str, home: Path) -> list:
    """A cached rerun of a folder holding undecodable files: no model may load."""
    data = tmp / "with-bad-files"
    subset(a.data, "validation", 64, data)
    (data / "train" / "hat" / "empty.jpg").write_bytes(b"")
    good = next(iter(sorted((a.data / "validation" / "hat").glob("*.jpg"))))
    (data / "train" / "hat" / "truncated.jpg").write_bytes(good.read_bytes()[:2000])
    (data / "train" / "hat" / "notes.txt").write_text("not a photo")
    cmd = [sys.executable, "-m", "clothprobe.cli", "featurize", "--data", str(data), "--backbone", backbone,
           "--weights", str(a.weights), "--out", str(tmp / "bad.h5"), "--features-dir", str(tmp / "catalog")]
    env = {"CLOTHPROBE_HOME": str(home)}
    first = timed(cmd, env)[1]
    assert first.returncode == 0, first.stderr
    seconds, proc = timed(cmd, env)
    assert "computed 0" in proc.stdout and "skipped 3" in proc.stdout, proc.stdout + proc.stderr
    return [("cached rerun of 64 photos + 3 undecodable files, whole command", f"{seconds:.2f}")]


def table(header: tuple, rows: list) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", type=Path, default=Path(os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "~/.cache/offline-imagenet")).expanduser())
    p.add_argument("--backbones", default="xception,vgg16")
    p.add_argument("--split", default="validation", help="split whose photos are timed")
    p.add_argument("--limit", type=int, default=None, help="at most this many photos timed")
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", type=lambda v: [int(x) for x in v.split(",")], default=[8, 16, 32],
                   help="rows per request timed at each precision")
    p.add_argument("--no-full", action="store_true", help="skip full caches (accuracy) and predict timings")
    p.add_argument("--features", type=Path, default=ROOT / "features" / "bench", help="full caches, kept for reruns")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "featurize.md")
    p.add_argument("--_reference", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_clothprobe", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--_alone", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._reference:
        result = json.dumps(run_reference(*a._reference, a.batch_size or 32))
        (Path(a._reference[1]).parents[1] / f"reference-{a._reference[0]}-{os.getpid()}.json").write_text(result)
        print(result)
        return
    if a._clothprobe:
        backbone, data, weights, out, precision = a._clothprobe
        result = json.dumps(run_clothprobe(backbone, data, weights, a.batch_size, out, precision, a._alone))
        Path(out).with_suffix(".json").write_text(result)  # kept next to its cache: a cut-short run still shows it
        print(result)
        return

    from clothprobe.featurize.model.recipe import cpu_has_bf16, resolve_precision

    precisions = [q for q in PRECISIONS if q != "bfloat16" or cpu_has_bf16()]
    auto = resolve_precision("auto", "openvino")
    a.features.mkdir(parents=True, exist_ok=True)
    speed, accuracy, other = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = tmp / "home"  # a store of this run: compiled models and the int8 quantization are made here
        n = subset(a.data, a.split, a.limit, tmp / "data")
        print(f"{n} photos from {a.data / a.split}; {cpu_line()}", flush=True)
        for bb in a.backbones.split(","):
            speed += speed_rows(a, tmp, bb, precisions, home)
            print(f"{bb}: speed done", flush=True)
            if not a.no_full:
                accuracy += accuracy_rows(a, bb, precisions, home)
                print(f"{bb}: accuracy done", flush=True)
        first = a.backbones.split(",")[0]
        if not a.no_full:
            other += predict_rows(a, tmp, first, auto)
        other += rerun_row(a, tmp, first, home)
    load = os.getloadavg()
    lines = [f"CPU: {cpu_line()}. Photos timed: {n} ({a.split}). Load average at the end (1/5/15 min): "
             f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.", ""]
    lines += table(("backbone", "pipeline", "rows per request", "photos", "img/s end to end", "vs reference",
                    "share of best end-to-end rate", "network busy (share of the embedding loop)",
                    "network alone img/s (no decoding)", "network alone vs reference"), speed) + [""]
    if accuracy:
        lines += ["Full caches of all 3,781 photos; logistic regression with C chosen on validation (95% bootstrap "
                  "intervals; test touched once):", ""]
        lines += table(("backbone", "precision", "test cosine to float32 (min / mean)", "C", "val acc %",
                        "test acc %", "test vs float32"), accuracy) + [""]
    lines += table(("what", "wall seconds"), other)
    text = "\n".join(lines) + "\n"
    write_report(a.report, text)


if __name__ == "__main__":
    main()
