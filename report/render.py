"""``build_report()``: every finished run, one section per dataset (never mixed), as ``index.html``
(self-contained, plots embedded) and ``report.md`` (the same content, plots as files next to it). Every
figure that is compared carries its 95% interval, and each run is tested against the chosen one on the
same test photos. No timestamps: the same runs give the same bytes."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from clothprobe.report import plots
from clothprobe.report.folder import ReportFolder
from clothprobe.report.runs import BEST_REFERENCE_TEST, REFERENCES, Run, collect_runs, paired
from clothprobe.runs.directory import RunKind

TOP_RUNS = 3  # runs in the per-class plot
SMALL_CLASSES = 2  # the smallest training classes get a recall column each


# Column titles, defined once: the tables are built with them and `cli report` picks its columns by them.
RANK, RUN, VAL_ACC, TEST_ACC, TEST_VS_CHOSEN, FIT_S, NOTE = (
    "#", "run", "val acc", "test acc", "test vs chosen (paired)", "fit s", "note")
APPROACH, SOURCE = "approach", "source"
SUMMARY_COLUMNS = (RANK, RUN, VAL_ACC, TEST_ACC, TEST_VS_CHOSEN, FIT_S, NOTE)  # the leaderboard in the terminal
TEXT_COLUMNS = {RUN, APPROACH, SOURCE, NOTE}  # left-aligned, wrapped

@dataclass
class Cell:
    """A table cell: its text and, optionally, a second line (an interval, a test's verdict)."""

    text: str
    sub: str = ""

    def __str__(self) -> str:
        return f"{self.text} ({self.sub})" if self.sub else self.text


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    id: str = ""


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


@dataclass
class Section:
    """One dataset's runs and what is shown of them."""

    dataset: str
    runs: list[Run]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return self.runs[0]


@dataclass
class Report:
    sections: list[Section]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable runs: (folder, reason)
    html_path: Path | None = None
    md_path: Path | None = None

    @property
    def runs(self) -> list[Run]:
        return [r for s in self.sections for r in s.runs]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ci(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}"


def _pct_ci(run: Run, split: str, key: str = "accuracy") -> Cell:
    return Cell(_pct(run.score(split, key)), _ci(run.interval(split, key)))


def _pp(value: float | None, reference: float | None) -> str:
    return "-" if value is None or reference is None else f"{100 * (value - reference):+.1f} pp"


def _secs(value: float | None) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 10 else f"{value:.0f}")


def _vs(run: Run, chosen: Run) -> Cell:
    """``run`` against the chosen run on the same test photos (exact McNemar test)."""
    test = paired(run, chosen) if run is not chosen else None
    if test is None:
        return Cell("-")
    verdict = "within noise" if test.within_noise else ("better" if test.difference > 0 else "worse")
    return Cell(f"{100 * test.difference:+.1f} pp", f"p={test.p_value:.2g}, {verdict}")


def _watched_classes(run: Run) -> list[str]:
    """The smallest training classes and the largest (T-shirt here): where imbalance shows."""
    counts = run.metrics.train_counts
    order = sorted(counts, key=lambda c: (counts[c], c))
    return list(dict.fromkeys([*order[:SMALL_CLASSES], order[-1]])) if order else []


def _selection_note(runs: list[Run]) -> str:
    """How many photos the choices rested on, per way of choosing (one photo = 100/n pp)."""
    ways: dict[tuple[str, int], int] = {}
    for r in runs:
        key = (r.metrics.selection, r.metrics.selection_n)
        ways[key] = ways.get(key, 0) + 1
    parts = [f"{k} run(s) on {how} ({n} photos: one photo = {100 / n:.2f} pp)" for (how, n), k in sorted(ways.items())
             if n]
    return "Settings and the ranking rest on: " + "; ".join(parts) + "."


