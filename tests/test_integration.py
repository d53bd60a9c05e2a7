"""A few real photos from ../shared/data through the real pipeline (skipped when the dataset is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA

from clothprobe.featurize import featurize, load_features
from clothprobe.featurize.model.backbones import BACKBONES

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real dataset not at {REAL_DATA}"),
]


@pytest.mark.slow
def test_real_photos(tmp_path: Path) -> None:
    data = tmp_path / "real"
    for split in ("train", "test"):
        for cls in ("hat", "shoes", "t-shirt"):
            (data / split / cls).mkdir(parents=True)
            for src in sorted((REAL_DATA / split / cls).glob("*.jpg"))[:2]:
                shutil.copy(src, data / split / cls / src.name)
    result = featurize(data, backbone="mobilenetv2", weights=None, image_size=96, batch_size=8,
                       precision="float32", out=tmp_path / "real.h5", tta=True)
    assert result.computed == 12 and not result.skipped
    cache = load_features(tmp_path / "real.h5")
    assert cache.class_names == ["hat", "shoes", "t-shirt"]
    test = cache.split("test")
    width = sum(t.dim for t in BACKBONES["mobilenetv2"].taps)  # every tap, the default
    assert test.embeddings.shape == (6, width) and np.isfinite(test.embeddings).all()
    assert test.flip.shape == (6, width)
