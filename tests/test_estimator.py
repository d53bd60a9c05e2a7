"""clothprobe.load_run: a finished run as a scikit-learn classifier over image paths.

Which scikit-learn checks apply: the estimator takes file paths, not numeric arrays, so the checks that
feed it random matrices (``parametrize_with_checks``' fitting and prediction checks) do not; the API
checks that hold for every estimator do, and are run below: default construction, get_params/set_params,
clone, repr, no attributes set in __init__, __init__/set_params do not raise, unfitted predict raises
NotFittedError, fit does not change parameters. Then it is used as scikit-learn users would: cloned,
in a Pipeline, scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset, make_image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks as checks

import clothprobe
from clothprobe.classifiers import fit
from clothprobe.errors import ClothprobeError
from clothprobe.featurize import featurize
from clothprobe.runs.estimator import RunClassifier
from clothprobe.runs.predicting import predict

API_CHECKS = [checks.check_parameters_default_constructible, checks.check_get_params_invariance,
              checks.check_set_params, checks.check_estimator_cloneable, checks.check_estimator_repr,
              checks.check_no_attributes_set_in_init, checks.check_do_not_raise_errors_in_init_or_set_params,
              checks.check_estimators_unfitted]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("estimator")
    data = make_dataset(root / "clothes", per_class={"hat": 4, "shirt": 3, "t-shirt": 5})
    featurize(data, features_dir=root / "features", **TINY)
    (result,) = fit("clothes", backbone="vgg16", clf="logreg", balance="none", features_dir=root / "features",
                    models_dir=root / "models")
    return result.run_dir


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
def test_scikit_learn_api_checks(check) -> None:  # noqa: ANN001
    check("RunClassifier", RunClassifier())


def test_fit_does_not_change_parameters(run_dir: Path) -> None:
    est = RunClassifier(run_dir, batch_size=4)
    before = est.get_params()
    est.fit()
    assert est.get_params() == before and list(est.classes_) == ["hat", "shirt", "t-shirt"]


def test_predictions_are_predicts(run_dir: Path) -> None:
    images = sorted((run_dir.parents[3] / "clothes" / "test").rglob("*.png"))
    clf = clothprobe.load_run(run_dir)
    proba = clf.predict_proba([str(p) for p in images])
    result = predict(images, run_dir)
    assert np.allclose(proba, [[p.probabilities[c] for c in clf.classes_] for p in result.predictions])
    assert list(clf.predict(images)) == [p.top(1)[0][0] for p in result.predictions]
    truth = [p.parent.name for p in images]
    assert clf.score(images, truth) == pytest.approx(np.mean(clf.predict(images) == np.array(truth)))


def test_clone_and_pipeline(run_dir: Path) -> None:
    root = run_dir.parents[3] / "clothes" / "test"
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    pipe = Pipeline([("paths", FunctionTransformer(lambda rel: [str(root / r) for r in rel])),
                     ("clf", clone(clothprobe.load_run(run_dir)))])
    pipe.fit(names, [n.split("/")[0] for n in names])  # the run is already trained: fit loads it
    assert pipe.predict(names).shape == (12,) and pipe.predict_proba(names).shape == (12, 3)
    assert not hasattr(clone(pipe)[-1], "classes_")


def test_bad_input_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    clf = clothprobe.load_run(run_dir)
    with pytest.raises(ValueError, match="takes a 1-D list of image file paths"):
        clf.predict(np.zeros((2, 3)))
    with pytest.raises(ClothprobeError, match="No such image file"):
        clf.predict([tmp_path / "nope.jpg"])
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    make_image(tmp_path / "ok.png", seed=1)
    with pytest.raises(ClothprobeError, match=r"1 image\(s\) cannot be used .*broken.jpg"):
        clf.predict([tmp_path / "ok.png", tmp_path / "broken.jpg"])
    with pytest.raises(NotFittedError):
        RunClassifier(run_dir).predict([tmp_path / "ok.png"])
    with pytest.raises(ValueError, match="needs run_dir"):
        RunClassifier().fit()


def test_import_clothprobe_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, clothprobe; print(any(m in sys.modules for m in ('tensorflow', 'sklearn', 'keras')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
