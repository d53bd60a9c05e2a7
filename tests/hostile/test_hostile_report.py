"""Issue 17, report --out: the report replaces only files it wrote itself, each atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clothprobe.errors import ClothprobeError
from clothprobe.report import build_report
from clothprobe.report.folder import RECORD


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_hostile_runs import write_run

    root = tmp_path_factory.mktemp("models")
    write_run(root / "clothes" / "vgg16" / "lgbm-none")
    return root


@pytest.mark.parametrize("name", ["index.html", "report.md"])
def test_the_users_own_files_are_never_replaced(models: Path, tmp_path: Path, name: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / name).write_text("my own page")
    with pytest.raises(ClothprobeError, match=f"--out {site / name} exists and was not written by this command"):
        build_report(models, site)
    assert (site / name).read_text() == "my own page"
    assert sorted(p.name for p in site.iterdir()) == [name]  # nothing written


def test_its_own_files_are_replaced_and_an_edited_one_is_refused(models: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    first = build_report(models, site)
    record = json.loads((site / RECORD).read_text())
    assert {"index.html", "report.md"} <= set(record["files"]) and len(record["files"]) > 2  # and the plots
    build_report(models, site)  # its own, unchanged: replaced
    first.md_path.write_text(first.md_path.read_text() + "\nmy notes\n")
    with pytest.raises(ClothprobeError, match="report.md exists and was not written by this command"):
        build_report(models, site)
    assert first.md_path.read_text().endswith("my notes\n")


def test_a_forged_record_does_not_make_a_file_ours(models: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("mine")
    (site / RECORD).write_text(json.dumps({"clothprobe_report": 1, "files": {"index.html": "0" * 64,
                                                                             "../../outside.txt": "0" * 64}}))
    (tmp_path / "outside.txt").write_text("keep")
    with pytest.raises(ClothprobeError, match="was not written by this command"):
        build_report(models, site)
    assert (site / "index.html").read_text() == "mine" and (tmp_path / "outside.txt").read_text() == "keep"


def test_a_failed_write_keeps_the_previous_report(models: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    build_report(models, site)
    before = {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()}
    from clothprobe.report import render

    def full_disk(report) -> str:  # noqa: ANN001
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render, "to_markdown", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_report(models, site)
    assert {p.name: p.read_bytes() for p in site.iterdir() if p.is_file()} == before


def test_a_report_never_goes_into_a_run(models: Path) -> None:
    run = models / "clothes" / "vgg16" / "lgbm-none"
    with pytest.raises(ClothprobeError, match="inside the clothprobe run"):
        build_report(models, run)
    assert not (run / "index.html").exists() and not (run / "img").exists()


def test_cli_run_refuses_a_foreign_report_page_before_featurizing(dataset: Path, tmp_path: Path) -> None:
    from clothprobe.job import run_all

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my own page")
    with pytest.raises(ClothprobeError, match="index.html exists and was not written by this command"):
        run_all(dataset, backbones="vgg16", weights="none", clf="logreg", balance="none",
                features_dir=tmp_path / "features", models_dir=tmp_path / "models", reports_dir=site)
    assert not (tmp_path / "features").exists() and (site / "index.html").read_text() == "my own page"
