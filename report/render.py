"""``build_report()``: every finished run in one comparison, as ``index.html`` (self-contained, plots
embedded) and ``report.md`` (the same content, plots as files next to it). No timestamps: the same runs
give the same bytes."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe.report import plots
from clothprobe.report.runs import BEST_REFERENCE_TEST, REFERENCES, Run, collect_runs

TOP_RUNS = 3  # runs in the per-class plot
SMALL_CLASSES = 2  # the smallest training classes get a recall column each


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


@dataclass
class Report:
    runs: list[Run]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    html_path: Path | None = None
    md_path: Path | None = None

    @property
    def best(self) -> Run:
        return self.runs[0]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _pp(value: float | None, reference: float | None) -> str:
    return "-" if value is None or reference is None else f"{100 * (value - reference):+.1f} pp"


def _secs(value: float | None) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 10 else f"{value:.0f}")


def _watched_classes(run: Run) -> list[str]:
    """The smallest training classes and the largest (T-shirt here): where imbalance shows."""
    counts = run.metrics.get("train_counts") or {
        c: v["support"] for c, v in run.metrics["test"]["per_class"].items()
    }
    order = sorted(counts, key=lambda c: (counts[c], c))
    return [*order[:SMALL_CLASSES], order[-1]]


def _leaderboard(runs: list[Run]) -> Table:
    watched = _watched_classes(runs[0]) if runs[0].metrics.get("test") else []
    tested = [r for r in runs if r.score("test") is not None]
    best_test = max(tested, key=lambda r: (r.score("test"), r.val_accuracy or 0, r.id)) if tested else None
    header = ["#", "run", "kind", "backbone", "classifier", "balance", "TTA", "val acc", "test acc",
              f"vs {100 * BEST_REFERENCE_TEST:.0f}% ref", "test macro-F1", "test bal. acc",
              *[f"recall {c}" for c in watched], "featurize s", "fit s", "note"]
    rows = []
    for i, r in enumerate(runs, 1):
        m = r.metrics
        per_class = (m.get("test") or {}).get("per_class", {})
        notes = []
        if i == 1:
            notes.append("chosen on validation")
        if r is best_test:
            notes.append("best test")
        rows.append([
            str(i), r.id, r.kind, m.get("backbone", "-"), m.get("classifier", "-"), m.get("balance", "-"),
            "yes" if m.get("tta") else "no", _pct(r.val_accuracy), _pct(r.score("test")),
            _pp(r.score("test"), BEST_REFERENCE_TEST), _pct(r.score("test", "macro_f1")),
            _pct(r.score("test", "balanced_accuracy")),
            *[_pct(per_class.get(c, {}).get("recall")) for c in watched],
            _secs(m.get("featurize_seconds")), _secs(m.get("fit_seconds")), ", ".join(notes),
        ])
    return Table(
        "Leaderboard", header, rows,
        "Sorted by validation accuracy (with no validation split: the cross-validated score), the honest "
        "choice; test accuracy is shown, never used to rank. Featurize seconds: model time to embed the whole "
        "dataset with the run's backbone(s), as the cache recorded it.",
    )


def _comparison(runs: list[Run]) -> Table:
    """The reference notebooks' figures (quoted), measured end-to-end runs, and the chosen cached run."""
    chosen = next((r for r in runs if r.kind == "cached-features"), None)
    header = ["approach", "source", "val acc", "test acc", "seconds", "chosen cached run: val", "test"]
    rows = []
    for r in runs:
        if r.kind != "cached-features":
            rows.append([r.id, f"measured here ({r.kind})", _pct(r.val_accuracy), _pct(r.score("test")),
                         _secs(r.total_seconds),
                         _pp(chosen.val_accuracy, r.val_accuracy) if chosen else "-",
                         _pp(chosen.score("test"), r.score("test")) if chosen else "-"])
    for ref in REFERENCES:
        rows.append([ref.name, "reference notebook, reported (not measured here)", _pct(ref.val),
                     _pct(ref.test), "not reported",
                     _pp(chosen.val_accuracy, ref.val) if chosen else "-",
                     _pp(chosen.score("test"), ref.test) if chosen else "-"])
    note = (f"Chosen cached run: {chosen.id} (val {_pct(chosen.val_accuracy)}%, test {_pct(chosen.score('test'))}%, "
            f"{_secs(chosen.total_seconds)} s featurize + fit); the last two columns are its gain or loss against "
            f"each row." if chosen else "No cached-feature run to compare.")
    return Table("Against end-to-end training", header, rows, note)


def build_report(models_dir: str | Path = "models", out_dir: str | Path = "reports") -> Report:
    """Collect every finished run under ``models_dir`` and write ``index.html`` and ``report.md``."""
    runs = collect_runs(models_dir)
    report = Report(runs, [_leaderboard(runs), _comparison(runs)])
    tested = [r for r in runs if r.metrics.get("test")]
    if tested:
        best = tested[0]
        report.figures.append(Figure("confusion", f"Confusion matrix of {best.id} (best on validation)",
                                     plots.confusion(best)))
        report.figures.append(Figure("per_class", "Per-class precision, recall and F1 of the top runs",
                                     plots.per_class(tested[:TOP_RUNS])))
        refs = [(r.name, r.test) for r in REFERENCES if r.test is not None]
        report.figures.append(Figure("accuracy_vs_time", "Test accuracy against cost (dashed: reported references)",
                                     plots.accuracy_vs_time(tested, refs)))
        wrong = plots.mistakes(best)
        if wrong:
            report.figures.append(Figure("mistakes", f"Test images {best.id} gets wrong, most confident first",
                                         plots.gallery(best, wrong)))
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    for fig in report.figures:
        (out_dir / "img" / f"{fig.name}.png").write_bytes(fig.png)
    report.html_path = out_dir / "index.html"
    report.md_path = out_dir / "report.md"
    report.html_path.write_text(to_html(report))
    report.md_path.write_text(to_markdown(report))
    return report


def _intro(report: Report) -> str:
    return (f"{len(report.runs)} runs. Best on validation: {report.best.id}, validation "
            f"{_pct(report.best.val_accuracy)}%, test {_pct(report.best.score('test'))}%.")


def to_markdown(report: Report) -> str:
    lines = ["# clothprobe report", "", _intro(report), ""]
    for t in report.tables:
        lines += [f"## {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        lines += ["", t.note, ""] if t.note else [""]
    for f in report.figures:
        lines += [f"## {f.title}", "", f"![{f.title}](img/{f.name}.png)", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin-bottom: .5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:nth-child(2), td:first-child { text-align: left; }
tr.best td { background: #e8f4e8; font-weight: 600; } tr.ref td { color: #666; font-style: italic; }
p.note { font-size: 12px; color: #555; max-width: 70em; } img { max-width: 100%; }
"""


def to_html(report: Report) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>clothprobe report</title>',
             f"<style>{STYLE}</style></head><body>", "<h1>clothprobe report</h1>", f"<p>{e(_intro(report))}</p>"]
    for t in report.tables:
        parts.append(f'<h2>{e(t.title)}</h2><table id="{e(t.title.lower().split()[0])}">')
        parts.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
        for row in t.rows:
            cls = ' class="best"' if "chosen on validation" in row[-1] else (
                ' class="ref"' if "not measured" in " ".join(row) else "")
            parts.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>" + (f'<p class="note">{e(t.note)}</p>' if t.note else ""))
    for f in report.figures:
        data = base64.b64encode(f.png).decode()
        parts.append(f'<h2>{e(f.title)}</h2><img id="{f.name}" alt="{e(f.title)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
