"""Shared fixtures: tiny images and datasets the tests make themselves, and a tiny random backbone."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    from clothprobe.featurize import FeaturizeResult

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CLOTHPROBE_OFFLINE", "1")  # tests never reach for the network
# compiled models go to a store of this test session, never the user's ~/.cache/clothprobe
if "CLOTHPROBE_HOME" not in os.environ:
    os.environ["CLOTHPROBE_HOME"] = tempfile.mkdtemp(prefix="clothprobe-test-home-")
    atexit.register(shutil.rmtree, os.environ["CLOTHPROBE_HOME"], True)

# The real photos next to the repository; CI, which runs the tests from the unpacked sdist, points
# CLOTHPROBE_TEST_DATA at them.
REAL_DATA = Path(os.environ.get("CLOTHPROBE_TEST_DATA")
                 or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clothing-dataset-small")

# A random-weights VGG16 on 32 px images: the real Keras model, small enough to run in a second.
TINY = dict(backbone="vgg16", weights=None, image_size=32, batch_size=4, precision="float32")


def python_output(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh Python and return its stdout; a run past ``timeout`` (a hang) fails the test."""
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s (killed): a hang")
    assert res.returncode == 0, res.stderr
    return res.stdout


def cli(*args: str, cwd: Path | None = None, home: Path | None = None, env: dict | None = None,
        unset: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """The installed entry point in a subprocess, as a user runs it: in ``cwd``, with the compiled-model store
    ``home``, this process's environment plus ``env`` and less the variables named in ``unset``."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(env or {}, **({"CLOTHPROBE_HOME": str(home)} if home is not None else {}))
    return subprocess.run([sys.executable, "-m", "clothprobe.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=timeout, check=False)


def featurize_tiny(data: Path, out: Path, **kw: object) -> FeaturizeResult:
    """``featurize`` with the tiny backbone into the cache ``out`` (``features/`` beside it for the catalogue);
    ``kw`` overrides any setting."""
    from clothprobe.featurize import featurize

    return featurize(data, out=out, **{"features_dir": out.parent / "features", **TINY, **kw})


def make_image(path: Path, seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB", fmt: str | None = None) -> Path:
    """A small image with seeded random pixels, so different seeds give different content hashes."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def make_dataset(root: Path, per_class: dict[str, int] | None = None, splits: tuple[str, ...] = ("train", "validation", "test"),
                 seed: int = 0) -> Path:
    """root/<split>/<class>/<n>.jpg with distinct random pixels."""
    per_class = per_class or {"hat": 3, "shirt": 2, "t-shirt": 4}
    k = seed * 10_000
    for split in splits:
        for cls, n in per_class.items():
            for i in range(n):
                k += 1
                make_image(root / split / cls / f"{i}.png", seed=k)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "clothes")
