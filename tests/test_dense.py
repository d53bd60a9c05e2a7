"""The Keras dense head is a proper scikit-learn estimator: scikit-learn's own checks, where they apply."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from clothprobe.classifiers.dense import DenseHeadClassifier

# Checks that cannot hold for a small neural network trained by SGD, with the reason.
EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": "SGD with shuffled mini-batches: weights != repeated rows",
    "check_sample_weight_equivalence_on_sparse_data": "sparse input is not supported",
}


@parametrize_with_checks(
    # trained long enough (every row, 25 epochs at a high rate) to pass the checks' accuracy and F1 bars
    [DenseHeadClassifier(hidden=32, epochs=25, learning_rate=0.03, batch_size=32, validation_fraction=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILURES,
)
@pytest.mark.slow
def test_sklearn_estimator_checks(estimator, check) -> None:  # noqa: ANN001
    check(estimator)


def test_params_only_in_init_and_fitted_state_in_underscored_attrs() -> None:
    est = DenseHeadClassifier(hidden=4, epochs=3)
    assert est.get_params()["hidden"] == 4 and not hasattr(est, "model_")
    X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = np.array([0, 1] * 20)
    est.fit(X, y)
    assert hasattr(est, "model_") and hasattr(est, "classes_") and est.n_features_in_ == 5
    assert est.predict_proba(X).shape == (40, 2)


def test_bad_loss_is_named() -> None:
    with pytest.raises(ValueError, match="Unknown loss 'hinge'; choose one of: categorical, focal"):
        DenseHeadClassifier(loss="hinge").fit(np.zeros((4, 2)), [0, 1, 0, 1])


@pytest.mark.slow
def test_class_weight_dict_shifts_predictions() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = np.array([0, 1] * 100)  # labels unrelated to X: only the weights can decide
    plain = DenseHeadClassifier(hidden=4, epochs=50, learning_rate=0.05, validation_fraction=0).fit(X, y).predict(X)
    heavy = DenseHeadClassifier(hidden=4, epochs=50, learning_rate=0.05, validation_fraction=0, class_weight={0: 1.0, 1: 20.0}).fit(X, y).predict(X)
    assert (heavy == 1).mean() > 0.9 and (heavy == 1).mean() > (plain == 1).mean()


def test_the_heads_probabilities_are_keras_own_and_the_same_in_any_row_order() -> None:
    """predict_proba runs the Dense stack in float64: Keras's own outputs (to float32 rounding), and each
    row's result independent of where it sits in X (float32 kernels differ by position on AVX2 CPUs)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 3
    est = DenseHeadClassifier(hidden=8, epochs=2, validation_fraction=0).fit(X, y)
    proba = est.predict_proba(X)
    assert np.allclose(proba, np.asarray(est.model_(X, training=False)), atol=1e-6)
    order = rng.permutation(40)
    assert np.allclose(est.predict_proba(X[order]), proba[order], rtol=1e-12, atol=1e-15)
