"""Taps (pooled outputs of several blocks, issue 16): registry data checked against the real Keras
layers, the recipe carrying them, one compiled network equal to Keras's intermediate outputs, and
self-checks that look at every tap."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothprobe.errors import ClothprobeError, ClothprobeWarning
from clothprobe.featurize.embed import open_embedder
from clothprobe.featurize.model import runtimes
from clothprobe.featurize.model import selfcheck as compiled
from clothprobe.featurize.model.backbones import BACKBONES
from clothprobe.featurize.model.recipe import Recipe, resolve_recipe
from clothprobe.featurize.model.store import ModelStore
from clothprobe.featurize.model.taps import find_layer, resolve_taps, round_taps, tap_dtype, tap_layout, tap_names

SIZES = {"xception": 71, "vgg16": 32, "mobilenetv2": 32, "efficientnetv2s": 32, "convnext_tiny": 32}


def tiny(backbone: str = "vgg16", **kw) -> Recipe:
    return resolve_recipe(**{"backbone": backbone, "weights": None, "image_size": SIZES[backbone],
                             "precision": "float32", **kw})


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", [
    "xception", "vgg16", "mobilenetv2",
    pytest.param("efficientnetv2s", marks=pytest.mark.slow), pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def test_registry_taps_are_real_layers_in_order_final_last(name: str) -> None:
    bb = BACKBONES[name]
    model = bb.build(None, SIZES[name])
    layers = [find_layer(model, tap.layer) for tap in bb.taps]
    positions = [model.layers.index(layer) for layer in layers]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert [layer.output.shape[-1] for layer in layers] == [tap.dim for tap in bb.taps]
    assert bb.taps[-1].dim == bb.embedding_dim
    # the final tap is the model's output, or what its closing pooling reads
    assert layers[-1] is model.layers[-1] or model.layers[positions[-1] + 1] is model.layers[-1]


def test_tap_requests_resolve_once_and_name_the_choices() -> None:
    taps = BACKBONES["vgg16"].taps
    assert resolve_taps("final", taps) == () == resolve_taps(None, taps) == resolve_taps("block5_pool", taps)
    assert resolve_taps("all", taps) == tuple(t.name for t in taps)
    assert resolve_taps("block5_pool,block4_pool", taps) == ("block4_pool", "block5_pool")  # network order
    assert resolve_taps("block4_pool,final", taps) == ("block4_pool", "block5_pool")
    with pytest.raises(ClothprobeError, match="Unknown tap.*block9_pool.*has: final, all, block3_pool"):
        resolve_taps("block9_pool", taps)
    with pytest.raises(ClothprobeError, match=r"has: final or all \(its output, its only tap\)"):
        resolve_taps("block5_pool", ())
    assert resolve_taps("final", ()) == () == resolve_taps("all", ())  # a model outside the registry: its output


def test_recipe_carries_taps_in_its_fingerprint_and_round_trips() -> None:
    final, every = tiny(), tiny(taps="all")
    assert tiny(taps="final") == final and "taps" not in final._identity()  # final-only recipes keep their fingerprint
    assert every._identity()["tap_dtype"] == "<f2" and "tap_dtype" not in final._identity()
    assert every.fingerprint != final.fingerprint and every.taps == tuple(t.name for t in BACKBONES["vgg16"].taps)
    back = Recipe.from_dict(json.loads(json.dumps(every.to_dict())))
    assert back == every and back.fingerprint == every.fingerprint
    assert "taps: [] -> [" in "; ".join(every.differences(final))
    assert tap_names(final) == ("block5_pool",) and tap_layout(every, 2304)[0] == ("block3_pool", 256)
    legacy = {k: v for k, v in final.to_dict().items() if k != "taps"}  # a recipe written before taps
    assert Recipe.from_dict(legacy) == final


def test_taps_but_the_final_one_are_rounded_to_float16_and_overflow_names_the_tap() -> None:
    every = tiny(taps="all")
    x = np.random.default_rng(0).normal(0, 50, (4, 2304)).astype(np.float32)
    got = round_taps(every, x)
    np.testing.assert_array_equal(got[:, :1792], x[:, :1792].astype(np.float16))  # block3_pool ... block5_conv3
    np.testing.assert_array_equal(got[:, 1792:], x[:, 1792:])  # block5_pool, the final layer, untouched
    assert got.dtype == np.float32 and not np.array_equal(got, x)
    assert [tap_dtype(every, n) for n in tap_names(every)] == ["<f2"] * 4 + ["<f4"]
    plain = x[:, :512]
    assert round_taps(tiny(), plain) is plain  # a final-only recipe: nothing rounded
    x[2, 300] = 1e6  # in block4_conv3
    with pytest.raises(ClothprobeError, match=r"vgg16: tap block4_conv3 gives values beyond float16's range \(largest 1e\+06\)"):
        round_taps(every, x)
    x[2, 300], x[1, 2000] = 0.0, 1e6  # the final layer stays float32: no limit
    assert round_taps(every, x)[1, 2000] == 1e6


@pytest.mark.parametrize("backbone,runtime", [("vgg16", "openvino"), ("xception", "openvino"), ("vgg16", "keras")])
def test_one_compiled_network_equals_keras_intermediate_outputs(backbone: str, runtime: str) -> None:
    import keras

    recipe = tiny(backbone, taps="all", runtime=runtime)
    x = images(3, recipe.input_size)
    got = open_embedder(recipe, batch_size=4).embed_array(x)["embeddings"]
    base = BACKBONES[backbone].build(None, recipe.input_size)
    runtimes.random_init(base, 0)
    inner = keras.Model(base.inputs, [find_layer(base, t.layer).output for t in BACKBONES[backbone].taps])
    maps = inner.predict(recipe.preprocess.apply(x), verbose=0)
    want = np.hstack([np.asarray(m).mean(axis=(1, 2)) for m in maps])
    assert got.shape == want.shape == (3, sum(t.dim for t in BACKBONES[backbone].taps))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4 * np.abs(want).max())
    # the final tap alone is what the final-only recipe embeds
    final = open_embedder(tiny(backbone, runtime=runtime), batch_size=4).embed_array(x)["embeddings"]
    np.testing.assert_allclose(got[:, -final.shape[1]:], final, rtol=2e-3, atol=2e-4 * np.abs(final).max())


def test_bf16_self_check_looks_at_every_tap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that breaks only the narrowest tap (a small share of the vector) fails the check."""
    store = ModelStore(tmp_path / "home")
    recipe = tiny(taps="all", precision="bfloat16", runtime="openvino")
    first = BACKBONES["vgg16"].taps[0].dim
    real = runtimes.load_runner

    def broken_first_tap(r, *args, **kwargs):
        run = real(r, *args, **kwargs)
        if r.precision != "bfloat16":
            return run

        def wrong(x: np.ndarray) -> np.ndarray:
            out = run(x).copy()
            out[:, :first] = np.random.default_rng(0).permutation(out[:, :first], axis=1)
            return out
        return wrong

    monkeypatch.setattr(compiled, "load_runner", broken_first_tap)
    with pytest.warns(ClothprobeWarning, match="disagree with float32"):
        embedder = open_embedder(recipe, batch_size=2, store=store)
    assert embedder.recipe.precision == "float32"
    a = np.ones((2, 2304))
    b = a.copy()
    b[:, :first] = -1
    assert compiled.cosine_min(a, b) > compiled.THRESHOLDS["bfloat16"] - 1  # the whole vector hides it...
    assert compiled.taps_cosine_min(recipe, a, b) == pytest.approx(-1.0)  # ...a tap at a time does not


