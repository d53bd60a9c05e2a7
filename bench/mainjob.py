"""Benchmark: the main job (`cli run`) from nothing, before and after side by side: wall time per stage and
per step of making the int8 model, the run it chooses, and how close featurizing comes to the network alone.

Each version runs in a child process of its own (``--baseline REV``: that git revision first, then this
working tree; without it, this tree alone), from nothing: a fresh CLOTHPROBE_HOME (no stored model: export,
calibration, int8 quantization, self-check, rows timing and the validation guard all happen) and fresh
features/models/reports folders. The job runs through ``job.run_all`` (what `cli run` calls), each stage
timed as it finishes: featurize per backbone (and inside it, each step of making the int8 model, exclusive
wall and CPU seconds: a step's time less the time of the timed steps it calls), each head's fits (its
balance modes together), the report. Then the stored int8 network alone (its preprocessing and pooling, one
fixed batch of random pixels at the job's rows per request, nothing decoded) is timed for the ratio of
featurize's rate to the network's own. The chosen run is the one with the best accuracy on what its
settings were chosen on (validation), as the report ranks them; its test accuracy is shown with its 95%
bootstrap interval. Names the CPU and the load average before and after.

    python bench/mainjob.py --weights ~/.cache/offline-imagenet --baseline d7f7c25
    python bench/mainjob.py --backbones xception --clf logreg   # a smaller job, this tree only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from results_file import write_report  # bench/ is this script's folder, first on sys.path
from revisions import TREE, StepTimer, child_options, code_folder, cpu_line, load_line, run_child, short_revision

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
ALONE_SECONDS = 10.0

# (module, function, label, generator): the steps of making and checking the int8 model, as each version names them
STEPS = (
    ("clothprobe.featurize.engines.plan", "index_files", "hash the photos", False),
    ("clothprobe.featurize.model.runtimes", "export_float", "export: Keras -> OpenVINO float IR", False),
    ("clothprobe.featurize.model.runtimes", "CalibrationSet.__iter__", "calibration photos decoded", True),
    ("clothprobe.featurize.model.runtimes", "quantize_int8", "int8 quantization (NNCF)", False),
    ("clothprobe.featurize.model.runtimes", "load_runner", "compile (OpenVINO, every model and rows)", False),
    ("clothprobe.featurize.model.selfcheck", "_embed_probe", "self-check against float32", False),
    ("clothprobe.featurize.model.rows", "request_rate", "rows per request timed (fixed batch)", False),
    ("clothprobe.featurize.model.guard", "accuracy_guard", "accuracy guard on validation", False),
)


def _network_alone(cache: Path, weights: str, flip: bool) -> dict:
    """Views per second of the cache's stored network at the rows the job ran, on one fixed batch."""
    import numpy as np

    from clothprobe.featurize import load_features
    from clothprobe.featurize.embed import open_embedder

    embedder = open_embedder(load_features(cache).recipe, flip=flip, weights=weights)
    size, views = embedder.recipe.input_size, 2 if flip else 1
    images = np.random.default_rng(0).integers(0, 256, (embedder.batch_size, size, size, 3), dtype=np.uint8)
    embedder.embed_array(images)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < ALONE_SECONDS:
        embedder.embed_array(images)
        n += embedder.batch_size * views
    return {"views_per_second": n / (time.perf_counter() - started), "rows": embedder.batch_size * views}


def child(a: argparse.Namespace) -> None:
    """One version's job, from nothing, in this process; its figures as JSON in ``a.result``."""
    from clothprobe.job import run_all

    timer = StepTimer()
    steps = [label for module, name, label, gen in STEPS if timer.wrap(module, name, label, generator=gen)]
    stages: list[dict] = []
    mark = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        seconds, mark[0] = now - mark[0], now
        return seconds

    def featurized(r) -> None:  # a FeaturizeResult
        views = r.computed * (2 if a.tta else 1)
        stages.append({"stage": f"featurize {r.backbone}", "seconds": lap(), "precision": r.precision,
                       "views": views, "loop_seconds": r.model_seconds, "cache": str(r.cache_path)})

    def fitted(r) -> None:  # a FitResult: a head's runs are timed together (a version may search them together)
        stage = f"fit {r.metrics.backbone} {r.metrics.classifier}"
        if stages and stages[-1]["stage"] == stage:
            stages[-1]["seconds"] += lap()
            stages[-1]["runs"] += 1
        else:
            stages.append({"stage": stage, "seconds": lap(), "runs": 1})

    work = Path(a.work)
    os.environ["CLOTHPROBE_HOME"] = str(work / "home")  # from nothing: an empty model store
    started = time.perf_counter()
    job = run_all(a.data, backbones=a.backbones, weights=a.weights, clf=a.clf, balance=a.balance, tta=a.tta,
                  features_dir=work / "features", models_dir=work / "models", reports_dir=work / "reports",
                  on_featurized=featurized, on_fit=fitted)
    stages.append({"stage": "report", "seconds": lap()})
    total = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    best = max(job.fits, key=lambda f: (f.metrics.validation.accuracy, -f.metrics.validation.log_loss)).metrics
    alone = {s["stage"]: _network_alone(Path(s["cache"]), a.weights, a.tta) for s in stages if "cache" in s}
    result = {"total": total, "peak_gb": peak_gb, "stages": stages, "alone": alone,
              "steps": {label: timer.seconds.get(label, 0.0) for label in steps},
              "steps_cpu": {label: timer.cpu.get(label, 0.0) for label in steps},
              "cache_mb": sum(f.stat().st_size for f in (work / "features").rglob("*.h5")) / 1e6,
              "chosen": {"run": f"{best.backbone} {best.run}", "taps": (best.taps or {}).get("chosen"),
                         "validation": best.validation.accuracy, "test": best.test.accuracy,
                         "interval": list(best.test.interval("accuracy"))}}
    Path(a.result).write_text(json.dumps(result))


