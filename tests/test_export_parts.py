"""cli export's parts, without a network: the reference preprocessor of the Deploy page against featurize's
decoder, the head and output stages (every open-set score) against the numpy code predict runs, the contract's
metadata, and what is refused before any model is built."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clothprobe.errors import ClothprobeError
from clothprobe.export.contract import PREFIX, PREPROCESSING, ExportedModel

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "guide" / "deploy.md"


def session(model) -> ort.InferenceSession:
    import onnx

    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --- the reference preprocessor of docs/guide/deploy.md ----------------------------------------------------


def reference_preprocess():
    """``preprocess`` as the Deploy page prints it: its block's imports and function definitions, run here."""
    from test_docs import blocks

    (block,) = [b for b in blocks(DEPLOY) if "def preprocess(" in b.code]
    tree = ast.parse(block.code)
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    assert len(block.code[block.code.index("def preprocess("):].split("\n\n\n")[0].splitlines()) <= 30
    namespace: dict = {}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(DEPLOY), "exec"), namespace)  # noqa: S102 - our page
    return namespace["preprocess"]


def odd_photos(root: Path) -> list[Path]:
    """Every kind of photo the decoder treats apart: JPEG (large enough for its draft mode), PNG, transparent
    RGBA and palette, gray, 16-bit, and a JPEG whose EXIF says to rotate it."""
    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8))
    root.mkdir(parents=True, exist_ok=True)
    rgb.save(root / "plain.jpg", quality=90)
    rgb.resize((70, 50)).save(root / "plain.png")
    rgba = np.dstack([rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (50, 70), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    palette = rgb.resize((70, 50)).convert("P")
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    rgb.convert("L").resize((70, 50)).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 65536, (50, 70), dtype=np.uint16)).save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    rgb.save(root / "rotated.jpg", exif=exif.tobytes(), quality=90)
    return sorted(root.iterdir())


@pytest.mark.parametrize("size", [32, 299])
def test_the_reference_preprocessor_gives_featurize_s_pixels(tmp_path: Path, size: int) -> None:
    from clothprobe.featurize.images import decode

    preprocess = reference_preprocess()
    photos = odd_photos(tmp_path)
    assert {Image.open(p).mode for p in photos} >= {"RGB", "RGBA", "P", "L", "I;16"}
    for photo in photos:
        ours, theirs = preprocess(photo, size), decode(photo, size)
        assert ours.dtype == np.uint8 and ours.shape == (size, size, 3), photo.name
        assert np.array_equal(ours, theirs), photo.name
    plain, rotated = decode(tmp_path / "plain.jpg", size), decode(tmp_path / "rotated.jpg", size)
    assert not np.array_equal(plain, rotated)  # the EXIF rotation was applied by both


# --- the output stage: probabilities and every open-set score, as predict computes them -------------------


@pytest.fixture(scope="module")
def fitted_openset():
    from clothprobe.classifiers.openset import SCORES, Combiner, OpenSet, OpenSetScorer

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 12)).astype(np.float32), np.repeat([0, 1, 2], 20)
    X[np.arange(60), y] += 4
    scorer = OpenSetScorer(k=5, pca_components=6).fit(X, y, negatives=rng.normal(size=(25, 12)) + 1)
    combiner = Combiner.fit(list(SCORES), rng.normal(size=(40, len(SCORES))), np.r_[np.ones(20), np.zeros(20)].astype(int))
    return OpenSet("combined", -0.25, scorer, combiner)


