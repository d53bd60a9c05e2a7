"""cli export RUN --out FILE.onnx on tiny runs (the random VGG16 at 32 px of conftest.TINY): the file's answers are
predict()'s, for each head, with the open-set score, for an end-to-end run, and (loosely) at int8; it runs where
neither clothprobe, TensorFlow nor OpenVINO is imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TINY, cli
from PIL import Image

from clothprobe.export.build import export_run
from clothprobe.featurize.images import decode
from clothprobe.runs.predicting import predict

pytestmark = pytest.mark.slow  # each export converts the network to ONNX (about 20 s on 2 cores)

COLOURS = {"hat": 0, "shirt": 1, "t-shirt": 2}  # each class's photos lean to one channel: every head learns them


def colour_photos(root: Path, per_split: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for cls, channel in COLOURS.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 140, size=(30 + i % 3 * 7, 40, 3))
                pixels[..., channel] += 110 - 8 * (i % 5)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def solid_garments(root: Path) -> Path:
    """Photos outside the classes: flat colours, far from the noise photos for any network."""
    for kind, base in (("hoodie", (200, 200, 40)), ("polo", (40, 200, 200))):
        (root / kind).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40, 30), tuple(min(255, c + 5 * i) for c in base)).save(root / kind / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A colour dataset and a folder of other garments, featurized with the tiny backbone (every tap, both
    views), and a run of each head on them with TTA; the logistic regression also with a reject option."""
    from clothprobe.classifiers import fit
    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("export")
    data = colour_photos(root / "clothes", {"train": 14, "validation": 6, "test": 6})
    outside = solid_garments(root / "outside")
    for folder in (data, outside):
        featurize(folder, features_dir=root / "features", tta=True, taps="all", **TINY)
    common = {"backbone": "vgg16", "balance": "none", "tta": True, "features_dir": root / "features"}
    for clf in ("logreg", "lgbm", "dense"):
        fit("clothes", clf=clf, taps="all", models_dir=root / "models", **common)
    fit("clothes", clf="logreg", taps="all", models_dir=root / "unknown", unknown=outside, **common)
    return root


@pytest.fixture(scope="module")
def exported(world: Path, tmp_path_factory: pytest.TempPathFactory):
    """Each run's float32 export, made once for the tests that read it."""
    done: dict = {}
    folder = tmp_path_factory.mktemp("exported")

    def export(run_dir: Path):
        if run_dir not in done:
            done[run_dir] = export_run(run_dir, folder / f"{run_dir.parent.parent.parent.name}-{run_dir.name}.onnx")
        return done[run_dir]

    return export


def photos_of(root: Path) -> list[Path]:
    return sorted((root / "clothes").rglob("*.png")) + sorted((root / "outside").rglob("*.png"))


def run_file(path: Path, photos: list[Path], with_features: bool = False) -> dict[str, np.ndarray]:
    """The exported file's outputs for ``photos`` decoded as featurize decodes them (and, asked, the rows the
    head read: the backbone stage's ``features``, made an output of a copy of the file)."""
    model = onnx.load(str(path))
    if with_features:
        model.graph.output.append(onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = int(session.get_modelmeta().custom_metadata_map["clothprobe.input_size"])
    images = np.stack([decode(p, size) for p in photos])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))


def predicted(run_dir: Path, photos: list[Path]) -> tuple[np.ndarray, np.ndarray | None]:
    result = predict(photos, run_dir)
    assert [p.path for p in result.predictions] == [str(p) for p in photos]
    proba = np.array([[p.probabilities[c] for c in result.classes] for p in result.predictions])
    scores = None if result.openset is None else np.array([p.openset_score for p in result.predictions])
    return proba, scores


@pytest.mark.parametrize("clf", ["logreg", "lgbm", "dense"])
def test_float32_export_gives_predict_s_probabilities(world: Path, exported, clf: str) -> None:
    run_dir = world / "models" / "clothes" / "vgg16" / f"{clf}-none-tta"
    done = exported(run_dir)
    assert done.model.tta and done.model.precision == "float32" and done.model.openset is None
    photos = photos_of(world)
    expected, _ = predicted(run_dir, photos)
    got = run_file(done.path, photos)
    assert list(got) == ["probabilities"] and got["probabilities"].dtype == np.float32
    assert np.abs(got["probabilities"] - expected).max() <= 1e-3
    assert np.array_equal(got["probabilities"].argmax(1), expected.argmax(1))
    assert len(set(expected.argmax(1))) == 3 and np.ptp(expected, axis=0).min() > 0.2  # the answers vary


