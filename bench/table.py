"""Benchmark: does a labels table give the same accuracy as the folder layout?

Lists every photo of clothing-dataset-small in a CSV (path, label, the folder's split as ``folder_split``, and
a made-up ``sender``: each photo given one of ``--senders`` senders at random, seeded), then runs the real
``cli run`` in one work folder, one features folder shared (the cache keys photos by content, so the runs after
the first compute no embedding; the script reports what each computed):

1. ``folders``: ``cli run --data DATA``, the folder layout;
2. ``table, folder split``: ``--labels photos.csv --split-column folder_split``: the same photos and splits
   through the table, so the same test photos: the chosen runs are compared paired (exact McNemar test);
3. ``table, grouped split, seed S``, for each of ``--seeds``: ``--labels photos.csv --group-column sender
   --seed S --proportions P``: featurize's own seeded split, stratified by class and grouped by sender, in the
   folders' proportions (P: the folder split's percentages, 81/9/10 here, which the split meets in steps of 5%;
   fewer training photos would lower the accuracy for that reason alone). Other test photos: the accuracies are
   compared with a 95% bootstrap interval of their difference (the two test sets resampled independently).

    python bench/table.py --work /tmp/bench-table --out bench/results/table.md --seeds 0,1,2

``--features DIR`` starts from a copy of an earlier run's features folder (only the accuracies are compared;
the first run then computes nothing either).

Needs the ImageNet weights (CLOTHPROBE_WEIGHTS_DIR). Names the CPU and the load average: the machine may be
shared, which changes the times, not the accuracies.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results_file import write_report

from featurize import cpu_line, table  # bench/ is this script's folder, first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "clothing-dataset-small"
SPLITS = ("train", "validation", "test")


def write_table(data: Path, out: Path, senders: int, seed: int) -> int:
    """The CSV of every photo under ``data``'s split folders; returns how many rows."""
    photos = sorted(p for split in SPLITS for p in (data / split).rglob("*") if p.is_file())
    sender = np.random.default_rng(seed).integers(0, senders, len(photos))
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "folder_split", "sender"])
        for p, s in zip(photos, sender):
            rel = p.relative_to(data)
            writer.writerow([rel.as_posix(), rel.parts[1], rel.parts[0], f"sender-{s:04d}"])
    return len(photos)


def folder_proportions(data: Path) -> str:
    """The folder split's train/validation/test shares as whole percentages summing to 100 (train takes the
    rounding)."""
    counts = [sum(1 for p in (data / split).rglob("*") if p.is_file()) for split in SPLITS]
    val, test = (round(100 * c / sum(counts)) for c in counts[1:])
    return f"{100 - val - test}/{val}/{test}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


def run_cli(name: str, args: list[str], work: Path) -> tuple[float, str]:
    """``cli run`` with ``args`` into ``work``'s folders for ``name``; wall seconds and stderr."""
    started = time.perf_counter()
    folders = ["--features-dir", str(work / "features"), "--models-dir", str(work / slug(name) / "models"),
               "--reports-dir", str(work / slug(name) / "reports")]
    res = subprocess.run([sys.executable, "-m", "clothprobe.cli", "run", *args, *folders], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"cli run ({name}) failed:\n{res.stderr[-4000:]}")
    return time.perf_counter() - started, res.stderr


def chosen(work: Path, name: str):  # noqa: ANN201 - a clothprobe.report.runs.Run
    from clothprobe.report.runs import collect_runs

    by_dataset, _ = collect_runs(work / slug(name) / "models")
    (runs,) = by_dataset.values()
    return runs[0]


