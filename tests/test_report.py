"""cli report on real runs fitted on small synthetic caches: sections, order, determinism, the browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.report import REFERENCES, build_report, collect_runs
from synthetic import make_cache


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cached-feature runs and one end-to-end run (an e2e metrics file, same format)."""
    root = tmp_path_factory.mktemp("runs")
    make_cache(root / "features", separation=0.6, images=root / "images")
    for balance in ("none", "weights", "smote"):
        fit("clothes", clf="logreg", balance=balance, features_dir=root / "features", models_dir=root / "models")
    e2e = root / "models" / "clothes" / "xception" / "e2e-weights"
    shutil.copytree(root / "models" / "clothes" / "xception" / "logreg-none", e2e)
    metrics = json.loads((e2e / "metrics.json").read_text())
    metrics.update(run="e2e-weights", kind="end-to-end", classifier="dense-e2e", fit_seconds=1234.0)
    (e2e / "metrics.json").write_text(json.dumps(metrics))
    return root / "models"


def test_report_has_every_section(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path)
    html = (tmp_path / "index.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert "Leaderboard" in text and "Against end-to-end training" in text
        for ref in REFERENCES:
            assert ref.name in text
        assert text.count("reference notebook, reported (not measured here)") == len(REFERENCES)
        assert "chosen on validation" in text and "best test" in text
        assert "measured here (end-to-end)" in text and "1234" in text
        assert "recall t-shirt" in text and "recall hat" in text  # the largest and the smallest class
    names = {f.name for f in report.figures}
    assert names == {"confusion", "per_class", "accuracy_vs_time", "mistakes"}
    assert html.count('src="data:image/png;base64,') == 4
    for name in names:
        assert (tmp_path / "img" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](img/{name}.png)" in md
    assert 'class="best"' in html and 'class="ref"' in html


def test_leaderboard_is_ordered_by_validation_and_marks_the_best(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path)
    board = report.tables[0]
    vals = [float(r[board.header.index("val acc")]) for r in board.rows]
    assert vals == sorted(vals, reverse=True)
    assert "chosen on validation" in board.rows[0][-1]
    tests = [float(r[board.header.index("test acc")]) for r in board.rows]
    best_rows = [r for r in board.rows if "best test" in r[-1]]
    assert len(best_rows) == 1 and float(best_rows[0][board.header.index("test acc")]) == max(tests)
    assert report.best.id == board.rows[0][1]


def test_report_is_deterministic(models: Path, tmp_path: Path) -> None:
    build_report(models, tmp_path / "a")
    build_report(models, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_gallery_shows_the_wrong_images(models: Path) -> None:
    from clothprobe.report import plots

    best = collect_runs(models)[0]
    wrong = plots.mistakes(best)
    assert wrong, "the blobs overlap enough for some test mistakes"
    assert all(m.true != m.predicted for m in wrong)
    assert [m.confidence for m in wrong] == sorted((m.confidence for m in wrong), reverse=True)
    assert plots.data_root(best) is not None and (plots.data_root(best) / wrong[0].path).is_file()


def test_nothing_to_report(tmp_path: Path) -> None:
    with pytest.raises(ClothprobeError, match="Nothing to report.*cli fit"):
        build_report(tmp_path / "models", tmp_path / "reports")


CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.decoded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.tables = document.querySelectorAll("table").length;
  document.body.dataset.rows = document.querySelectorAll("tr").length;
});
</script></body>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (.ci/run installs Debian's chromium)")
def test_html_renders_in_a_real_browser(models: Path, tmp_path: Path) -> None:
    report = build_report(models, tmp_path / "reports")
    probe = tmp_path / "probe.html"  # the report plus a script that counts what the browser decoded
    probe.write_text(report.html_path.read_text().replace("</body>", CHECK))
    res = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", res.stdout)
    assert body, res.stdout[:500]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    n_rows = sum(len(t.rows) + 1 for t in report.tables)
    assert attrs == {"images": "4", "decoded": "4", "tables": str(len(report.tables)), "rows": str(n_rows)}