def _leaderboard(runs: list[Run], index: int) -> Table:
    chosen = runs[0]
    watched = _watched_classes(chosen)
    tested = [r for r in runs if r.score("test") is not None]
    best_test = max(tested, key=lambda r: (r.score("test"), r.val_accuracy or 0, r.id)) if tested else None
    header = [RANK, RUN, VAL_ACC, TEST_ACC, TEST_VS_CHOSEN, f"vs {100 * BEST_REFERENCE_TEST:.0f}% ref",
              "test macro-F1", "test bal. acc", *[f"recall {c}" for c in watched], "featurize s", FIT_S, NOTE]
    rows = []
    for i, r in enumerate(runs, 1):
        test = r.metrics.test
        notes = (["chosen on validation"] if r is chosen else []) + (["best test"] if r is best_test else [])
        rows.append([
            Cell(str(i)), Cell(r.id), _pct_ci(r, "validation"), _pct_ci(r, "test"), _vs(r, chosen),
            Cell(_pp(r.score("test"), BEST_REFERENCE_TEST)), _pct_ci(r, "test", "macro_f1"),
            _pct_ci(r, "test", "balanced_accuracy"),
            *[Cell(_pct(test.per_class.get(c, {}).get("recall") if test else None)) for c in watched],
            Cell(_secs(r.metrics.featurize_seconds)), Cell(_secs(r.metrics.fit_seconds)), Cell(", ".join(notes)),
        ])
    note = ("Sorted by validation accuracy (out of fold for runs chosen by cross-validation), the honest choice; "
            "test accuracy is shown, never used to rank. Under each figure: its 95% bootstrap interval. Test vs "
            "chosen: the difference in test accuracy against the chosen run on the same photos, with the exact "
            "McNemar test's p-value; 'within noise' when p >= 0.05. " + _selection_note(runs) +
            " Featurize seconds: model time to embed the whole dataset with the run's backbone(s).")
    return Table("Leaderboard", header, rows, note, f"leaderboard-{index}")


def _comparison(runs: list[Run], index: int) -> Table:
    """The reference notebooks' figures (quoted), measured end-to-end runs, and the chosen cached run."""
    chosen = next((r for r in runs if r.kind is RunKind.CACHED_FEATURES), None)
    header = [APPROACH, SOURCE, VAL_ACC, TEST_ACC, "seconds", "chosen cached run: val", "test (paired)"]
    rows = []
    for r in runs:
        if r.kind is not RunKind.CACHED_FEATURES:
            vs = _vs(chosen, r) if chosen else Cell("-")
            rows.append([Cell(r.id), Cell(f"measured here ({r.kind})"), _pct_ci(r, "validation"), _pct_ci(r, "test"),
                         Cell(_secs(r.total_seconds)),
                         Cell(_pp(chosen.val_accuracy, r.val_accuracy) if chosen else "-"), vs])
    for ref in REFERENCES:
        rows.append([Cell(ref.name), Cell("reference notebook, reported (not measured here)"), Cell(_pct(ref.val)),
                     Cell(_pct(ref.test)), Cell("not reported"),
                     Cell(_pp(chosen.val_accuracy, ref.val) if chosen else "-"),
                     Cell(_pp(chosen.score("test"), ref.test) if chosen else "-")])
    note = (f"Chosen cached run: {chosen.id} (val {_pct(chosen.val_accuracy)}%, test {_pct(chosen.score('test'))}%, "
            f"{_secs(chosen.total_seconds)} s featurize + fit); the last two columns are its gain or loss against "
            f"each row, on the same test photos with the McNemar test for runs measured here." if chosen
            else "No cached-feature run to compare.")
    return Table("Against end-to-end training", header, rows, note, f"comparison-{index}")


def _openset(runs: list[Run], index: int) -> Table | None:
    """Runs fitted with --unknown: the reject option chosen, measured on test + the reporting unknowns."""
    rows = []
    for r in runs:
        figures = r.metrics.openset
        reported = (figures or {}).get("report")
        if reported is None:
            continue
        f = reported["scores"][figures["score"]]
        bound = figures.get("max_accuracy_cost")  # runs fitted before --unknown-cost record none
        rows.append([Cell(r.id), Cell(figures["score"]), Cell(_pct(figures["tuning_auroc"][figures["score"]])),
                     Cell(_pct(f["auroc"]), _ci(tuple(f["auroc_ci"]))),
                     Cell(_pct(f["fpr95"]), _ci(tuple(f["fpr95_ci"]))),
                     Cell("-" if bound is None else f"{100 * bound:.1f}"),
                     Cell(_pct(reported["known_kept"])), Cell(_pct(reported["unknown_rejected"])),
                     Cell(f"{_pct(reported['accuracy'])} -> {_pct(reported['accuracy_with_reject'])}"),
                     Cell(f"{reported['accuracy_cost_pp']:.1f}")])
    if not rows:
        return None
    header = ["run", "score", "tuning AUROC %", "AUROC %", "FPR@95 %", "bound pp", "test kept %",
              "unknown rejected %", "test acc % (rejected = wrong)", "cost pp"]
    note = ("Runs fitted with cli fit --unknown: the open-set score and its threshold (the highest costing at most "
            "'bound pp' of validation accuracy, cli fit --unknown-cost) were chosen on the validation split and half "
            "of the unknown photos; the figures are measured on the test split and the other half (95% bootstrap "
            "intervals). cli predict answers 'unknown' below it.")
    return Table("Unknown garments (reject option)", header, rows, note, f"openset-{index}")


