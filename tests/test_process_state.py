"""Library code leaves the caller's process as it found it: random generators, warning filters, Pillow's
limit; and it keeps OpenVINO's and NNCF's usage telemetry out of clothprobe's own calls."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest

from clothprobe.featurize.model.recipe import resolve_recipe


def random_state() -> tuple:
    import keras
    from keras.src.backend.common import global_state
    from tensorflow.python.eager import context

    keras.backend  # noqa: B018 - imported for its side effects only
    return (random.getstate(), np.random.get_state()[1].tolist(), context.global_seed(),
            id(global_state.get_global_attribute("global_seed_generator")))


def test_dense_head_training_leaves_the_callers_random_state() -> None:
    from clothprobe.classifiers.dense import DenseHeadClassifier

    random.seed(123)
    np.random.seed(456)
    before = random_state()
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 2
    a = DenseHeadClassifier(epochs=2, random_state=7).fit(X, y).predict_proba(X)
    assert random_state() == before
    b = DenseHeadClassifier(epochs=2, random_state=7).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)  # and still reproducible from its own seed


@pytest.mark.slow
def test_end_to_end_training_leaves_the_callers_random_state(tmp_path: Path) -> None:
    from conftest import make_dataset

    from clothprobe.e2e import e2e

    data = make_dataset(tmp_path / "clothes")
    random.seed(1)
    np.random.seed(2)
    before = random_state()
    e2e(data, backbone="vgg16", weights=None, image_size=32, batch_size=4, epochs=1, models_dir=tmp_path / "m")
    assert random_state() == before


def test_featurize_leaves_warning_filters_and_pillow_alone(tmp_path: Path) -> None:
    from conftest import TINY, make_dataset
    from PIL import Image

    from clothprobe.featurize import featurize

    filters, limit = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    featurize(make_dataset(tmp_path / "clothes"), out=tmp_path / "c.h5", features_dir=tmp_path / "f",
              **{**TINY, "runtime": "openvino"})
    assert warnings.filters == filters and Image.MAX_IMAGE_PIXELS == limit


def test_openvino_models_are_made_without_the_conversion_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ov.convert_model sends usage telemetry by default; clothprobe never calls it."""
    import openvino
    import openvino.tools.ovc

    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model.store import ModelStore

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("ov.convert_model was called")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    monkeypatch.setattr(openvino.tools.ovc, "convert_model", refuse)
    recipe = resolve_recipe("vgg16", weights=None, image_size=32, precision="float32", runtime="openvino")
    embedder = open_embedder(recipe, batch_size=2, store=ModelStore(tmp_path / "home"))
    assert embedder.embed_array(np.zeros((1, 32, 32, 3), np.uint8))["embeddings"].shape == (1, 512)


def test_nncf_sends_no_usage_events_for_clothprobes_quantization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import make_dataset
    from nncf.telemetry import decorator

    from clothprobe.featurize.embed import open_embedder
    from clothprobe.featurize.model.calibration import calibration_from_folder
    from clothprobe.featurize.model.store import ModelStore

    sent = []

    class Recording:
        def __getattr__(self, name: str):  # noqa: ANN204 - start_session, send_event, end_session...
            return lambda *args, **kwargs: sent.append(name)

    recording = Recording()
    monkeypatch.setattr(decorator, "telemetry", recording)
    cal = calibration_from_folder(make_dataset(tmp_path / "clothes") / "train", size=4)
    recipe = resolve_recipe("vgg16", weights=None, image_size=32, precision="int8", runtime="openvino",
                            calibration=cal.digest)
    open_embedder(recipe, batch_size=2, calibration_files=cal.files, store=ModelStore(tmp_path / "home"))
    assert sent == [] and decorator.telemetry is recording  # switched off for the call, then put back


@pytest.mark.parametrize("cores", [1, 2])
def test_logreg_searches_hold_blas_at_one_thread_and_give_it_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  cores: int) -> None:
    """Logistic regression's searches run with one BLAS thread each, side by side or not (so two of them do not
    ask for four threads on two cores, and a run does not depend on the cores); the caller's BLAS threads are
    as they were afterwards."""
    from sklearn.linear_model import LogisticRegression
    from synthetic import make_cache
    from threadpoolctl import threadpool_info

    from clothprobe.classifiers import fit, search

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    monkeypatch.setattr(search, "available_cores", lambda: cores)
    during, original = [], LogisticRegression.fit

    def spy(self, X, y, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        during.append(blas())
        return original(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    before = blas()
    make_cache(tmp_path / "f")
    fit("clothes", clf="logreg", balance="all", features_dir=tmp_path / "f", models_dir=tmp_path / "m")
    assert during and all(threads == [1] * len(before) for threads in during)
    assert blas() == before
