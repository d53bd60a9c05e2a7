"""cli report on real runs: cached-feature runs on small synthetic caches and a real tiny end-to-end run,
two datasets; sections, intervals, paired tests, order, determinism, escaping, and a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import synthetic
from synthetic import make_cache

from clothprobe.classifiers import fit
from clothprobe.e2e import e2e
from clothprobe.errors import ClothprobeError
from clothprobe.report import REFERENCES, build_report, collect_runs, plots
from clothprobe.report.folder import RECORD

FIGURES = {"confusion", "per_class", "accuracy_vs_time", "reliability", "mistakes"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dataset 'clothes': three logistic-regression runs and a real end-to-end run (a random MobileNetV2 on
    the same images); dataset 'shop': one run."""
    root = tmp_path_factory.mktemp("runs")
    make_cache(root / "features", separation=0.6, images=root / "clothes")
    for balance in ("none", "weights", "smote"):
        fit("clothes", clf="logreg", balance=balance, features_dir=root / "features", models_dir=root / "models")
    e2e(root / "clothes", backbone="vgg16", weights=None, image_size=32, batch_size=8, epochs=1,
        models_dir=root / "models")
    make_cache(root / "features", dataset="shop", seed=5)
    fit("shop", clf="logreg", balance="none", features_dir=root / "features", models_dir=root / "models")
    return root / "models"


