"""The README's Python example runs as written, with a weights file found through CLOTHPROBE_WEIGHTS_DIR."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import make_image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_api_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import keras

    weights = tmp_path / "weights"
    weights.mkdir()
    keras.utils.set_random_seed(0)
    # A real Xception weights file (random values): the example loads it exactly as it would ImageNet's.
    keras.applications.Xception(weights=None, include_top=False).save_weights(weights / "xception_notop.weights.h5")
    monkeypatch.setenv("CLOTHPROBE_WEIGHTS_DIR", str(weights))
    monkeypatch.chdir(tmp_path)
    for i, cls in enumerate(["dress", "hat"]):
        make_image(tmp_path / "photos" / cls / "a.jpg", seed=i, size=(60, 80))
    (block,) = [b for b in python_blocks() if "featurize(" in b]
    exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "['dress', 'hat'] (2, 2048)" in out and "dress/a.jpg" in out
    assert (tmp_path / "features" / "photos" / "xception.h5").is_file()