def _versions(a: argparse.Namespace, tmp: Path) -> list[tuple[str, dict]]:
    """Each version's figures: the baseline's (when asked for), then this tree's."""
    out = []
    for revision in ([a.baseline] if a.baseline else []) + [None]:
        name = f"baseline {short_revision(revision)}" if revision else TREE
        work = (a.keep / ("baseline" if revision else "tree")) if a.keep else tmp / f"work-{len(out)}"
        result = tmp / f"result-{len(out)}.json"
        args = ["--child", "--work", str(work), "--result", str(result), "--data", str(a.data), "--weights", a.weights,
                "--backbones", a.backbones, "--clf", a.clf, "--balance", a.balance] + ([] if a.tta else ["--no-tta"])
        print(f"== {name}", flush=True)
        out.append((name, run_child(Path(__file__), args, code_folder(revision, tmp / "code"), result)))
    return out


def _rows(versions: list[tuple[str, dict]]) -> list[tuple]:
    """One row per stage, in the job's order; after the featurize stages, the steps inside them (summed over
    backbones) and the embedding loop."""
    per = []
    for _, r in versions:
        figures: dict[str, float] = {}
        for s in r["stages"]:
            if s["stage"].startswith("fit") and not any(k.startswith("  ") for k in figures):
                for label, seconds in r["steps"].items():
                    if seconds > 0:
                        figures[f"  {label}"] = seconds
                        figures[f"  {label}, CPU s (all threads)"] = r["steps_cpu"][label]
                figures.update({f"  embedding loop, {f['stage']}": f["loop_seconds"] for f in r["stages"]
                                if "loop_seconds" in f})
            figures[s["stage"]] = s["seconds"]
        figures["total wall time"] = r["total"]
        per.append(figures)
    order: list[str] = []
    for figures in per:
        order += [k for k in figures if k not in order]
    return [(k, *(f"{f[k]:.1f}" if k in f else "-" for f in per)) for k in order]


def _summary(versions: list[tuple[str, dict]]) -> list[tuple]:
    rows = []
    for name, r in versions:
        c = r["chosen"]
        low, high = c["interval"]
        rates = []
        for s in r["stages"]:
            if "loop_seconds" in s:
                alone = r["alone"][s["stage"]]["views_per_second"]
                loop, whole = s["views"] / s["loop_seconds"], s["views"] / s["seconds"]
                rates.append(f"{s['stage'][10:]}: loop {loop:.1f} ({loop / alone:.2f}), command {whole:.1f} "
                             f"({whole / alone:.2f}), alone {alone:.1f} at {r['alone'][s['stage']]['rows']} rows")
        rows.append((name, f"{r['total']:.1f}", f"{r['peak_gb']:.2f}", f"{c['run']} ({c['taps']} taps)",
                     f"{100 * c['validation']:.1f}", f"{100 * c['test']:.1f} [{100 * low:.1f}, {100 * high:.1f}]",
                     "; ".join(rates)))
    return rows


def table(header: tuple, rows: list) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", default=os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "imagenet"))
    p.add_argument("--backbones", default=None, help="default: cli run's own")
    p.add_argument("--clf", default="all")
    p.add_argument("--balance", default="all")
    p.add_argument("--no-tta", dest="tta", action="store_false")
    p.add_argument("--baseline", default=None, help="a git revision to run first, side by side (e.g. d7f7c25)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "mainjob.md")
    p.add_argument("--keep", type=Path, default=None,
                   help="an empty folder to run in and keep (features, models, reports, model store) for later use")
    child_options(p)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    if a.backbones is None:
        from clothprobe.featurize.model.backbones import RUN_BACKBONES

        a.backbones = RUN_BACKBONES
    if a.keep is not None and a.keep.exists() and any(a.keep.iterdir()):
        p.error(f"--keep {a.keep} is not empty: the job must start from nothing")
    load_before = load_line()
    with tempfile.TemporaryDirectory(prefix="clothprobe-mainjob-") as tmp:
        versions = _versions(a, Path(tmp))
    names = [name for name, _ in versions]
    lines = [f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before}, after {load_line()}.", "",
             (f"`cli run` equivalent: backbones {a.backbones}, --clf {a.clf}, --balance {a.balance}, "
              f"TTA {'on' if a.tta else 'off'}, each version from an empty model store, in its own process, one "
              f"after the other."), ""]
    lines += table(("stage (indented: steps inside featurize, exclusive seconds)", *(f"{n}, s" for n in names)),
                   _rows(versions)) + [""]
    lines += table(("version", "total s", "peak memory (max RSS) GB", "chosen run (best validation accuracy)",
                    "validation acc %", "test acc % [95% CI]",
                    "views/s: embedding loop and whole featurize command (ratio to the network alone)"),
                   _summary(versions))
    write_report(a.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