def test_bf16_self_check_passes_with_taps(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    recipe = tiny(taps="all", precision="bfloat16", runtime="openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ClothprobeWarning)
        assert open_embedder(recipe, batch_size=2, store=store).recipe == recipe
    (check,) = store.entries()[0].checks.values()
    assert check.passed


@pytest.mark.slow
def test_int8_self_check_covers_every_tap(tmp_path: Path) -> None:
    from conftest import make_dataset

    from clothprobe.featurize.model.calibration import calibration_from_folder

    data = make_dataset(tmp_path / "clothes")
    store = ModelStore(tmp_path / "home")
    cal = calibration_from_folder(data / "train", size=6, seed=0)
    recipe = tiny(taps="all", precision="int8", runtime="openvino", calibration=cal.digest)
    embedder = open_embedder(recipe, batch_size=4, calibration_files=cal.files, store=store)
    (entry,) = [e for e in store.entries() if e.recipe.precision == "int8"]
    (check,) = entry.checks.values()
    reference = open_embedder(recipe.with_precision("float32"), batch_size=4, store=store)
    probe = compiled._embed_probe(recipe, embedder._runner, 4)
    ref = compiled._embed_probe(recipe, reference._runner, 4)
    assert probe.shape == ref.shape == (compiled.PROBE_IMAGES, 2304)
    assert check.cosine_min == pytest.approx(compiled.taps_cosine_min(recipe, probe, ref), abs=1e-6)
    assert check.cosine_min <= compiled.cosine_min(probe, ref) + 1e-6


# ---------------------------------------------------------------------------------------------------
# Caches


def test_cache_stores_each_tap_and_serves_subsets(tmp_path: Path) -> None:
    import h5py
    from conftest import TINY, make_dataset

    from clothprobe.featurize import featurize, load_features

    data = make_dataset(tmp_path / "clothes")
    out = tmp_path / "c.h5"
    result = featurize(data, **TINY, taps="all", tta=True, out=out, features_dir=tmp_path / "features")
    names = [t.name for t in BACKBONES["vgg16"].taps]
    with h5py.File(out) as h5:
        assert list(h5["train/embeddings"]) == sorted(names) and h5["train/flip/block4_conv3"].shape == (9, 512)
        # every tap but the final layer is kept in float16 (half the space), read back as float32
        assert [h5[f"train/flip/{n}"].dtype for n in names] == [np.float16] * 4 + [np.float32]
    every = load_features(out)
    assert every.split("train").embeddings.dtype == every.split("train").flip.dtype == np.float32
    assert every.available == tuple(names) and [w for _, w in every.taps] == [t.dim for t in BACKBONES["vgg16"].taps]
    assert every.split("train").embeddings.shape == (9, 2304) and every.megabytes == result.cache_megabytes > 0
    sub = load_features(out, taps="final,block4_pool")
    assert sub.taps == (("block4_pool", 512), ("block5_pool", 512))
    cols = np.r_[768:1280, 1792:2304]  # block4_pool and block5_pool after 256 + 512 and 256 + 3 x 512 columns
    np.testing.assert_array_equal(sub.split("test").embeddings, every.split("test").embeddings[:, cols])
    np.testing.assert_array_equal(sub.split("test").flip, every.split("test").flip[:, cols])
    with pytest.raises(ClothprobeError, match=r"has no tap block9_pool; it holds: block3_pool, .*block5_pool \("):
        load_features(out, taps="block9_pool")
    again = featurize(data, **TINY, taps="all", tta=True, out=out, features_dir=tmp_path / "features")
    assert again.up_to_date and again.computed == 0  # every tap read back for reuse
    # the final tap of an all-taps cache is the final-only embedding
    final = featurize(data, **TINY, taps="final", out=tmp_path / "f.h5", features_dir=tmp_path / "features")
    assert final.computed == 27
    np.testing.assert_allclose(load_features(tmp_path / "f.h5").split("train").embeddings,
                               load_features(out, taps="final").split("train").embeddings, rtol=1e-4, atol=1e-5)
    info = sub.info()
    assert info.taps == ("block4_pool", "block5_pool") and info.recipe == every.recipe
    np.testing.assert_array_equal(info.tap_columns(), cols)  # predict embeds every tap, then keeps these
    assert every.info().tap_columns() is None


def test_schema_2_caches_are_read_as_their_final_tap(tmp_path: Path) -> None:
    import h5py
    from conftest import TINY, make_dataset

    from clothprobe.featurize import featurize, load_features
    from clothprobe.featurize.cache.schema import CacheHeader

    data = make_dataset(tmp_path / "clothes")
    out = tmp_path / "c.h5"
    featurize(data, **TINY, taps="final", out=out, features_dir=tmp_path / "features")
    new = load_features(out)
    with h5py.File(out, "r+") as h5:  # what schema 2 wrote: one dataset per view
        for split in new.splits:
            values = h5[f"{split}/embeddings/block5_pool"][()]
            checksum = h5[f"{split}/embeddings/block5_pool"].attrs["checksum"]
            del h5[f"{split}/embeddings"]
            h5[f"{split}/embeddings"] = values
            h5[f"{split}/embeddings"].attrs["checksum"] = checksum
        header, splits = CacheHeader.from_attrs(dict(h5.attrs.items()))
        attrs = {**header.to_attrs(splits), "schema_version": 2}
        from clothprobe.featurize.cache.schema import _header_checksum

        attrs["header_checksum"] = _header_checksum({k: v for k, v in attrs.items() if k != "header_checksum"})
        h5.attrs.update(attrs)
    old = load_features(out)
    assert old.taps == (("block5_pool", 512),)
    np.testing.assert_array_equal(old.split("train").embeddings, new.split("train").embeddings)
    with pytest.raises(ClothprobeError, match="schema version 2; .* --rebuild"):
        featurize(data, **TINY, out=out, features_dir=tmp_path / "features")


def test_export_carries_taps(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from conftest import TINY, make_dataset

    from clothprobe.featurize import featurize, load_features

    data = make_dataset(tmp_path / "clothes")
    featurize(data, **TINY, taps="block4_pool,final", out=tmp_path / "c.h5", features_dir=tmp_path / "features")
    path = load_features(tmp_path / "c.h5").to_parquet(tmp_path / "c.parquet")
    table = pq.read_table(path)
    assert json.loads(table.schema.metadata[b"clothprobe.taps"]) == [["block4_pool", 512], ["block5_pool", 512]]
    assert len(table["embedding"][0]) == 1024


def test_image_embedder_carries_taps(tmp_path: Path) -> None:
    from conftest import make_dataset

    from clothprobe.featurize.transformer import ImageEmbedder

    data = make_dataset(tmp_path / "clothes")
    paths = sorted((data / "test").rglob("*.png"))[:3]
    emb = ImageEmbedder("vgg16", weights=None, image_size=32, precision="float32", taps="block4_pool,final").fit()
    x = emb.transform(paths)
    assert x.shape == (3, 1024) and emb.recipe_.taps == ("block4_pool", "block5_pool")
    names = emb.get_feature_names_out()
    assert names[0] == "vgg16_block4_pool_0" and names[-1] == "vgg16_block5_pool_511"
    final = ImageEmbedder("vgg16", weights=None, image_size=32, precision="float32").fit().transform(paths)
    np.testing.assert_allclose(x[:, 512:], final, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Fit and predict


@pytest.fixture(scope="module")
def tapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny dataset featurized once with every VGG16 tap and the flipped view."""
    from conftest import TINY, make_dataset

    from clothprobe.featurize import featurize

    root = tmp_path_factory.mktemp("taps")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    featurize(data, features_dir=root / "features", tta=True, taps="all", **TINY)
    featurize(data, features_dir=root / "features", tta=True, taps="final", **{**TINY, "backbone": "mobilenetv2"})
    return root


def _fit(root: Path, name: str, **kw):
    from clothprobe.classifiers import fit

    (result,) = fit("clothes", features_dir=root / "features", out=root / "models" / name, **kw)
    return result


def test_one_cache_serves_fits_on_tap_subsets_recorded_in_the_manifest(tapped: Path) -> None:
    from clothprobe.runs.directory import read_manifest, read_metrics

    sub = _fit(tapped, "sub", backbone="vgg16", taps="block4_pool,final")
    manifest, metrics = read_manifest(sub.run_dir), read_metrics(sub.run_dir)
    assert manifest.caches["vgg16"]["taps"] == ["block4_pool", "block5_pool"]
    assert metrics.taps["used"] == {"vgg16": ["block4_pool", "block5_pool"]}
    assert [c["columns"] for c in metrics.taps["candidates"]] == [1024]
    final = _fit(tapped, "final", backbone="vgg16", taps="final")
    assert read_manifest(final.run_dir).caches["vgg16"]["taps"] == ["block5_pool"]


def test_auto_chooses_the_tap_set_on_the_selection_data_only(tapped: Path) -> None:
    auto = _fit(tapped, "auto", backbone="vgg16", taps="auto", tta=True)
    record = auto.metrics.taps
    assert [c["name"] for c in record["candidates"]] == ["final", "last-2", "last-4", "all"]
    assert [c["columns"] for c in record["candidates"]] == [512, 1024, 2048, 2304]
    best = max(record["candidates"], key=lambda c: (c["accuracy"], -c["log_loss"]))
    assert record["chosen"] == best["name"] and auto.metrics.validation.accuracy == pytest.approx(best["accuracy"])
    final = record["candidates"][0]
    assert final["vs_first"] == {"difference": 0.0, "p_value": 1.0, "only_this": 0, "only_first": 0}
    assert all(c["interval"][0] <= c["accuracy"] <= c["interval"][1] for c in record["candidates"])
    from clothprobe.report import build_report

    text = build_report(tapped / "models", tapped / "report").md_path.read_text()
    assert "Tap sets" in text and "last-4" in text and "never test" in text
    cv = _fit(tapped, "cv", backbone="vgg16", taps="auto", select="cv")
    assert "fold" in cv.metrics.selection and len(cv.metrics.taps["candidates"]) == 4  # scored out of fold


def test_auto_tries_every_tap_set_for_every_head(tapped: Path) -> None:
    lgbm = _fit(tapped, "lgbm-auto", backbone="vgg16", clf="lgbm", balance="none", taps="auto")
    assert [c["name"] for c in lgbm.metrics.taps["candidates"]] == ["final", "last-2", "last-4", "all"]
    wide = _fit(tapped, "lgbm-all", backbone="vgg16", clf="lgbm", balance="none", taps="all")
    assert wide.metrics.taps["chosen"] == "all" and wide.metrics.taps["candidates"][0]["columns"] == 2304


def test_last_k_fits_each_backbones_last_k_taps(tapped: Path) -> None:
    from clothprobe.runs.directory import read_manifest

    two = _fit(tapped, "last2", backbone="vgg16", taps="last-2")
    assert read_manifest(two.run_dir).caches["vgg16"]["taps"] == ["block5_conv3", "block5_pool"]
    assert [(c["name"], c["columns"]) for c in two.metrics.taps["candidates"]] == [("last-2", 1024)]
    many = _fit(tapped, "last9", backbone="vgg16", taps="last-9")  # more than it holds: every tap
    assert many.metrics.taps["candidates"][0]["columns"] == 2304
    with pytest.raises(ClothprobeError, match=r"last-K takes a whole number K of at least 1.*'last-0'"):
        _fit(tapped, "last0", backbone="vgg16", taps="last-0")


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.integers(-5, 10**9).map(str), st.text(max_size=8).filter(lambda t: t == t.strip())))
def test_check_taps_takes_last_k_for_whole_numbers_from_one_only(k: str) -> None:
    from clothprobe.classifiers.taps import check_taps

    if k.isascii() and k.isdigit() and not k.startswith("0"):
        assert check_taps(f"last-{k}") == f"last-{k}"
    else:
        with pytest.raises(ClothprobeError, match="last-K"):
            check_taps(f"last-{k}")


def test_the_main_job_fits_each_head_with_its_run_taps(tmp_path: Path) -> None:
    from conftest import make_dataset

    from clothprobe.classifiers.registry import CLASSIFIERS
    from clothprobe.job import run_all

    assert {n: spec.run_taps for n, spec in CLASSIFIERS.items()} == {"logreg": "auto", "lgbm": "final", "dense": "final"}
    data = make_dataset(tmp_path / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    job = run_all(data, backbones="vgg16", weights="none", clf="all", balance="none", tta=False, precision="float32",
                  features_dir=tmp_path / "f", models_dir=tmp_path / "m", reports_dir=tmp_path / "r")
    assert job.featurized[0].cache_path.is_file()
    candidates = {f.metrics.classifier: [c["name"] for c in f.metrics.taps["candidates"]] for f in job.fits}
    assert candidates == {"logreg": ["final", "last-2", "last-4", "all"], "lgbm": ["final"], "dense": ["final"]}
    from clothprobe.classifiers.fitting import plan_fit

    with pytest.raises(ClothprobeError, match="name no request for lgbm, dense; give one per head"):
        plan_fit("vgg16", clf="all", taps={"logreg": "auto"})
    assert plan_fit("vgg16", clf="all", taps="final").taps == {"logreg": "final", "lgbm": "final", "dense": "final"}


def test_a_tap_the_cache_lacks_is_one_line_naming_what_it_has(tapped: Path) -> None:
    with pytest.raises(ClothprobeError, match=r"No cache of vgg16 holds tap block9_pool; they hold vgg16: "
                                              r"block3_pool, .*block5_pool\. Featurize again with --taps all"):
        _fit(tapped, "missing", backbone="vgg16", taps="block9_pool")
    with pytest.raises(ClothprobeError, match="holds tap block4_pool; they hold mobilenetv2: out_relu"):
        _fit(tapped, "missing2", backbone="mobilenetv2", taps="block4_pool")
    assert not (tapped / "models" / "missing").exists()


def test_taps_are_weighted_so_none_dominates_by_width_and_c_keeps_its_scale(tapped: Path) -> None:
    from clothprobe.classifiers import load_feature_set
    from clothprobe.classifiers.taps import TapChoice, restrict

    data = load_feature_set("mobilenetv2+vgg16", "clothes", tapped / "features")
    data = restrict(data, TapChoice("x", {"mobilenetv2": ("out_relu",), "vgg16": ("block3_pool", "block5_pool")}))
    assert [(b.tap, b.width) for b in data.blocks] == [("out_relu", 1280), ("block3_pool", 256), ("block5_pool", 512)]
    from sklearn.preprocessing import StandardScaler

    from clothprobe.classifiers.taps import weight_scaler

    train = data.splits["train"].X
    scaler = StandardScaler().fit(train)
    weight_scaler(scaler, data.column_scale)
    z = scaler.transform(train)
    per_tap = [float((z[:, data.block_columns(i)] ** 2).sum(1).mean()) for i in range(3)]
    live = [float((train[:, data.block_columns(i)].std(0) > 0).mean()) for i in range(3)]  # random ReLUs: dead columns
    # each tap's total variance is the same share of the whole (times its share of live columns), and the whole
    # input keeps the variance plain standardization gives it: C means what it did
    assert per_tap == pytest.approx([(1280 + 256 + 512) / 3 * share for share in live], rel=1e-3)


def test_predict_embeds_with_the_caches_own_network_and_keeps_the_taps_used(tapped: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on a subset of a cache's taps embeds new photos with the cache's recipe (the model in the store that
    made the cache: an int8 one cannot be re-made without its calibration photos), then keeps its columns."""
    import csv

    from clothprobe.featurize import embed
    from clothprobe.runs.predicting import predict

    run = _fit(tapped, "subset", backbone="vgg16", taps="block4_pool,final")
    used, real = [], embed.embed_files
    monkeypatch.setattr(embed, "embed_files", lambda recipe, *a, **k: used.append(recipe.taps) or real(recipe, *a, **k))
    result = predict([tapped / "clothes" / "test"], run.run_dir)
    assert used == [tuple(t.name for t in BACKBONES["vgg16"].taps)]
    with open(run.run_dir / "predictions.csv") as fh:
        saved = {r["path"]: r for r in csv.DictReader(fh)}
    for p in result.predictions:
        row = saved[Path(p.path).relative_to(tapped / "clothes").as_posix()]
        np.testing.assert_allclose([p.probabilities[c] for c in result.classes],
                                   [float(row[f"p_{c}"]) for c in result.classes], atol=1e-4)


@pytest.mark.slow
def test_predict_reproduces_fits_probabilities_with_taps(tapped: Path) -> None:
    import csv

    from clothprobe.runs.predicting import predict

    runs = [_fit(tapped, "p1", backbone="vgg16", taps="block3_pool,final", tta=True),
            _fit(tapped, "p2", backbone="mobilenetv2+vgg16", taps="all", clf="lgbm")]
    data = tapped / "clothes"
    for run in runs:
        result = predict([data / "test"], run.run_dir)
        with open(run.run_dir / "predictions.csv") as fh:
            saved = {r["path"]: r for r in csv.DictReader(fh)}
        assert len(result.predictions) == len(saved) == 12
        for p in result.predictions:
            row = saved[Path(p.path).relative_to(data).as_posix()]
            np.testing.assert_allclose([p.probabilities[c] for c in result.classes],
                                       [float(row[f"p_{c}"]) for c in result.classes], atol=1e-4)