@pytest.mark.parametrize("score", ["msp", "energy", "knn", "mahalanobis", "knn_negatives", "combined"])
@pytest.mark.parametrize("every_view", [True, False])
def test_output_stage_computes_predict_s_probabilities_and_open_set_score(fitted_openset, score: str,
                                                                          every_view: bool) -> None:
    from clothprobe.classifiers.openset import HeadOutput
    from clothprobe.classifiers.proba import full_proba, softmax
    from clothprobe.export.outputs import Layout, output_stage

    rng = np.random.default_rng(1)
    n, estimator_classes = 7, np.array([0, 2, 3])  # class 1 of 4 never seen by the estimator
    X = rng.normal(size=(2 * n, 12)).astype(np.float32)
    X[:n, :3] += 3
    logits = rng.normal(size=(2 * n, 3)) * 3
    head = SimpleNamespace(classes_=estimator_classes, predict_proba=softmax)
    views = [full_proba(head, logits[:n], 4), full_proba(head, logits[n:], 4)]
    proba = (views[0] + views[1]) / 2
    chosen = dataclasses.replace(fitted_openset, score=score)
    expected = chosen.values(HeadOutput(X[:n], proba, logits.reshape(2, n, 3).mean(0) if every_view else logits[:n]))

    stage = output_stage(Layout(views=2, width=12, classes=(0, 2, 3), n_classes=4, logits=3), chosen, every_view)
    feeds = {"out_features": X, "out_proba": softmax(logits)}
    if "out_logits" in {i.name for i in stage.graph.input}:
        feeds["out_logits"] = logits
    got = dict(zip(["probabilities", "openset_score", "openset_threshold"], session(stage).run(None, feeds)))
    assert np.allclose(got["probabilities"], proba, atol=1e-6) and got["probabilities"][:, 1].max() == 0
    assert got["openset_score"].shape == (n,) and np.allclose(got["openset_score"], expected, rtol=1e-5, atol=1e-5)
    assert got["openset_threshold"].shape == () and got["openset_threshold"] == np.float32(-0.25)
    assert np.ptp(expected) > 1e-3  # the rows differ: equal values would not show a wrong score


def test_a_score_needing_logits_is_refused_without_them(fitted_openset) -> None:
    from clothprobe.export.graph import Graph
    from clothprobe.export.openset import Rows, openset_score

    with pytest.raises(ClothprobeError, match="energy' needs the head's logits"):
        openset_score(Graph("t/"), dataclasses.replace(fitted_openset, score="energy"), Rows("x", "p"))


# --- the head stage: each head as the run's model files compute it ----------------------------------------


def blobs(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(90) % classes
    X = rng.normal(size=(90, 10)) * 3 + 5
    X[np.arange(90), y] += 4
    return X.astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_head_gives_predict_proba_and_decision_function(classes: int) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from clothprobe.classifiers.modelio import ModelParts
    from clothprobe.export.heads import head_stage

    X, y = blobs(classes)
    scaler = StandardScaler().fit(X)
    scaled = scaler.transform(X.astype(np.float64))  # float64, as predict computes a linear head
    lr = LogisticRegression(C=0.1).fit(scaled, y)
    parts = ModelParts("linear", lr.classes_, linear={"coef": lr.coef_, "intercept": lr.intercept_,
                                                       "mean": scaler.mean_, "scale": scaler.scale_})
    proba, logits = session(head_stage(parts, 10)).run(None, {"head_features": X})
    z = lr.decision_function(scaled)
    assert np.allclose(proba, lr.predict_proba(scaled), atol=1e-9)
    assert np.allclose(logits, np.column_stack([np.zeros(90), z]) if classes == 2 else z, atol=1e-9)


def test_lightgbm_head_gives_the_booster_s_probabilities() -> None:
    from lightgbm import LGBMClassifier

    from clothprobe.classifiers.modelio import ModelParts
    from clothprobe.export.heads import head_stage

    X, y = blobs(3)
    booster = LGBMClassifier(n_estimators=20, num_leaves=7, min_child_samples=5, verbose=-1).fit(X, y).booster_
    (proba,) = session(head_stage(ModelParts("lightgbm", np.arange(3), estimator=booster), 10)).run(
        None, {"head_features": X})
    expected = booster.predict(X)
    assert np.ptp(expected[:, 0]) > 0.5 and np.allclose(proba, expected, atol=1e-5)


# --- the contract's metadata ------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(classes=st.lists(names, min_size=2, max_size=6, unique=True), size=st.integers(8, 2048),
       precision=st.sampled_from(["float32", "int8"]), tta=st.booleans(),
       accuracy=st.none() | st.floats(0, 1), threshold=st.none() | st.floats(-1e6, 1e6))
