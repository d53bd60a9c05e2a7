"""The embedding recipe: resolved once, round-tripped as data, refused when the installed code would not
reproduce it; backbones beyond the registry (ONNX and Keras files with a sidecar)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.model.backbones import BACKBONES, CAFFE, TF
from clothprobe.featurize.model.recipe import Recipe, reproduce, resolve_recipe


def tiny(**kw) -> Recipe:
    return resolve_recipe(**{"backbone": "vgg16", "weights": None, "image_size": 32, "precision": "float32", **kw})


def test_round_trip_through_json() -> None:
    recipe = tiny(runtime="openvino")
    back = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert back == recipe and back.fingerprint == recipe.fingerprint
    assert back.preprocess == CAFFE and back.runtime == "openvino" and back.weights_sha256 == "random-init-seed-0"
    assert tiny(seed=1).fingerprint != recipe.fingerprint
    with pytest.raises(ClothprobeError, match="not an embedding recipe"):
        Recipe.from_dict({"recipe_version": 1, "backbone": "vgg16"})


def test_where_files_were_found_is_not_part_of_the_identity() -> None:
    recipe = tiny()
    moved = replace(recipe, model_path="/elsewhere/vgg16_notop.weights.h5", model_source="somewhere else")
    assert moved == recipe and moved.fingerprint == recipe.fingerprint


def test_differences_name_each_setting() -> None:
    a, b = tiny(), tiny(image_size=40)
    assert b.differences(a) == ["input_size: 32 -> 40"]


def test_auto_is_made_concrete(monkeypatch: pytest.MonkeyPatch) -> None:
    from clothprobe.featurize.model import recipe as recipe_mod

    monkeypatch.setattr(recipe_mod, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(recipe_mod, "cpu_has_bf16", lambda: True)
    assert tiny(precision="auto", runtime="auto").precision == "bfloat16"
    assert tiny(precision="auto", runtime="auto").runtime == "openvino"
    monkeypatch.setattr(recipe_mod, "cpu_has_bf16", lambda: False)
    assert tiny(precision="auto").precision == "float32"
    with pytest.raises(ClothprobeError, match="int8 runs on OpenVINO"):
        tiny(precision="int8", runtime="keras")
    with pytest.raises(ClothprobeError, match="Unknown precision 'fp8'"):
        tiny(precision="fp8")


def test_reproduce_refuses_what_this_code_would_embed_differently() -> None:
    recorded = tiny()
    assert reproduce(recorded) == recorded
    for change, setting in ((dict(preprocess=TF), "preprocess"), (dict(resize="pil-bicubic"), "resize"),
                            (dict(pooling="max"), "pooling")):
        with pytest.raises(ClothprobeError, match=rf"would not reproduce \({setting}: "):
            reproduce(replace(recorded, **change))


def test_registry_preprocessing_matches_keras() -> None:
    from keras.applications import convnext, efficientnet_v2, vgg16, xception

    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    assert np.array_equal(CAFFE.apply(x), vgg16.preprocess_input(x.copy()))
    assert np.allclose(TF.apply(x), xception.preprocess_input(x.copy()), atol=1e-6)
    for name, module in (("efficientnetv2s", efficientnet_v2), ("convnext_tiny", convnext)):
        assert BACKBONES[name].preprocess.in_model  # the network normalises; keras' preprocess_input is identity
        assert np.array_equal(BACKBONES[name].preprocess.apply(x), module.preprocess_input(x.copy()))


@pytest.mark.parametrize("name", ["efficientnetv2s", "convnext_tiny"])
@pytest.mark.slow
def test_new_registry_backbones_embed(name: str) -> None:
    recipe = resolve_recipe(name, weights=None, image_size=32, precision="float32", runtime="openvino")
    images = np.stack([np.asarray(make_image_array(seed)) for seed in range(3)])
    out = open_embedder(recipe, batch_size=4).embed_array(images)["embeddings"]
    assert out.shape == (3, BACKBONES[name].embedding_dim) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])


def make_image_array(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# onnx:PATH and keras:PATH


def tiny_onnx(path: Path) -> Path:
    """Conv(3->4, 3x3) -> Relu named 'features' (a 4-D map), then a global average pool as the model output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixels", "w", "b"], ["conv"]),
         helper.make_node("Relu", ["conv"], ["features"]),
         helper.make_node("GlobalAveragePool", ["features"], ["pooled"])],
        "tiny", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 1, 1])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