@pytest.mark.slow
def test_report_has_every_section_per_dataset(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path)
    assert [s.dataset for s in report.sections] == ["clothes", "shop"]
    clothes, shop = report.sections
    assert len(clothes.runs) == 4 and len(shop.runs) == 1 and not report.skipped
    assert {r.dataset for r in clothes.runs} == {"clothes"}  # never mixed
    html = (tmp_path / "index.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert text.count("Leaderboard") == 2 and text.count("Against end-to-end training") == 2
        for ref in REFERENCES:
            assert ref.name in text
        assert "chosen on validation" in text and "best test" in text
        assert "measured here (end-to-end)" in text and "vgg16/e2e-none-32px" in text
        assert "recall t-shirt" in text and "recall hat" in text  # the largest and the smallest class
        assert "one photo = 4.00 pp" in text  # the choice rested on 25 validation photos
        assert "after temperature scaling" in text
    assert {f.name for f in clothes.figures} == FIGURES
    assert html.count('src="data:image/png;base64,') == len(clothes.figures) + len(shop.figures)
    for i, section in enumerate(report.sections, 1):
        for f in section.figures:
            name = f"{i}-{section.dataset}-{f.name}.png"
            assert (tmp_path / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](img/{name})" in md
    assert 'class="best"' in html and 'class="ref"' in html


def test_intervals_and_paired_tests(models: Path, tmp_path: Path) -> None:
    board, comparison = build_report(models, tmp_path).sections[0].tables
    col = board.header.index("test acc")
    for row in board.rows:
        low, high = (float(v) for v in row[col].sub.split("-"))
        assert low <= float(row[col].text) <= high
    vs = board.header.index("test vs chosen (paired)")
    assert board.rows[0][vs].text == "-"
    for row in board.rows[1:]:
        assert re.fullmatch(r"[+-]\d+\.\d pp", row[vs].text) and re.fullmatch(r"p=\S+, (within noise|better|worse)", row[vs].sub)
    e2e_row = next(r for r in comparison.rows if r[0].text == "vgg16/e2e-none-32px")
    assert re.fullmatch(r"p=\S+, (within noise|better|worse)", e2e_row[-1].sub)  # chosen vs end to end, same photos


def test_leaderboard_is_ordered_by_validation_and_marks_the_best(models: Path, tmp_path: Path) -> None:
    section = build_report(models, tmp_path).sections[0]
    board = section.tables[0]
    vals = [float(r[board.header.index("val acc")].text) for r in board.rows]
    assert vals == sorted(vals, reverse=True)
    assert "chosen on validation" in board.rows[0][-1].text
    tests = [float(r[board.header.index("test acc")].text) for r in board.rows]
    best_rows = [r for r in board.rows if "best test" in r[-1].text]
    assert len(best_rows) == 1 and float(best_rows[0][board.header.index("test acc")].text) == max(tests)
    assert section.best.id == board.rows[0][1].text


def test_ties_on_validation_accuracy_go_to_the_lower_log_loss(models: Path) -> None:
    """Two runs right on as many validation photos: the one more confident where it is right ranks first,
    whatever their names (the report and bench/fit.py rank with the same key)."""
    from dataclasses import replace

    from clothprobe.report.runs import rank_key

    runs = next(iter(collect_runs(models)[0].values()))
    m = runs[0].metrics
    sure, unsure = (replace(m, validation=replace(m.validation, log_loss=v)) for v in (0.2, 0.9))
    assert rank_key(sure, "z-run") < rank_key(unsure, "a-run")
    worse = replace(m, validation=replace(m.validation, accuracy=m.validation.accuracy - 0.01, log_loss=0.01))
    assert rank_key(unsure, "z-run") < rank_key(worse, "a-run")


def test_report_is_deterministic(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path / "a")
    build_report(models, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    images = re.findall(r"\]\((img/[^)]+\.png)\)", (tmp_path / "a" / "report.md").read_text())
    assert len(images) == sum(len(s.figures) for s in report.sections)  # one file per figure, each linked
    assert [str(f) for f in files] == sorted(["index.html", "report.md", RECORD, *images])
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_gallery_shows_the_wrong_images(models: Path) -> None:
    best = collect_runs(models)[0]["clothes"][0]
    wrong = plots.mistakes(best)
    assert wrong, "the blobs overlap enough for some test mistakes"
    assert all(m.true != m.predicted for m in wrong)
    assert [m.confidence for m in wrong] == sorted((m.confidence for m in wrong), reverse=True)
    assert plots.data_root(best) is not None and (plots.data_root(best) / wrong[0].path).is_file()


def test_unreadable_runs_are_skipped_with_a_warning(models: Path, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    run = copy / "clothes" / "xception"
    (run / "logreg-none" / "metrics.json").write_text("{not json")
    manifest = json.loads((run / "logreg-weights" / "manifest.json").read_text())
    (run / "logreg-weights" / "manifest.json").write_text(json.dumps({**manifest, "classes": "a,b"}))
    report = build_report(copy, tmp_path / "r")
    assert sorted(Path(folder).name for folder, _ in report.skipped) == ["logreg-none", "logreg-weights"]
    assert len(report.sections[0].runs) == 2
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Skipped (unreadable)" in html and "logreg-none" in html


def test_markdown_escapes_every_user_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = ["a|b", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))"]
    monkeypatch.setattr(synthetic, "CLASSES", hostile)
    dataset = "shop_[y](javascript:z)"
    make_cache(tmp_path / "f", dataset=dataset, splits={"train": (12, 10, 40), "validation": (5, 5, 14),
                                                       "test": (5, 5, 14)})
    fit(dataset, clf="logreg", balance="none", features_dir=tmp_path / "f", models_dir=tmp_path / "m")
    md = build_report(tmp_path / "m", tmp_path / "r").md_path.read_text()
    assert "<img" not in md and not re.search(r"(?<!\\)\]\(javascript:", md) and "a|b" not in md
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in md or "&lt;img src=x onerror=alert(1)&gt;" in md
    lines = md.splitlines() + [""]
    pipes = lambda line: len(re.findall(r"(?<!\\)\|", line))  # noqa: E731
    width = None
    for line, following in zip(lines, lines[1:]):  # every table row keeps its columns: no unescaped | in a cell
        if following.startswith("|---"):
            width = pipes(line)
        elif line.startswith("| "):
            assert pipes(line) == width, line


def test_cost_plot_labels_never_overlap_and_name_the_backbone(models: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    runs = collect_runs(models)[0]["clothes"]
    crowd = []  # 24 runs within half a point of each other, at nearly the same cost
    for k in range(24):
        r = runs[k % 3]
        test = replace(r.metrics.test, accuracy=0.9 + 0.0002 * k)
        backbone = ("vgg16", "xception", "vgg16+xception")[k % 3]
        crowd.append(replace(r, metrics=replace(r.metrics, run=f"logreg-weights-tta-{k}", backbone=backbone,
                                                test=test, fit_seconds=10 + 0.01 * k, featurize_seconds=100)))
    fig = plots.accuracy_vs_time_figure(crowd, [("ref a", 0.9), ("ref b", 0.905)])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the labels out where the PNG has them
    renderer = canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts]
    assert len(texts) == 24 + 2
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the label itself, not its leader line
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    labels = {t.get_text() for t in texts}
    assert {f"{r.metrics.backbone}/{r.metrics.run}" for r in crowd} <= labels


def test_thumbnails_never_decode_a_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image, ImageFile

    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 MP, a few kB on disk
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(ValueError, match="above the limit"):
        plots.thumbnail(bomb)


def test_nothing_to_report(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="Nothing to report.*cli fit"):
        build_report(tmp_path / "models", tmp_path / "reports")


CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const b = document.body.dataset;
  b.images = imgs.length;
  b.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  b.tables = document.querySelectorAll("table").length;
  b.rows = document.querySelectorAll("tr").length;
  b.scrollwidth = document.documentElement.scrollWidth;
  b.innerwidth = window.innerWidth;
  b.widest = Math.max(...[...document.querySelectorAll("table")].map(t => Math.ceil(t.getBoundingClientRect().right)));
});
</script></body>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
@pytest.mark.slow
def test_html_renders_and_fits_1400_px_in_a_real_browser(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path / "reports")
    probe = tmp_path / "probe.html"  # the report plus a script that measures what the browser laid out
    probe.write_text(report.html_path.read_text().replace("</body>", CHECK))
    res = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1000",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, res.stdout[:500]
    attrs = {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body.group(1))}
    n_images = sum(len(s.figures) for s in report.sections)
    n_rows = sum(len(t.rows) + 1 for s in report.sections for t in s.tables)
    assert attrs["images"] == attrs["decoded"] == n_images
    assert attrs["tables"] == sum(len(s.tables) for s in report.sections) and attrs["rows"] == n_rows
    assert attrs["innerwidth"] == 1400
    assert attrs["scrollwidth"] <= attrs["innerwidth"] and attrs["widest"] <= 1400, attrs  # nothing cut at 1400 px
