"""Issue 30, class 8: a custom backbone (onnx:PATH) goes through the documented commands with their defaults:
featurize caches every tap it has (its output), and fit, run, report and predict take what featurize made. And
fit, told no backbone, uses the one cache there is or says which exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli, make_dataset
from synthetic import make_cache
from test_recipe import SIDECAR, tiny_onnx

from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-project")
    (root / "models-in").mkdir()
    tiny_onnx(root / "models-in" / "tiny.onnx")
    (root / "models-in" / "tiny.json").write_text(json.dumps(SIDECAR))
    make_dataset(root / "clothes", per_class={"hat": 6, "shirt": 6, "t-shirt": 6})
    return root


def test_the_documented_onnx_commands_work_with_their_defaults(project: Path) -> None:
    def ok(*args: str) -> str:
        done = cli(*args, cwd=project, home=project / "home")
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    ok("featurize", "--data", "clothes", "--backbone", "onnx:models-in/tiny.onnx", "--tta", "flip")
    assert "clothes: onnx:tiny.onnx" in ok("fit", "--data", "clothes")  # its only cache, told no --backbone
    ok("fit", "--data", "clothes", "--backbone", "onnx:models-in/tiny.onnx", "--clf", "lgbm", "--tta")
    runs = project / "models" / "clothes" / "onnx:tiny.onnx"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["lgbm-weights-tta", "logreg-weights"]
    assert "onnx:tiny.onnx/lgbm-weights-tta" in ok("report")
    scores = ok("predict", "clothes/test/hat", "--model", str(runs / "logreg-weights"), "--format", "csv")
    assert scores.count("clothes/test/hat/") == 6


def test_cli_run_takes_an_onnx_backbone(project: Path) -> None:
    done = cli("run", "--data", "clothes", "--backbones", "onnx:models-in/tiny.onnx", "--clf", "logreg", "--balance",
               "none", "--features-dir", "run-features", "--models-dir", "run-models", "--reports-dir", "run-reports",
               cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    assert (project / "run-models" / "clothes" / "onnx:tiny.onnx" / "logreg-none-tta" / "manifest.json").is_file()
    assert "onnx:tiny.onnx/logreg-none-tta" in (project / "run-reports" / "report.md").read_text()


def test_fit_told_no_backbone_uses_the_one_cache_there_is(tmp_path: Path) -> None:
    features = tmp_path / "features"
    make_cache(features, backbone="vgg16")
    (result,) = fit("clothes", features_dir=features, models_dir=tmp_path / "models")
    assert result.metrics.backbone == "vgg16"
    make_cache(features, backbone="mobilenetv2")
    with pytest.raises(ClothprobeError, match=r"Dataset 'clothes' has caches of mobilenetv2, vgg16 \(none of "
                                              r"xception\); say which with --backbone"):
        fit("clothes", features_dir=features, models_dir=tmp_path / "models")
    make_cache(features, backbone="xception")
    (result,) = fit("clothes", features_dir=features, models_dir=tmp_path / "models")
    assert result.metrics.backbone == "xception"  # the default, where it was featurized
