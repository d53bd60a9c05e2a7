"""The README's Python example runs as written, with a weights file found through CLOTHPROBE_WEIGHTS_DIR."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import make_image

pytestmark = pytest.mark.slow  # each example trains and featurizes for tens of seconds

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def xception_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real Xception weights file (random values): the examples load it exactly as they would ImageNet's."""
    import keras

    weights = tmp_path / "weights"
    weights.mkdir()
    keras.utils.set_random_seed(0)
    keras.applications.Xception(weights=None, include_top=False).save_weights(weights / "xception_notop.weights.h5")
    monkeypatch.setenv("CLOTHPROBE_WEIGHTS_DIR", str(weights))
    monkeypatch.chdir(tmp_path)
    return weights


def test_readme_api_example(tmp_path: Path, xception_weights: Path, capsys: pytest.CaptureFixture) -> None:
    for i, cls in enumerate(["dress", "hat"]):
        make_image(tmp_path / "photos" / cls / "a.jpg", seed=i, size=(60, 80))
    (block,) = [b for b in python_blocks() if "load_features(" in b]
    exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "['dress', 'hat'] (2, 2048)" in out and "dress/a.jpg" in out
    assert (tmp_path / "features" / "photos" / "xception.h5").is_file()


def test_readme_whole_pipeline_example(tmp_path: Path, xception_weights: Path, capsys: pytest.CaptureFixture) -> None:
    seed = 0
    for split, n in (("train", 5), ("validation", 2), ("test", 2)):
        for cls in ("dress", "hat"):
            for i in range(n):
                seed += 1
                make_image(tmp_path / "shop" / split / cls / f"{i}.jpg", seed=seed, size=(50, 40))
    make_image(tmp_path / "new-photos" / "a.jpg", seed=999)
    (block,) = [b for b in python_blocks() if "build_report(" in b]
    exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("logreg-weights-tta test accuracy ")
    assert out[1] == "reports/index.html" and (tmp_path / "reports" / "index.html").is_file()
    assert out[2].startswith(str(Path("new-photos") / "a.jpg") + " [(")
