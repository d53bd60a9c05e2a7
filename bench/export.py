"""Benchmark: `cli export RUN --out FILE.onnx` against the run's own `cli predict`, on the real dataset's test photos.

Two runs as the main job fits its choice (Xception, every tap cached with the flipped view; `cli fit --clf logreg
--taps last-4 --tta`): one featurized at float32 (`cli featurize --precision float32`), one at the default
precision (int8: NNCF on OpenVINO, calibrated on 300 training photos). The float32 run is exported at float32,
the int8 run at int8 (NNCF, calibrated on the photos its cache recorded, as featurize quantized the run's
network) and, for comparison, at float32. Each file runs in plain onnxruntime on the test photos decoded as
featurize decodes them; against the run's predict on the same photos: top-1 agreement and the largest
probability difference, and the accuracy of both against the true classes. Also the export's wall time, the
file's size and the file's throughput here (onnxruntime's default threads, batches of 16, decoding not
included).

Targets (issue 29): float32 export of the float32 run: top-1 equal on >= 99.7% of photos, probabilities within
1e-3; int8 export of the int8 run: top-1 equal on >= 99%, accuracy within 0.5 pp of the run's.

    CLOTHPROBE_WEIGHTS_DIR=~/.cache/offline-imagenet python bench/export.py --work /tmp/bench-export
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from results_file import write_report

from featurize import cpu_line, table  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
BATCH = 16


def make_run(data: Path, work: Path, precision: str, weights: str) -> tuple[Path, str]:
    """Featurize (``precision``: float32, or auto: the default) and fit the main job's choice; the run and what
    the cache was made at."""
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    features = work / f"features-{precision}"
    done = featurize(data, backbone="xception", features_dir=features, weights=weights, tta=True, precision=precision)
    (run,) = fit(data.name, backbone="xception", clf="logreg", balance="weights", tta=True, taps="last-4",
                 features_dir=features, models_dir=work / f"models-{precision}")
    return run.run_dir, done.precision


def run_file(path: Path, photos: list[Path]) -> tuple[np.ndarray, float]:
    """The file's probabilities for ``photos`` (decoded as featurize decodes them) and its images per second."""
    import onnxruntime as ort

    from clothprobe.featurize.embed import decoded_batches

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = int(session.get_modelmeta().custom_metadata_map["clothprobe.input_size"])
    rows, seconds = [], 0.0
    for _, batch in decoded_batches(photos, size, BATCH):
        images = np.stack([image for image, _ in batch])  # the dataset's photos all decode
        started = time.perf_counter()
        rows.append(session.run(["probabilities"], {"images": images})[0])
        seconds += time.perf_counter() - started
    return np.vstack(rows), len(photos) / seconds


def compare(label: str, run_dir: Path, out: Path, precision: str, photos: list[Path], truth: np.ndarray) -> tuple:
    from clothprobe.export.build import export_run
    from clothprobe.runs.predicting import predict

    result = predict(photos, run_dir, batch_size=BATCH)
    expected = np.array([[p.probabilities[c] for c in result.classes] for p in result.predictions])
    done = export_run(run_dir, out, precision=precision)
    got, rate = run_file(done.path, photos)
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    acc_run, acc_file = float((expected.argmax(1) == truth).mean()), float((got.argmax(1) == truth).mean())
    return (label, precision, f"{done.megabytes:.1f}", f"{done.seconds:.0f}", f"{100 * agree:.2f}",
            f"{np.abs(got - expected).max():.2e}", f"{100 * acc_run:.2f}", f"{100 * acc_file:.2f}",
            f"{100 * (acc_file - acc_run):+.2f}", f"{rate:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", default="imagenet", help="as cli featurize --weights (CLOTHPROBE_WEIGHTS_DIR)")
    p.add_argument("--work", type=Path, default=None, help="a folder to keep caches, runs, files and the model "
                                                           "store in (reused by a rerun); default: a temporary one")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "export.md")
    a = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="clothprobe-bench-export-") as tmp:
        work = (a.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("CLOTHPROBE_HOME", str(work / "home"))
        photos = sorted(f for f in (a.data / "test").rglob("*") if f.is_file())
        from clothprobe.runs.directory import read_manifest

        float_run, float_made = make_run(a.data, work, "float32", a.weights)
        int8_run, int8_made = make_run(a.data, work, "auto", a.weights)
        classes = read_manifest(float_run).classes
        truth = np.array([classes.index(f.parent.name) for f in photos])
        rows = [compare(f"{float_made} run", float_run, work / "float32.onnx", "float32", photos, truth),
                compare(f"{int8_made} run", int8_run, work / "int8.onnx", "int8", photos, truth),
                compare(f"{int8_made} run", int8_run, work / "int8-run-float32.onnx", "float32", photos, truth)]
    load_after = os.getloadavg()
    lines = [f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
             f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}.", "",
             f"{len(photos)} test photos of {a.data.name}; runs: Xception, every tap and the flipped view cached, "
             f"`cli fit --clf logreg --taps last-4 --tta`. Targets: float32 export of the float32 run >= 99.7% "
             f"top-1 agreement and max |p diff| <= 1e-3; int8 export of the int8 run >= 99% and accuracy within "
             f"0.5 pp.", ""]
    lines += table(("run (featurized at)", "export", "file MB", "export s", "top-1 agreement %", "max abs p diff",
                    "predict accuracy %", "file accuracy %", "diff pp", "file img/s"), rows)
    write_report(a.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