def _tap_sets(runs: list[Run], index: int) -> Table | None:
    """Each run that chose among tap sets (``fit --taps auto``): every candidate on the selection data, with
    its interval and the paired test against the first candidate (final-only)."""
    header = ["run", "taps", "columns", "selection acc", "vs final (paired)"]
    rows = []
    for r in runs:
        record = r.metrics.taps
        by = f" ({record['compared_with']} fits)" if record.get("compared_with") else ""
        for c in record.get("candidates", []) if len(record.get("candidates", [])) > 1 else []:
            mark = " (kept)" if c["name"] == record["chosen"] else ""
            vs = c["vs_first"]
            rows.append([Cell(r.id + by), Cell(c["name"] + mark), Cell(str(c["columns"])),
                         Cell(_pct(c["accuracy"]), _ci(tuple(c["interval"]))),
                         Cell(f"{100 * vs['difference']:+.1f} pp" if c is not record["candidates"][0] else "-",
                              f"p={vs['p_value']:.3f}" if c is not record["candidates"][0] else "")])
    if not rows:
        return None
    note = ("Tap sets tried by fit --taps auto, scored on the data the settings were chosen on (validation split or "
            "out of fold; never test), with 95% bootstrap intervals and the exact McNemar test against final-only. "
            "A run marked '(weights fits)' had its tap sets compared by class-weighted fits (LightGBM and the "
            "dense head do so for SMOTE runs), then its grid searched with its own balance on the one kept.")
    return Table("Tap sets", header, rows, note, f"taps-{index}")


def _figures(runs: list[Run]) -> list[Figure]:
    tested = [r for r in runs if r.metrics.test is not None]
    if not tested:
        return []
    best = tested[0]
    figures = [
        Figure("confusion", f"Confusion matrix of {best.id} (best on validation)", plots.confusion(best)),
        Figure("per_class", "Per-class precision, recall and F1 of the top runs", plots.per_class(tested[:TOP_RUNS])),
        Figure("accuracy_vs_time", "Test accuracy against cost (dashed: reported references)",
               plots.accuracy_vs_time(tested, [(r.name, r.test) for r in REFERENCES if r.test is not None])),
    ]
    curve = plots.reliability_plot(best)
    if curve is not None:
        figures.append(Figure("reliability", f"Calibration of {best.id}: reliability on the test photos", curve))
    wrong = plots.mistakes(best)
    if wrong:
        figures.append(Figure("mistakes", f"Test images {best.id} gets wrong, most confident first",
                              plots.gallery(best, wrong)))
    return figures


def _slug(index: int, dataset: str) -> str:
    return f"{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)[:40]}"


def build_report(models_dir: str | Path = "models", out_dir: str | Path = "reports") -> Report:
    """Collect every finished run under ``models_dir`` and write ``index.html`` and ``report.md``: one
    section per dataset; unreadable runs are listed and left out."""
    by_dataset, skipped = collect_runs(models_dir)
    report = Report([], skipped)
    for i, (dataset, runs) in enumerate(by_dataset.items(), 1):
        tables = [_leaderboard(runs, i), _comparison(runs, i), _tap_sets(runs, i), _openset(runs, i)]
        report.sections.append(Section(dataset, runs, [t for t in tables if t is not None], _figures(runs)))
    images = {f"img/{_slug(i, section.dataset)}-{fig.name}.png": fig.png
              for i, section in enumerate(report.sections, 1) for fig in section.figures}
    roots = tuple({run.manifest.data_root for runs in by_dataset.values() for run in runs if run.manifest.data_root})
    contents = {**images, "index.html": to_html(report), "report.md": to_markdown(report)}
    written = ReportFolder.plan(out_dir, contents, roots).write()  # every target checked before any write
    report.html_path, report.md_path = written["index.html"], written["report.md"]
    return report


