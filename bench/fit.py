"""Benchmark: every head x balance mode on the real caches, before and after side by side: the seconds each
run takes, and whether it makes the same choice on validation.

Needs caches made with real weights (every tap, the flipped view), e.g.
    cli featurize --backbone xception --data ../shared/data/clothing-dataset-small --tta flip
    cli featurize --backbone vgg16    --data ../shared/data/clothing-dataset-small --tta flip

    python bench/fit.py --features DIR --baseline d7f7c25      # the widest sets, all heads, both versions
    python bench/fit.py --features DIR --backbones xception --clfs logreg    # this tree only, one head

Each version runs in a child process of its own (``--baseline REV``: that git revision first, then this
working tree), one ``fit`` per feature set and head with the balance modes asked for (``--balances all``, as
`cli fit --balance all` and `cli run` fit them; ``--balances none,weights,smote`` fits each alone), ``--taps
auto`` by default (each head chooses among the final tap, the last 2, the last 4 and every tap), with the
flipped view (TTA). For each run: the wall and CPU seconds of its ``fit`` call (loading the caches included)
shared evenly among the runs it fitted (CPU seconds: every thread of the process; they stand for the cost on
a machine other work also loads), what it chose (settings and tap set) and the accuracy on validation the
choice rested on, with the test accuracy (95% bootstrap intervals; test is never used to choose). ``--select
cv`` chooses by cross-validation instead, ``--select validation,cv`` both ways side by side. Names the CPU
and the load average.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from results_file import write_report  # bench/ is this script's folder, first on sys.path
from revisions import TREE, child_options, code_folder, cpu_line, load_line, run_child, short_revision

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 30.0  # per head and balance mode, search included (issue 32)


def _record(backbone: str, result, seconds: float, cpu: float, mode: str) -> dict:  # a FitResult
    m = result.metrics
    return {"backbone": backbone, "run": m.run, "select": mode, "wall": seconds, "cpu": cpu, "head": m.fit_seconds, "params": m.params,
            "chosen": m.chosen, "taps": (m.taps or {}).get("chosen"), "validation": m.validation.accuracy,
            "val_log_loss": m.validation.log_loss, "val_interval": list(m.validation.interval("accuracy")),
            "test": m.test.accuracy, "test_interval": list(m.test.interval("accuracy"))}


def child(a: argparse.Namespace) -> None:
    """One version's fits in this process; the records as JSON in ``a.result``."""
    from clothprobe.classifiers import fit

    records: list[dict] = []
    for mode in a.select.split(","):
        for backbone in a.backbones.split(","):
            for clf in a.clfs.split(","):
                for balance in a.balances.split(","):
                    started, cpu = time.perf_counter(), time.process_time()
                    results = fit(a.dataset, backbone=backbone, clf=clf, balance=balance, tta=a.tta, select=mode,
                                  taps=a.taps, features_dir=a.features, models_dir=Path(a.work) / f"models-{mode}")
                    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
                    for r in results:  # the runs of one call are searched together: each its share of the whole
                        records.append(_record(backbone, r, wall / len(results), cpu / len(results), mode))
                        print(f"{mode:>10} {backbone:>16} {r.metrics.run:<22} {wall / len(results):6.1f} s, CPU "
                              f"{cpu / len(results):6.1f} s", flush=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    Path(a.result).write_text(json.dumps({"records": records, "peak_gb": peak_gb}))


def _acc(value: float, interval: list[float]) -> str:
    return f"{100 * value:.1f} ({100 * interval[0]:.1f}-{100 * interval[1]:.1f})"


def _choice(r: dict) -> str:
    settings = {**r["params"], **r["chosen"]}
    return f"{r['taps']}; " + ", ".join(f"{k} {v}" for k, v in settings.items())


def _key(r: dict) -> tuple[str, str, str]:
    return r["backbone"], r["run"], r["select"]


def _modes(figures: dict) -> list[str]:
    return list(dict.fromkeys(r["select"] for r in figures["records"]))


def _table(versions: list[tuple[str, dict]]) -> list[str]:
    names = [n for n, _ in versions]
    header = ["features", "run", "chosen by", *(f"{n}: wall s (CPU s)" for n in names),
              *(f"{n}: choice" for n in names),
              *(f"{n}: validation acc" for n in names), *(f"{n}: test acc" for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keyed = [{_key(r): r for r in v["records"]} for _, v in versions]
    for key in keyed[-1]:
        rows = [k.get(key) for k in keyed]
        cells = [*key]
        cells += [f"{r['wall']:.1f} ({r['cpu']:.1f})" if r else "-" for r in rows]
        cells += [_choice(r) if r else "-" for r in rows]
        cells += [_acc(r["validation"], r["val_interval"]) if r else "-" for r in rows]
        cells += [_acc(r["test"], r["test_interval"]) if r else "-" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _summary(versions: list[tuple[str, dict]]) -> list[str]:
    lines = []
    for (name, v), mode in ((version, mode) for version in versions for mode in _modes(version[1])):
        records = [r for r in v["records"] if r["select"] == mode]
        worst = max(records, key=lambda r: r["wall"])
        over = [f"{r['backbone']} {r['run']}" for r in records if r["wall"] >= TARGET_SECONDS]
        best = max(records, key=lambda r: (r["validation"], -r["val_log_loss"]))
        lines.append(f"- **{name}**, chosen by {mode}: {len(records)} runs, {sum(r['wall'] for r in records):.0f} s in all, slowest "
                     f"{worst['backbone']} {worst['run']} {worst['wall']:.1f} s; {len(over)} at or over "
                     f"{TARGET_SECONDS:.0f} s{': ' + ', '.join(over) if over else ''}; peak memory "
                     f"{v['peak_gb']:.2f} GB. Best on validation: {best['backbone']} {best['run']} "
                     f"({_choice(best)}), validation {_acc(best['validation'], best['val_interval'])}, test "
                     f"{_acc(best['test'], best['test_interval'])}.")
    if len(versions) == 2:
        before = {_key(b): _choice(b) for b in versions[0][1]["records"]}
        same = [k for k in versions[1][1]["records"] if before.get(_key(k)) == _choice(k)]
        lines.append(f"- Same choice (settings and tap set) in {len(same)} of {len(versions[1][1]['records'])} runs.")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="clothing-dataset-small")
    p.add_argument("--features", type=Path, default=ROOT / "features")
    p.add_argument("--backbones", default="xception,vgg16+xception")
    p.add_argument("--clfs", default="logreg,lgbm,dense")
    p.add_argument("--balances", default="all", help="all (one fit for every mode), or modes fitted one by one")
    p.add_argument("--taps", default="auto")
    p.add_argument("--no-tta", dest="tta", action="store_false")
    p.add_argument("--select", default="validation", help="validation, cv or both (validation,cv)")
    p.add_argument("--baseline", default=None, help="a git revision to run first, side by side (e.g. d7f7c25)")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "fit.md")
    child_options(p)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    load_before = load_line()
    versions = []
    with tempfile.TemporaryDirectory(prefix="clothprobe-fitbench-") as tmp:
        for k, revision in enumerate(([a.baseline] if a.baseline else []) + [None]):
            name = f"baseline {short_revision(revision)}" if revision else TREE
            args = ["--child", "--work", f"{tmp}/work-{k}", "--result", f"{tmp}/result-{k}.json",
                    "--dataset", a.dataset, "--features", str(a.features.resolve()), "--backbones", a.backbones,
                    "--clfs", a.clfs, "--balances", a.balances, "--taps", a.taps, "--select", a.select]
            print(f"== {name}", flush=True)
            versions.append((name, run_child(Path(__file__), args + ([] if a.tta else ["--no-tta"]),
                                             code_folder(revision, Path(tmp) / "code"), Path(f"{tmp}/result-{k}.json"))))
    lines = [f"CPU: {cpu_line()}. Load average (1/5/15 min) before {load_before}, after {load_line()}.", "",
             (f"`cli fit --taps {a.taps} --select {a.select} --balance {a.balances}"
              f"{' --tta' if a.tta else ''}` on {a.backbones.replace(',', ', ')}; heads {a.clfs}; each version in "
              f"its own process, one after the other. Wall and CPU s per run: the head's fit calls (loading the "
              f"caches included) shared evenly among the runs they fitted."), ""]
    lines += _table(versions) + [""] + _summary(versions)
    write_report(a.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
