"""Benchmark: the main job (`cli run`) from nothing, wall time per stage, and the run it chooses.

A fresh CLOTHPROBE_HOME (no stored model: export, int8 quantization, self-checks, rows timing and the
validation guard all happen) and fresh features/models/reports folders under a temporary directory; the job
runs in this process through ``job.run_all`` (what `cli run` calls), each stage timed as it finishes:
featurize per backbone, each fit (per head: fit seconds as recorded in its metrics), the report. The chosen
run is the one with the best accuracy on what its settings were chosen on (validation), as the report
ranks them; its test accuracy is shown with its 95% bootstrap interval. Names the CPU and the load average.

    python bench/mainjob.py --weights ~/.cache/offline-imagenet
    python bench/mainjob.py --backbones xception --clf logreg   # a smaller job
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from results_file import write_report

from featurize import cpu_line, table  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"


def run_job(a: argparse.Namespace, tmp: Path) -> tuple[list[tuple], object, float]:
    from clothprobe.job import run_all

    stages: list[tuple] = []
    mark = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        seconds, mark[0] = now - mark[0], now
        return seconds

    def featurized(r) -> None:  # noqa: ANN001 - a FeaturizeResult
        stages.append((f"featurize {r.backbone} ({r.precision}, {r.computed} photos x views)", f"{lap():.1f}"))

    def fitted(r) -> None:  # noqa: ANN001 - a FitResult
        m = r.metrics
        stages.append((f"fit {m.backbone} {m.run} (head alone: {m.fit_seconds:.1f} s)", f"{lap():.1f}"))

    started = time.perf_counter()
    job = run_all(a.data, backbones=a.backbones, weights=a.weights, clf=a.clf, balance=a.balance,
                  features_dir=tmp / "features", models_dir=tmp / "models", reports_dir=tmp / "reports",
                  on_featurized=featurized, on_fit=fitted)
    stages.append(("report", f"{lap():.1f}"))
    return stages, job, time.perf_counter() - started


def chosen_row(job) -> tuple:  # noqa: ANN001 - a JobResult
    best = max(job.fits, key=lambda f: (f.metrics.validation.accuracy, -f.metrics.validation.log_loss))
    m = best.metrics
    low, high = m.test.interval("accuracy")
    return (f"{m.backbone} {m.run}", f"{100 * m.validation.accuracy:.1f}",
            f"{100 * m.test.accuracy:.1f} [{100 * low:.1f}, {100 * high:.1f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--weights", default=os.environ.get("CLOTHPROBE_WEIGHTS_DIR", "imagenet"))
    p.add_argument("--backbones", default=None, help="default: cli run's own")
    p.add_argument("--clf", default="all")
    p.add_argument("--balance", default="all")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "mainjob.md")
    p.add_argument("--keep", type=Path, default=None,
                   help="an empty folder to run in and keep (features, models, reports, model store) for later use")
    a = p.parse_args()
    if a.backbones is None:
        from clothprobe.featurize.model.backbones import RUN_BACKBONES

        a.backbones = RUN_BACKBONES
    load_before = os.getloadavg()
    if a.keep is not None and a.keep.exists() and any(a.keep.iterdir()):
        p.error(f"--keep {a.keep} is not empty: the job must start from nothing")
    with tempfile.TemporaryDirectory(prefix="clothprobe-mainjob-") as tmp:
        where = a.keep or Path(tmp)
        os.environ["CLOTHPROBE_HOME"] = str(where / "home")  # from nothing: an empty model store
        stages, job, total = run_job(a, where)
        cache_mb = sum(f.stat().st_size for f in (where / "features").rglob("*.h5")) / 1e6
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    load_after = os.getloadavg()
    load = (f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
            f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}.")
    job_line = (f"`cli run` equivalent: backbones {a.backbones}, --clf {a.clf}, --balance {a.balance}, TTA on, "
                f"from an empty model store. Total wall time: {total:.1f} s; peak memory (max RSS) {peak_gb:.1f} GB; "
                f"caches {cache_mb:.0f} MB.")
    lines = [load, "", job_line, ""]
    lines += table(("stage", "wall seconds"), stages) + [""]
    lines += table(("chosen run (best validation accuracy)", "validation acc %", "test acc % [95% CI]"),
                   [chosen_row(job)])
    write_report(a.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