def test_metadata_survives_the_file(classes: list[str], size: int, precision: str, tta: bool,
                                    accuracy: float | None, threshold: float | None) -> None:
    openset = None if threshold is None else {"score": "knn", "threshold": threshold}
    model = ExportedModel(tuple(classes), size, precision, "xception/logreg", "0123456789abcdef", "0.1.0", tta,
                          accuracy, accuracy, openset)
    props = model.to_metadata()
    assert all(k.startswith(PREFIX) and isinstance(v, str) for k, v in props.items())
    back = ExportedModel.from_metadata(props, "m.onnx")
    assert back == model and back.preprocessing == PREPROCESSING
    assert back.output_names == (("probabilities", "openset_score", "openset_threshold") if openset else ("probabilities",))


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["classes", "input_size", "precision", "recipe_fingerprint", "tta", "test_accuracy",
                            "openset", "format_version"]),
       value=st.sampled_from(["", "[]", '["a"]', "7", "-1", "1.5", "null", '{"score": 1}', "nan", "{", "int4"]))
def test_damaged_metadata_is_one_clear_error(key: str, value: str) -> None:
    model = ExportedModel(("hat", "shirt"), 32, "float32", "r", "0123456789abcdef", "0.1.0",
                          openset={"score": "msp", "threshold": 0.5})
    props = {**model.to_metadata(), PREFIX + key: value}
    try:
        back = ExportedModel.from_metadata(props, "m.onnx")
    except ClothprobeError as err:
        assert "m.onnx" in str(err) and "export the run again" in str(err) and "\n" not in str(err)
    else:  # a value that is still a valid one
        assert back == ExportedModel.from_metadata(back.to_metadata(), "m.onnx")


# --- refused before any model is built --------------------------------------------------------------------


