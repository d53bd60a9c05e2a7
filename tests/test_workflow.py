"""The user's own commands, verbatim, in a fresh folder: featurize once, then `cli fit --clf lgbm` and
`cli report` with no other flag; and `cli run` refusing a bad option before any featurizing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import cli, make_dataset

pytestmark = pytest.mark.slow  # both run the real CLI end to end


def test_the_cards_three_commands_in_a_fresh_folder(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "photos" / "clothes", per_class={"hat": 6, "shirt": 5, "t-shirt": 7})
    work = tmp_path / "work"
    work.mkdir()
    # random weights at a tiny size keep the test fast; the two commands after it take no flags at all
    res = cli("featurize", "--data", str(data), "--backbone", "xception", "--weights", "none", "--image-size", "71",
              cwd=work)
    assert res.returncode == 0, res.stderr
    res = cli("fit", "--clf", "lgbm", cwd=work)
    assert res.returncode == 0, res.stderr
    assert (work / "models" / "clothes" / "xception" / "lgbm-weights" / "manifest.json").is_file()
    res = cli("report", cwd=work)
    assert res.returncode == 0, res.stderr
    assert "clothes: top 1 of 1 runs" in res.stdout and (work / "reports" / "index.html").is_file()
    other = make_dataset(tmp_path / "photos" / "shop", per_class={"hat": 3, "shirt": 3})
    assert cli("featurize", "--data", str(other), "--backbone", "xception", "--weights", "none", "--image-size", "71",
               "--precision", "float32", cwd=work).returncode == 0  # (a second dataset: no second int8 model)
    res = cli("fit", "--clf", "lgbm", cwd=work)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Several datasets are featurized under features: clothes, shop" in res.stderr


def test_run_checks_every_option_before_featurizing(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "clothes")
    for bad, message in ((["--clf", "svm"], "Unknown classifier 'svm'"), (["--balance", "x"], "Unknown balance 'x'"),
                         (["--select", "holdout"], "Unknown selection 'holdout'"),
                         (["--backbones", "vgg16,resnet"], "Unknown backbone 'resnet'"),
                         (["--precision", "fp8"], "Unknown precision 'fp8'")):
        started = time.perf_counter()
        res = cli("run", "--data", str(data), "--weights", "none", *bad, cwd=tmp_path)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / "features").exists(), "featurized before refusing an option"
        assert time.perf_counter() - started < 60
