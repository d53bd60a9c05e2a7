"""cli suggest (runs/ranking.py): unlabeled photos ordered by how unsure a run is of them, near duplicates
collapsed, written as a score file a person can label from."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, cli, make_dataset, make_image

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.runs.ranking import collapse, entropy, margin, suggest


def test_margin_and_entropy_are_1_when_unsure_and_0_when_certain() -> None:
    proba = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    assert margin(proba) == pytest.approx([1.0, 0.0, 1.0, 0.7])
    assert entropy(proba) == pytest.approx([np.log(2) / np.log(3), 0.0, 1.0,
                                            -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(3)])


def test_collapse_keeps_the_most_uncertain_photo_of_each_group_first() -> None:
    X = np.array([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [0.7, 0.7], [0.01, 0.999]])
    groups = collapse(X, np.array([0.2, 0.9, 0.5, 0.4, 0.5]), ["a", "b", "c", "d", "e"], 0.99)
    assert groups == [[1, 0], [2, 4], [3]]  # c and e tie at 0.5: by path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("suggest")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    featurize(data, features_dir=root / "features", tta=True, **TINY)
    made = fit("clothes", backbone="vgg16", clf="logreg", balance="none", tta=True, taps="final",
               features_dir=root / "features", models_dir=root / "models")
    unlabeled = root / "unlabeled"
    for k in range(6):
        make_image(unlabeled / f"new-{k}.png", seed=1000 + k)
    shutil.copy(unlabeled / "new-0.png", unlabeled / "copy-of-0.png")  # an exact copy: cosine 1
    (unlabeled / "broken.jpg").write_bytes(b"not an image")
    return made[0].run_dir, unlabeled


def test_suggest_orders_by_uncertainty_and_collapses_copies(run) -> None:
    run_dir, unlabeled = run
    result = suggest([unlabeled], run_dir, near_threshold=0.9999)
    assert result.photos == 7 and [Path(p).name for p, _ in result.skipped] == ["broken.jpg"]
    rows = result.suggestions
    assert len(rows) == 6 and sum(len(s.alike) for s in rows) == 1
    collapsed = next(s for s in rows if s.alike)
    assert {Path(collapsed.path).name, Path(collapsed.alike[0]).name} == {"new-0.png", "copy-of-0.png"}
    assert [s.uncertainty for s in rows] == sorted((s.uncertainty for s in rows), reverse=True)
    for s in rows:
        p = sorted(s.probabilities.values(), reverse=True)
        assert s.uncertainty == pytest.approx(1 - (p[0] - p[1]))
    by_entropy = suggest([unlabeled], run_dir, strategy="entropy", near_threshold=0.9999, limit=2)
    assert len(by_entropy.suggestions) == 2 and by_entropy.strategy == "entropy"


def test_suggest_measures_its_threshold_on_the_mirror_images(run) -> None:
    run_dir, unlabeled = run
    result = suggest([unlabeled], run_dir)
    assert 0 < result.near_threshold < 1 and result.threshold_source.startswith("measured")


@pytest.mark.parametrize(("kw", "message"), [({"strategy": "random"}, "--strategy must be one of margin, entropy"),
                                             ({"limit": 0}, "--limit must be"),
                                             ({"near_threshold": float("nan")}, "--near-threshold must be")])
def test_suggest_refuses_bad_options_in_one_line(run, kw, message) -> None:
    run_dir, unlabeled = run
    with pytest.raises(ClothprobeError, match=message):
        suggest([unlabeled], run_dir, **kw)


def test_cli_suggest_writes_a_table_to_label_from(run, tmp_path: Path) -> None:
    run_dir, unlabeled = run
    out = tmp_path / "to-label.csv"
    res = cli("suggest", str(unlabeled), "--model", str(run_dir), "--output", str(out), "--near-threshold", "0.9999")
    assert res.returncode == 0, res.stderr
    assert "1 near duplicate(s) collapsed" in res.stderr and "skipped" in res.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:5] == ["path", "rank", "uncertainty", "near_duplicates", "label"]
    assert [r["rank"] for r in rows[:6]] == ["1", "2", "3", "4", "5", "6"] and rows[-1]["skipped"]
    assert all(r["label"] == "" for r in rows)
    again = cli("suggest", str(unlabeled), "--model", str(run_dir), "--output", str(out))
    assert again.returncode == 0, again.stderr  # its own file is replaced; a file it did not write is not
    (tmp_path / "mine.csv").write_text("precious\n")
    res = cli("suggest", str(unlabeled), "--model", str(run_dir), "--output", str(tmp_path / "mine.csv"))
    assert res.returncode == 2 and "was not written by this command" in res.stderr
    assert (tmp_path / "mine.csv").read_text() == "precious\n"
    res = cli("suggest", str(unlabeled), "--model", str(run_dir))
    assert res.returncode == 0 and "label these first" in res.stdout
