"""Benchmark: int8 calibrated on fewer photos, what it saves and whether it costs accuracy (validation only).

For each calibration size, in a child process of its own with a fresh model store: the int8 model is made
from nothing (export, calibration photos decoded, NNCF quantization: each step's wall and CPU seconds), then
the training and validation photos are embedded with it (every tap, original view) and logistic regression
is fitted as `cli fit` fits it (balance weights, C and the tap set chosen on validation). Reported: the build
seconds, the validation accuracy with its 95% bootstrap interval, and an exact McNemar test of each size
against the first on the same validation photos. The test split is never read.

    python bench/int8.py --weights ~/.cache/offline-imagenet --sizes 300,100
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from results_file import write_report  # bench/ is this script's folder, first on sys.path
from revisions import TREE, StepTimer, child_options, code_folder, cpu_line, load_line, run_child

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
STEPS = (
    ("clothprobe.featurize.model.runtimes", "export_float", "export", False),
    ("clothprobe.featurize.model.runtimes", "CalibrationSet.__iter__", "calibration photos decoded", True),
    ("clothprobe.featurize.model.runtimes", "quantize_int8", "NNCF quantization", False),
)


def _train_and_validation(data: Path, dest: Path) -> Path:
    """A copy (symbolic links) of the dataset's train and validation splits: the test split is not there."""
    for split in ("train", "validation"):
        for photo in sorted((data / split).glob("*/*")):
            link = dest / split / photo.parent.name / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo.resolve())
    return dest


def child(a: argparse.Namespace) -> None:
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    timer = StepTimer()
    for module, name, label, gen in STEPS:
        timer.wrap(module, name, label, generator=gen)
    work = Path(a.work)
    os.environ["CLOTHPROBE_HOME"] = str(work / "home")
    r = featurize(a.data, backbone=a.backbone, weights=a.weights, precision="int8", calibration_size=a.size,
                  features_dir=work / "features", taps="all")
    (run,) = fit(r.cache_path.parent.name, backbone=a.backbone, clf="logreg", balance="weights",
                 features_dir=work / "features", models_dir=work / "models")
    m = run.metrics
    Path(a.result).write_text(json.dumps({
        "size": a.size, "steps": timer.seconds, "cpu": timer.cpu, "embed_rate": r.images_per_second,
        "validation": m.validation.accuracy, "interval": list(m.validation.interval("accuracy")),
        "taps": m.taps["chosen"], "params": m.params, "held": _correct(run, a.backbone, work / "features")}))


def _correct(run, backbone: str, features: Path) -> list[bool]:  # a FitResult
    """Whether the chosen model classifies each validation photo right, in path order (for the paired test)."""
    from clothprobe.classifiers import load_feature_set, load_model
    from clothprobe.classifiers.taps import restrict, tap_candidates

    data = load_feature_set(backbone, run.metrics.dataset, features)
    (choice,) = tap_candidates(data, run.metrics.taps["chosen"])
    val = restrict(data, choice).splits["validation"]
    right = load_model(run.run_dir).predict_proba(val.X).argmax(1) == val.y
    return right[np.argsort(val.paths)].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", default=os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "imagenet"))
    p.add_argument("--backbone", default="xception")
    p.add_argument("--sizes", default="300,100")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "int8-calibration.md")
    child_options(p)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    from clothprobe.classifiers.stats import mcnemar

    load_before, results = load_line(), []
    with tempfile.TemporaryDirectory(prefix="clothprobe-int8-") as tmp:
        data = _train_and_validation(a.data, Path(tmp) / a.data.name)
        code = code_folder(None, Path(tmp) / "code")
        for size in (int(s) for s in a.sizes.split(",")):
            args = ["--child", "--size", str(size), "--work", f"{tmp}/work-{size}", "--result", f"{tmp}/{size}.json",
                    "--data", str(data), "--weights", a.weights, "--backbone", a.backbone]
            results.append(run_child(Path(__file__), args, code, Path(f"{tmp}/{size}.json")))
    first = np.array(results[0]["held"])
    lines = [f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before}, after {load_line()}. Code: {TREE}.",
             "", (f"{a.backbone}, every tap, original view; int8 made from nothing for each calibration size; "
                  "logistic regression (balance weights) with C and the tap set chosen on the 341 validation photos."),
             "", ("| calibration photos | export s | calibration decode s | NNCF quantization s (CPU s) | embed img/s | "
                  "taps, C chosen | validation acc % [95% CI] | vs first size on the same photos |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        test = mcnemar(np.array(r["held"]), first)
        low, high = r["interval"]
        lines.append(f"| {r['size']} | {r['steps'].get('export', 0):.1f} | "
                     f"{r['steps'].get('calibration photos decoded', 0):.1f} | "
                     f"{r['steps'].get('NNCF quantization', 0):.1f} ({r['cpu'].get('NNCF quantization', 0):.1f}) | "
                     f"{r['embed_rate']:.1f} | {r['taps']}, C {r['params'].get('C')} | "
                     f"{100 * r['validation']:.1f} [{100 * low:.1f}, {100 * high:.1f}] | "
                     f"{100 * test.difference:+.1f} pp, p = {test.p_value:.2f} ({test.only_a}/{test.only_b}) |")
    write_report(a.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