SIDECAR = {"input_size": 16, "layout": "NCHW", "output": "features", "pooling": "avg",
           "preprocess": {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def test_onnx_backbone_matches_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime

    model = tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "tiny.json").write_text(json.dumps(SIDECAR))
    recipe = resolve_recipe(f"onnx:{model}", precision="float32")
    assert (recipe.source, recipe.backbone, recipe.runtime, recipe.layout) == ("onnx", "onnx:tiny.onnx", "openvino", "NCHW")
    images = np.stack([make_image_array(s, 16) for s in range(3)])
    ours = open_embedder(recipe, batch_size=2).embed_array(images[:2])["embeddings"]
    # the reference: onnxruntime on the same preprocessing, pooled by the model's own GlobalAveragePool
    x = ((images[:2] / 255.0 - np.array(SIDECAR["preprocess"]["mean"])) / np.array(SIDECAR["preprocess"]["std"]))
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(["pooled"], {"pixels": xi.transpose(2, 0, 1)[None].astype(np.float32)})[0]
                          for xi in x]).reshape(2, 4)
    assert ours.shape == (2, 4) and np.allclose(ours, ref, atol=1e-5)


def test_onnx_sidecar_errors_name_the_file(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ClothprobeError, match=r"needs a sidecar file .*tiny\.toml"):
        resolve_recipe(f"onnx:{model}")
    (tmp_path / "tiny.toml").write_text('input_size = 16\nlayout = "NCWH"\n')
    with pytest.raises(ClothprobeError, match=r"tiny\.toml: layout must be one of NCHW, NHWC, got 'NCWH'"):
        resolve_recipe(f"onnx:{model}")
    (tmp_path / "tiny.toml").write_text('input_size = 16\noutput = "nope"\n')
    with pytest.raises(ClothprobeError, match="no tensor named 'nope'"):
        open_embedder(resolve_recipe(f"onnx:{model}", precision="float32"))
    with pytest.raises(ClothprobeError, match="runs on OpenVINO"):
        resolve_recipe(f"onnx:{model}", runtime="keras")
    with pytest.raises(ClothprobeError, match="no model file at"):
        resolve_recipe(f"onnx:{tmp_path / 'missing.onnx'}")


def tiny_keras(path: Path, lambda_layer: bool = False) -> Path:
    import keras

    layers = [keras.Input((16, 16, 3)), keras.layers.Conv2D(5, 3, activation="relu", name="features")]
    if lambda_layer:
        layers.append(keras.layers.Lambda(lambda t: t * 2, name="double"))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="head")]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(path)
    return path


@pytest.mark.parametrize("runtime", ["keras", "openvino"])
def test_keras_file_backbone_embeds_the_named_layer(tmp_path: Path, runtime: str) -> None:
    import keras

    path = tiny_keras(tmp_path / "net.keras")
    (tmp_path / "net.toml").write_text('input_size = 16\nlayout = "NHWC"\noutput = "features"\npooling = "max"\n'
                                       '[preprocess]\nscale = 0.00784313725490196\nmean = [1, 1, 1]\n')
    recipe = resolve_recipe(f"keras:{path}", runtime=runtime, precision="float32")
    images = np.stack([make_image_array(s, 16) for s in range(3)])
    ours = open_embedder(recipe, batch_size=3).embed_array(images)["embeddings"]
    net = keras.saving.load_model(path)
    features = keras.Model(net.inputs, net.get_layer("features").output)
    ref = features.predict(images.astype(np.float32) / 127.5 - 1, verbose=0).max(axis=(1, 2))
    assert ours.shape == (3, 5) and np.allclose(ours, ref, atol=1e-5)


def test_keras_file_with_code_is_refused(tmp_path: Path) -> None:
    path = tiny_keras(tmp_path / "code.keras", lambda_layer=True)
    (tmp_path / "code.toml").write_text('input_size = 16\nlayout = "NHWC"\noutput = "features"\n')
    with pytest.raises(ClothprobeError, match="safe mode"):
        open_embedder(resolve_recipe(f"keras:{path}", runtime="keras", precision="float32"))


def test_changed_model_file_is_refused(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx")
    (tmp_path / "tiny.json").write_text(json.dumps(SIDECAR))
    recipe = resolve_recipe(f"onnx:{model}", precision="float32")
    tiny_onnx(model)  # same graph: same bytes, same hash
    assert resolve_recipe(f"onnx:{model}", precision="float32") == recipe
    with open(model, "ab") as fh:
        fh.write(b"\0")
    from clothprobe.featurize.model.store import ModelStore

    with pytest.raises(ClothprobeError, match="has changed since these embeddings were made"):
        open_embedder(recipe, store=ModelStore(tmp_path / "fresh-store"))