def _intro(section: Section) -> str:
    best = section.best
    calibration = best.metrics.calibration
    ece = best.metrics.test.ece if best.metrics.test else None
    calibrated = best.metrics.calibrated_test_ece
    calib = (f" Test calibration error (ECE) {_pct(ece)}%, {_pct(calibrated)}% after temperature scaling "
             f"(T = {calibration.temperature:.2f}, fitted on the {calibration.fitted_on}; cli predict --calibrate)."
             if calibration and ece is not None and calibrated is not None else "")
    return (f"{len(section.runs)} runs on {section.dataset}. Chosen on validation: {best.id}, validation "
            f"{_pct(best.val_accuracy)}% ({_ci(best.interval('validation'))}), test {_pct(best.score('test'))}% "
            f"({_ci(best.interval('test'))}), on {best.metrics.selection_n} photos for the choice.{calib}"
            + (f" {best.split_note}" if best.split_note else ""))


def _skipped_lines(report: Report) -> list[str]:
    return [f"Skipped (unreadable): {folder}: {why}" for folder, why in report.skipped]


MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # emphasis, code, links and images, table cells


def md(text: str) -> str:
    """User text made inert in Markdown: HTML escaped (tags, entities, autolinks), and the punctuation that
    makes links, images, emphasis, code or table cells backslash-escaped."""
    return MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def to_markdown(report: Report) -> str:
    lines = ["# clothprobe report", ""] + [md(line) + "  " for line in _skipped_lines(report)] + [""]
    for i, section in enumerate(report.sections, 1):
        lines += [f"## {md(section.dataset)}", "", md(_intro(section)), ""]
        for t in section.tables:
            lines += [f"### {md(t.title)}", "", "| " + " | ".join(md(h) for h in t.header) + " |",
                      "|" + "---|" * len(t.header)]
            lines += ["| " + " | ".join(md(str(c)) for c in row) + " |" for row in t.rows]
            lines += ["", md(t.note), ""] if t.note else [""]
        for f in section.figures:
            lines += [f"### {md(f.title)}", "", f"![{md(f.title)}](img/{_slug(i, section.dataset)}-{f.name}.png)", ""]
    return "\n".join(lines)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: .5em; }
th, td { border: 1px solid #ccc; padding: 2px 4px; text-align: right; white-space: nowrap; vertical-align: top; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; max-width: 7em; }
td.text { text-align: left; white-space: normal; overflow-wrap: anywhere; max-width: 16em; }
span.sub { display: block; font-size: 10px; color: #666; }
tr.best td { background: #e8f4e8; font-weight: 600; } tr.ref td { color: #666; font-style: italic; }
p.note { font-size: 12px; color: #555; max-width: 70em; } p.warn { color: #a40; }
img { max-width: 100%; height: auto; }
"""


def _cell(c: Cell, column: str) -> str:
    e = html.escape
    cls = ' class="text"' if column in TEXT_COLUMNS else ""
    sub = f'<span class="sub">{e(c.sub)}</span>' if c.sub else ""
    return f"<td{cls}>{e(c.text)}{sub}</td>"


def _html_table(t: Table) -> list[str]:
    e = html.escape
    parts = [f'<h3>{e(t.title)}</h3><table id="{e(t.id)}">',
             "<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>"]
    for row in t.rows:
        cls = ' class="best"' if "chosen on validation" in row[-1].text else (
            ' class="ref"' if "not measured" in " ".join(c.text for c in row) else "")
        parts.append(f"<tr{cls}>" + "".join(_cell(c, h) for c, h in zip(row, t.header)) + "</tr>")
    parts.append("</table>" + (f'<p class="note">{e(t.note)}</p>' if t.note else ""))
    return parts


def to_html(report: Report) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>clothprobe report</title>',
             f"<style>{STYLE}</style></head><body>", "<h1>clothprobe report</h1>"]
    parts += [f'<p class="warn">{e(line)}</p>' for line in _skipped_lines(report)]
    for section in report.sections:
        parts += [f"<h2>{e(section.dataset)}</h2>", f"<p>{e(_intro(section))}</p>"]
        for t in section.tables:
            parts += _html_table(t)
        for f in section.figures:
            data = base64.b64encode(f.png).decode()
            parts.append(f'<h3>{e(f.title)}</h3><img alt="{e(f.title)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