def difference_interval(a: np.ndarray, b: np.ndarray, seed: int, n: int = 10_000) -> tuple[float, float]:
    """95% bootstrap interval of accuracy(a) - accuracy(b), the two test sets resampled independently."""
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), (n, len(a)))].mean(1) - b[rng.integers(0, len(b), (n, len(b)))].mean(1))
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def compare(runs: dict, seed: int) -> list[tuple]:
    from clothprobe.report.runs import paired

    base = runs["folders"]
    rows = []
    for name, run in runs.items():
        low, high = run.interval("test")
        correct = run.predictions().correct
        if run is base:
            verdict = "(baseline)"
        elif name == "table, folder split":
            test = paired(run, base)
            verdict = (f"{100 * test.difference:+.1f} pp, McNemar p = {test.p_value:.2g} on the same "
                       f"{len(correct)} photos: {'within noise' if test.within_noise else 'differs'}")
        else:
            lo, hi = difference_interval(correct.astype(float), base.predictions().correct.astype(float), seed)
            inside = lo <= 0 <= hi
            verdict = (f"{100 * (correct.mean() - base.predictions().correct.mean()):+.1f} pp, 95% bootstrap interval "
                       f"[{100 * lo:+.1f}, {100 * hi:+.1f}]: {'within noise' if inside else 'differs'}")
        rows.append((name, run.id, f"{100 * run.val_accuracy:.1f}", str(len(correct)),
                     f"{100 * run.score('test'):.1f} [{100 * low:.1f}, {100 * high:.1f}]", verdict))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, required=True, help="an empty folder for the table, caches, runs, reports")
    p.add_argument("--senders", type=int, default=500, help="made-up senders the photos are spread over")
    p.add_argument("--seed", type=int, default=0, help="of the senders and the bootstrap")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the table's own split (one run each)")
    p.add_argument("--features", type=Path, default=None, help="start from a copy of this features folder")
    p.add_argument("--clf", default="all")
    p.add_argument("--balance", default="all")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "table.md")
    a = p.parse_args()
    if a.work.exists() and any(a.work.iterdir()):
        p.error(f"--work {a.work} is not empty")
    a.work.mkdir(parents=True, exist_ok=True)
    labels = a.work / "photos.csv"
    n = write_table(a.data, labels, a.senders, a.seed)
    if a.features is not None:
        shutil.copytree(a.features, a.work / "features", ignore=shutil.ignore_patterns("*.lock", "*.partial"))
    shares = folder_proportions(a.data)
    common = ["--clf", a.clf, "--balance", a.balance]
    table_args = ["--data", str(a.data), "--labels", str(labels)]
    layouts = {
        "folders": ["--data", str(a.data), "--seed", "0"],
        "table, folder split": [*table_args, "--split-column", "folder_split", "--seed", "0"],
        **{f"table, grouped split, seed {s}": [*table_args, "--group-column", "sender", "--proportions", shares,
                                               "--seed", s] for s in a.seeds.split(",")},
    }
    load_before = os.getloadavg()
    timing = []
    for name, args in layouts.items():
        seconds, log = run_cli(name, args + common, a.work)
        featurized = [line for line in log.splitlines() if line.startswith("featurized ")]
        timing.append((name, f"{seconds:.0f}", "; ".join(featurized)))
    load_after = os.getloadavg()
    runs = {name: chosen(a.work, name) for name in layouts}
    cpu = (f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before[0]:.1f}/{load_before[1]:.1f}/"
           f"{load_before[2]:.1f}, after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}.")
    what = (f"{n} photos of {a.data.name} in photos.csv with {a.senders} made-up senders (seed {a.seed}); `cli run` "
            f"--clf {a.clf} --balance {a.balance}, one features folder for every run"
            f"{f' (a copy of {a.features})' if a.features else ''}; the grouped splits in the folders' proportions, "
            f"--proportions {shares}.")
    lines = [cpu, "", what, "",
             *table(("layout", "cli run wall s", "featurize"), timing), "",
             *table(("layout", "chosen run (validation)", "val acc %", "test photos", "test acc % [95% CI]",
                     "vs folders"), compare(runs, a.seed)), ""]
    write_report(a.out, "\n".join(lines))


if __name__ == "__main__":
    main()