def test_the_head_reads_exactly_the_run_s_tap_columns_rounded_as_cached(world: Path, exported) -> None:
    from clothprobe.export.backbone import rounded_columns
    from clothprobe.featurize.embed import embed_files
    from clothprobe.runs.directory import read_manifest
    from clothprobe.runs.predicting import run_embeddings

    run_dir = world / "models" / "clothes" / "vgg16" / "logreg-none-tta"
    (how,) = run_embeddings(read_manifest(run_dir).caches)
    photos = photos_of(world)[:12]
    embedded = embed_files(how.recipe, photos, flip=True)
    expected = np.vstack([how.used(embedded.views)[v] for v in ("embeddings", "flip")])  # original rows, then flipped
    features = run_file(exported(run_dir).path, photos, with_features=True)["features"]
    rounded = rounded_columns(how.recipe, how.columns)
    assert features.shape == expected.shape and 0 < rounded.sum() < rounded.size  # some taps rounded, not the final
    assert np.array_equal(features[:, rounded], features[:, rounded].astype(np.float16).astype(np.float32))
    scale = np.abs(expected).max()  # float32 sums in another order (onnxruntime, OpenVINO): 1e-6 of it apart
    diff = np.abs(features - expected)
    assert diff[:, ~rounded].max() <= 1e-5 * scale
    assert (diff[:, rounded] <= 1e-5 * scale).mean() > 0.99  # a value at a float16 boundary may round apart...
    assert diff[:, rounded].max() <= 2**-10 * scale  # ...by one float16 step


def test_the_open_set_score_and_threshold_are_predict_s(world: Path, exported, tmp_path: Path) -> None:
    run_dir = world / "unknown" / "clothes" / "vgg16" / "logreg-none-tta"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out = tmp_path / "model.onnx"
    shutil.copy(exported(world / "models" / "clothes" / "vgg16" / "lgbm-none-tta").path, out)  # another export:
    done = cli("export", str(run_dir), "--out", str(out))  # replaced
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout and f"open set: {manifest['openset']['score']} <" in done.stdout
    photos = photos_of(world)
    expected, scores = predicted(run_dir, photos)
    got = run_file(out, photos)
    assert list(got) == ["probabilities", "openset_score", "openset_threshold"]
    assert np.abs(got["probabilities"] - expected).max() <= 1e-3
    assert np.array_equal(got["probabilities"].argmax(1), expected.argmax(1))
    assert np.allclose(got["openset_score"], scores, rtol=1e-3, atol=1e-3 * np.abs(scores).max())
    threshold = manifest["openset"]["threshold"]
    assert got["openset_threshold"] == np.float32(threshold)
    margin = np.abs(scores - threshold) > 1e-3 * np.abs(scores).max()
    assert np.array_equal((got["openset_score"] < got["openset_threshold"])[margin], (scores < threshold)[margin])
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["clothprobe.openset"]) == {"score": manifest["openset"]["score"], "threshold": threshold}


