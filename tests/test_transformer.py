"""ImageEmbedder: clothprobe's backbones inside a user's own scikit-learn Pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.featurize.embed import embed_files
from clothprobe.featurize.model.recipe import resolve_recipe
from clothprobe.featurize.transformer import ImageEmbedder

SETTINGS = dict(weights=None, image_size=32, precision="float32", runtime="openvino")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("t") / "clothes", per_class={"hat": 4, "shirt": 4})


def paths_and_labels(root: Path, split: str) -> tuple[list[str], list[str]]:
    files = sorted((root / split).rglob("*.png"))
    return [str(f) for f in files], [f.parent.name for f in files]


def test_scikit_learn_checks() -> None:
    embedder = ImageEmbedder("vgg16", **SETTINGS)
    for check in (check_parameters_default_constructible, check_no_attributes_set_in_init,
                  check_get_params_invariance, check_set_params):
        check("ImageEmbedder", embedder)
    assert clone(embedder).get_params() == embedder.get_params()


def test_in_a_pipeline(data: Path) -> None:
    X_train, y_train = paths_and_labels(data, "train")
    X_test, _ = paths_and_labels(data, "test")
    pipe = make_pipeline(ImageEmbedder("vgg16", **SETTINGS), LogisticRegression(max_iter=500))
    pipe.fit(X_train, y_train)
    embedder = pipe[0]
    emb = embedder.transform(X_test)
    direct = embed_files(embedder.recipe_, [Path(p) for p in X_test], batch_size=32)
    assert emb.shape == (8, 512) and np.allclose(emb, direct.views["embeddings"], atol=1e-5)
    # the pipeline's classifier is the one fitted on the embeddings themselves: same probabilities
    train = embed_files(embedder.recipe_, [Path(p) for p in X_train], batch_size=32).views["embeddings"]
    by_hand = LogisticRegression(max_iter=500).fit(train, y_train)
    assert list(pipe.classes_) == ["hat", "shirt"]
    assert np.allclose(pipe.predict_proba(X_test), by_hand.predict_proba(direct.views["embeddings"]), atol=1e-4)
    assert list(embedder.get_feature_names_out()[:2]) == ["vgg16_0", "vgg16_1"]
    assert embedder.set_output(transform="pandas").transform(X_test[:2]).shape == (2, 512)


def test_reads_a_featurize_cache_and_computes_the_rest(data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c.h5"
    featurize(data, out=cache, features_dir=tmp_path / "features", taps="final", **{**TINY, "runtime": "openvino"})
    embedder = ImageEmbedder(resolve_recipe("vgg16", **SETTINGS), cache=cache).fit()
    X, _ = paths_and_labels(data, "validation")
    from clothprobe.featurize import embed

    monkeypatch.setattr(embed, "embed_files", lambda *a, **k: pytest.fail("embedded photos the cache has"))
    from clothprobe.featurize.cache.read import load_features

    stored = load_features(cache).split("validation")
    row = {p: i for i, p in enumerate(stored.paths)}
    got = embedder.transform(X)
    for k, path in enumerate(X):
        assert np.array_equal(got[k], stored.embeddings[row[Path(path).relative_to(data).as_posix()]])
    monkeypatch.undo()
    from conftest import make_image

    new = make_image(tmp_path / "new.png", seed=4242)
    assert embedder.transform([str(new)]).shape == (1, 512)


def test_bad_paths_are_named(data: Path, tmp_path: Path) -> None:
    embedder = ImageEmbedder("vgg16", **SETTINGS).fit()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ClothprobeError, match=r"broken\.jpg: "):
        embedder.transform([str(tmp_path / "broken.jpg")])
    with pytest.raises(ClothprobeError, match="No image file at .*nope.jpg"):
        embedder.transform([str(tmp_path / "nope.jpg")])
    other = ImageEmbedder("vgg16", **{**SETTINGS, "image_size": 40}, cache=None).fit()
    cache = tmp_path / "c.h5"
    featurize(data, out=cache, features_dir=tmp_path / "features", **{**TINY, "runtime": "openvino"})
    with pytest.raises(ClothprobeError, match="another recipe .*input_size"):
        other.set_params(cache=cache).fit()
    # featurize caches every tap by default; an embedder of the final layer alone is told how to match it
    with pytest.raises(ClothprobeError, match=r"another recipe \(taps: .* -> \[\].*ImageEmbedder\(\.\.\., taps='all'\)"):
        ImageEmbedder("vgg16", **SETTINGS, cache=cache).fit()
    every = ImageEmbedder("vgg16", **SETTINGS, taps="all", cache=cache).fit()
    from clothprobe.featurize.cache.read import load_features

    hashes = {str(h) for split in load_features(cache).splits.values() for h in split.sha256}
    assert set(every.cache_rows_) == hashes and every.n_features_out_ == 2304