@pytest.fixture
def synthetic_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(a float32 cache, a run on it, a run on two backbones joined): synthetic caches, no network, whose recipes
    this clothprobe reproduces (the registry's constructor and preprocessing)."""
    import synthetic
    from synthetic import make_cache

    from clothprobe.classifiers import fit
    from clothprobe.featurize.model.backbones import get_backbone

    made = synthetic.recipe
    monkeypatch.setattr(synthetic, "recipe", lambda backbone, dim: dataclasses.replace(
        made(backbone, dim), model=get_backbone(backbone).constructor, preprocess=get_backbone(backbone).preprocess))
    cache = make_cache(tmp_path / "features", backbone="xception")
    make_cache(tmp_path / "features", backbone="vgg16")
    (one,) = fit("clothes", backbone="xception", clf="logreg", balance="none", features_dir=tmp_path / "features",
                 models_dir=tmp_path / "models", taps="final")
    (two,) = fit("clothes", backbone="vgg16+xception", clf="logreg", balance="none",
                 features_dir=tmp_path / "features", models_dir=tmp_path / "models", taps="final")
    return cache, one.run_dir, two.run_dir


def test_what_is_given_decides_and_a_mismatch_is_refused(synthetic_runs, tmp_path: Path) -> None:
    from clothprobe.export.build import export

    cache, run, _ = synthetic_runs
    with pytest.raises(ClothprobeError, match=r"a run directory is exported as ONNX, so name a \.onnx file"):
        export(run, tmp_path / "run.parquet")
    with pytest.raises(ClothprobeError, match=r"a feature cache is exported as Parquet, so name a \.parquet file"):
        export(cache, tmp_path / "cache.onnx")
    with pytest.raises(ClothprobeError, match="--precision, --calibration belong to exporting a run directory"):
        export(cache, tmp_path / "cache.parquet", precision="int8", calibration=tmp_path)
    with pytest.raises(ClothprobeError, match="does not exist; give a run directory"):
        export(tmp_path / "nothing", tmp_path / "x.onnx")
    with pytest.raises(ClothprobeError, match="--precision must be one of float32, int8, got 'float16'"):
        export(run, tmp_path / "x.onnx", precision="float16")
    done = export(cache, tmp_path / "cache.parquet")
    assert done.kind == "parquet" and done.rows == 112 and done.path.is_file()
    assert not (tmp_path / "run.parquet").exists() and not (tmp_path / "cache.onnx").exists()


def test_runs_an_export_cannot_hold_are_refused_before_any_work(synthetic_runs, tmp_path: Path) -> None:
    from clothprobe.export.build import export_run

    _, run, joined = synthetic_runs
    with pytest.raises(ClothprobeError, match=r"joins 2 backbones \(vgg16 \+ xception\).*one image input"):
        export_run(joined, tmp_path / "x.onnx")
    with pytest.raises(ClothprobeError, match="records no calibration photos.*give --calibration DIR"):
        export_run(run, tmp_path / "x.onnx", precision="int8")
    with pytest.raises(ClothprobeError, match="--calibration DIR gives the photos --precision int8"):
        export_run(run, tmp_path / "x.onnx", calibration=tmp_path)
    assert not (tmp_path / "x.onnx").exists()


def test_only_a_clothprobe_export_is_replaced_and_only_regular_files_are_read(synthetic_runs, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from clothprobe.export.build import export_run, is_export

    _, run, _ = synthetic_runs
    mine = tmp_path / "mine.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), mine)
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    for path in (mine, notes):
        assert not is_export(path)
        with pytest.raises(ClothprobeError, match="exists and was not written by this command"):
            export_run(run, path)
    ours = helper.make_model(graph)
    helper.set_model_props(ours, ExportedModel(("a", "b"), 32, "float32", "r", "0123456789abcdef", "0.1.0").to_metadata())
    onnx.save(ours, tmp_path / "ours.onnx")
    assert is_export(tmp_path / "ours.onnx") and not is_export(tmp_path / "ours.onnx.bak")
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    assert not is_export(fifo)  # not opened for reading: a FIFO would block
    with pytest.raises(ClothprobeError, match="is inside the clothprobe run"):
        export_run(run, run / "model.onnx")


def test_cli_export_prints_what_it_wrote_for_a_cache(synthetic_runs, tmp_path: Path) -> None:
    from conftest import cli

    cache, run, _ = synthetic_runs
    done = cli("export", str(cache), "--out", str(tmp_path / "e.parquet"))
    assert done.returncode == 0 and "wrote 112 rows to" in done.stdout
    refused = cli("export", str(run), "--out", str(tmp_path / "e.parquet"))
    assert refused.returncode == 2 and "name a .onnx file" in refused.stderr and "Traceback" not in refused.stderr


def test_calibration_photos_that_do_not_decode_are_refused_before_quantizing(tmp_path: Path) -> None:
    """The one calibration set featurize and export quantize on: photos that do not decode are left out and
    counted; none at all is one line naming how many were given, before NNCF runs."""
    from clothprobe.featurize.model.runtimes import CalibrationSet

    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.new("RGB", (20, 12), (200, 30, 30)).save(good)
    bad.write_bytes(b"not an image")
    photos = CalibrationSet([good, bad], lambda image: {"images": image}, 16)
    assert photos.usable == 1
    (item,) = list(photos)
    assert item["images"].shape == (1, 16, 16, 3) and item["images"].dtype == np.uint8
    with pytest.raises(ClothprobeError, match=r"None of the 2 calibration photos could be decoded"):
        CalibrationSet([bad, bad], lambda image: image, 16)