def test_the_file_runs_without_clothprobe_tensorflow_or_openvino(world: Path, exported, tmp_path: Path) -> None:
    from test_export_parts import DEPLOY

    run_dir = world / "unknown" / "clothes" / "vgg16" / "logreg-none-tta"
    out = exported(run_dir).path
    photos = photos_of(world)[::5]
    code = """import json, sys
exec(sys.argv[1])  # the Deploy page's block up to its session: imports and the reference preprocessor
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
size = int(session.get_modelmeta().custom_metadata_map["clothprobe.input_size"])
out = session.run(None, {"images": np.stack([preprocess(p, size) for p in sys.argv[3:]])})
print(json.dumps([o.tolist() for o in out]))
print(json.dumps(sorted({"clothprobe", "tensorflow", "keras", "openvino"} & {m.split(".")[0] for m in sys.modules})))
"""
    from test_docs import blocks

    (block,) = [b for b in blocks(DEPLOY) if "def preprocess(" in b.code]
    preprocessor = block.code[: block.code.index("\nsession = ")]
    done = subprocess.run([sys.executable, "-c", code, preprocessor, str(out), *map(str, photos)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs, imported = map(json.loads, done.stdout.splitlines())
    assert imported == []
    expected, scores = predicted(run_dir, photos)
    assert np.abs(np.array(outputs[0]) - expected).max() <= 1e-3
    assert np.allclose(outputs[1], scores, rtol=1e-3, atol=1e-3 * np.abs(scores).max())


def test_an_end_to_end_run_exports_its_whole_network(tmp_path: Path) -> None:
    from clothprobe.e2e import e2e

    data = colour_photos(tmp_path / "clothes", {"train": 8, "validation": 4, "test": 4})
    result = e2e(data, epochs=2, models_dir=tmp_path / "models", backbone="vgg16", weights=None, image_size=32,
                 batch_size=4)
    filters, state = list(warnings.filters), np.random.get_state()[1].copy()
    done = export_run(result.run_dir, tmp_path / "e2e.onnx")
    assert list(warnings.filters) == filters and np.array_equal(np.random.get_state()[1], state)  # left as it was
    assert not done.model.tta and done.model.input_size == 32
    photos = sorted(data.rglob("*.png"))
    expected, _ = predicted(result.run_dir, photos)
    got = run_file(done.path, photos)["probabilities"]
    assert np.abs(got - expected).max() <= 1e-3 and np.array_equal(got.argmax(1), expected.argmax(1))
    assert np.ptp(expected, axis=0).max() > 0.01  # the network's answers are not constant


def test_int8_export_is_quantized_in_the_backbone_only_and_agrees_with_the_run(world: Path, exported,
                                                                              tmp_path: Path) -> None:
    """The int8 run's network (NNCF on OpenVINO) and the file's (NNCF on ONNX, one scale per activation tensor) are
    two int8 networks: on random weights and noise photos their answers agree only loosely. Checked: at least 80%
    of the photos get the run's answer, and more than a constant answer would get."""
    from clothprobe.classifiers import fit
    from clothprobe.export.backbone import rounded_columns
    from clothprobe.featurize import featurize
    from clothprobe.runs.directory import read_manifest
    from clothprobe.runs.predicting import run_embeddings

    data = colour_photos(tmp_path / "clothes", {"train": 12, "validation": 6, "test": 6}, seed=1)
    featurize(data, features_dir=tmp_path / "features", calibration_size=24, taps="all",
              **{**TINY, "precision": "int8", "runtime": "openvino"})
    (run,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", taps="all",
                 features_dir=tmp_path / "features", models_dir=tmp_path / "models")
    done = export_run(run.run_dir, tmp_path / "int8.onnx", precision="int8")
    assert done.model.precision == "int8" and done.calibration_photos == 24
    model = onnx.load(str(done.path))
    quantized = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    # named after the backbone stage's tensors they quantize: not the head's or the outputs'
    assert quantized and all("backbone/" in n.name and n.input[0].count("backbone/") == 1 for n in quantized)
    assert not any(n.op_type in ("QLinearConv", "ConvInteger") for n in model.graph.node)  # QDQ, not fused ops
    photos = sorted(data.rglob("*.png"))
    expected, _ = predicted(run.run_dir, photos)
    got = run_file(done.path, photos, with_features=True)
    agree = (got["probabilities"].argmax(1) == expected.argmax(1)).mean()
    constant = np.bincount(expected.argmax(1)).max() / len(photos)
    assert agree >= 0.8 and agree > constant, (agree, constant)
    (how,) = run_embeddings(read_manifest(run.run_dir).caches)
    rounded = got["features"][:, rounded_columns(how.recipe, how.columns)]  # every tap but the final one
    assert rounded.size and np.array_equal(rounded, rounded.astype(np.float16).astype(np.float32))
    float32 = exported(world / "models" / "clothes" / "vgg16" / "logreg-none-tta").path  # the same network, float32
    assert done.path.stat().st_size < 0.4 * float32.stat().st_size
