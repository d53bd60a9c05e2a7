"""Issue 17: a garbage or empty ONNX file is refused in one line, before OpenVINO's other readers try it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_recipe import SIDECAR, tiny_onnx

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.model.store import ModelStore


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x07 truncated protobuf"])
def test_a_file_that_is_not_onnx_is_one_line(tmp_path: Path, content: bytes) -> None:
    good = tiny_onnx(tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    for model in (good, bad):
        model.with_suffix(".json").write_text(json.dumps(SIDECAR))
    store = ModelStore(tmp_path / "home")
    assert open_embedder(resolve_recipe(f"onnx:{good}", precision="float32"), batch_size=2, store=store)
    with pytest.raises(ClothprobeError, match=r"bad.onnx is not an ONNX model that OpenVINO can read") as caught:
        open_embedder(resolve_recipe(f"onnx:{bad}", precision="float32"), batch_size=2, store=store)
    assert "\n" not in str(caught.value)
    assert len(store.entries()) == 1  # nothing kept for the bad one
