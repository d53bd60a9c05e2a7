"""What the `cli` application sets up for its process: quiet TensorFlow start-up (unless --verbose), one-line
warnings, and the `cli cache` commands over the compiled-model store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, make_dataset

CHATTER = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub", "cpu_feature_guard", "retracing")


@pytest.mark.parametrize("verbose", [False, True])
@pytest.mark.slow
def test_tensorflow_start_up_lines_only_with_verbose(tmp_path: Path, verbose: bool) -> None:
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 2, "shirt": 2})
    args = ["featurize", "--data", str(data), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
            "--runtime", "keras", "--precision", "float32", "--out", str(tmp_path / "c.h5")]
    res = cli(*(["--verbose"] if verbose else []), *args, home=tmp_path / "home",
              unset=("TF_CPP_MIN_LOG_LEVEL",))  # as a user's shell has it
    assert res.returncode == 0, res.stderr
    shown = [c for c in CHATTER if c in res.stderr]
    if verbose:
        assert shown, "--verbose should let TensorFlow's own start-up lines through"
    else:
        assert shown == [], res.stderr


@pytest.mark.slow
def test_cache_list_and_prune(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 2, "shirt": 2})
    home = tmp_path / "home"
    assert cli("featurize", "--data", str(data), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
               "--runtime", "openvino", "--precision", "float32", "--out", str(tmp_path / "c.h5"),
               home=home).returncode == 0
    listed = cli("cache", "list", home=home)
    assert listed.returncode == 0 and "vgg16" in listed.stdout and "openvino" in listed.stdout
    (key,) = [p.name for p in (home / "models").iterdir() if p.is_dir()]
    assert key in listed.stdout
    res = cli("cache", "prune", "--key", "0123456789abcdef", home=home)
    assert res.returncode == 2 and "No stored model 0123456789abcdef" in res.stderr and "Traceback" not in res.stderr
    res = cli("cache", "prune", "--all", home=home)
    assert res.returncode == 0 and "1 removed" in res.stdout
    assert not [p for p in (home / "models").iterdir() if p.is_dir()]


PREDICT_WITHOUT_TF = """
import sys
from clothprobe.runs.predicting import predict
result = predict([sys.argv[1]], sys.argv[2])
assert len(result.predictions) == 1, result
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch", "sklearn", "skops") if m in sys.modules)
print("imported:", heavy)
"""


@pytest.mark.slow
def test_predict_with_a_warm_store_never_imports_tensorflow(tmp_path: Path) -> None:
    """Nor scikit-learn, for a logistic-regression run: its import alone is longer than the rest of predict."""
    from clothprobe.classifiers import fit

    data = make_dataset(tmp_path / "clothes", per_class={"hat": 3, "shirt": 3})
    home = tmp_path / "home"
    env = {**os.environ, "CLOTHPROBE_HOME": str(home)}
    build = ("import sys; from clothprobe.featurize import featurize; r = featurize(sys.argv[1], backbone='vgg16', "
             "weights=None, image_size=32, batch_size=4, precision='float32', runtime='openvino', "
             "features_dir=sys.argv[2]); print('computed', r.computed, 'tensorflow' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", build, str(data), str(tmp_path / "f")], capture_output=True,
                           text=True, env=env, timeout=600)
    assert "computed 18 True" in first.stdout, first.stderr  # cold store: the network is exported once
    from conftest import make_image

    make_image(data / "train" / "hat" / "new.png", seed=99)
    again = subprocess.run([sys.executable, "-c", build, str(data), str(tmp_path / "f")], capture_output=True,
                           text=True, env=env, timeout=600)
    assert "computed 1 False" in again.stdout, again.stderr  # warm store: new photos without TensorFlow
    (run,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=tmp_path / "f",
                 models_dir=tmp_path / "m")
    photo = data / "test" / "hat" / "0.png"
    res = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TF, str(photo), str(run.run_dir)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "imported: []" in res.stdout


def test_max_pixels_governs_above_pillows_own_limit(tmp_path: Path) -> None:
    """A 180-megapixel image is beyond twice Pillow's default guard; --max-pixels lets it through."""
    from PIL import Image

    data = make_dataset(tmp_path / "clothes", per_class={"hat": 2, "shirt": 2})
    Image.new("1", (15000, 12000)).save(data / "train" / "hat" / "huge.png")  # 180 MP, a few kB on disk
    args = ["featurize", "--data", str(data), "--backbone", "vgg16", "--weights", "none", "--image-size", "32",
            "--runtime", "openvino", "--precision", "float32", "--out", str(tmp_path / "c.h5")]
    res = cli(*args, home=tmp_path / "home")
    assert res.returncode == 0 and "huge.png" in res.stderr and "DecompressionBomb" not in res.stderr
    res = cli(*args, "--max-pixels", "200000000", home=tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert "skipped 0" in res.stdout and "computed 1" in res.stdout, res.stdout + res.stderr


def test_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from clothprobe._util.extras import require
    from clothprobe.errors import ClothprobeError

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what Python does for a module that is not installed
    with pytest.raises(ClothprobeError, match=r'Exporting x needs pyarrow: pip install "clothprobe\[export\]"'):
        require("pyarrow", "export", "Exporting x")
    assert require("json", "export", "never").dumps([1]) == "[1]"
