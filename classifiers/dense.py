"""A small Keras dense head (Dense + Dropout + softmax, as in the reference notebooks) as a scikit-learn
estimator, so it sits in the same pipelines, searches and model files as the classical heads."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from clothprobe._util.seeding import keras_seeded
from clothprobe.classifiers.proba import softmax

LOSSES = ("categorical", "focal")


def make_loss(name: str):  # noqa: ANN201 - a keras Loss
    """Categorical cross-entropy, or the focal variant one reference notebook used (shared with e2e)."""
    import keras

    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return keras.losses.CategoricalFocalCrossentropy() if name == "focal" else keras.losses.CategoricalCrossentropy()


PREDICT_CHUNK = 8192  # rows per eager call


_ACTIVATIONS = {"linear": lambda z: z, "relu": lambda z: np.maximum(z, 0.0), "softmax": softmax}


def _dense_stack(model) -> list[tuple[np.ndarray, np.ndarray, str]] | None:  # noqa: ANN001 - a keras.Model
    """The head's Dense layers as float64 (kernel, bias, activation), when it is only Dense and Dropout
    layers with activations numpy computes (DenseHeadClassifier's head); else None."""
    stack = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Dropout":
            continue  # the identity at inference
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if kind != "Dense" or activation not in _ACTIVATIONS or not layer.use_bias:
            return None
        kernel, bias = layer.get_weights()
        stack.append((np.asarray(kernel, np.float64), np.asarray(bias, np.float64), activation))
    return stack or None


def keras_proba(model, X: np.ndarray) -> np.ndarray:  # noqa: ANN001 - a keras.Model
    """A small Keras head's outputs for ``X``. A stack of Dense layers (the dense head) runs in float64 numpy:
    each row's result is the same wherever it sits in ``X`` (float32 kernels round a row differently by its
    position in the batch on some CPUs: 6e-8 on an AVX2-only Zen 3). Any other model: direct (eager) calls in
    chunks; unlike ``model.predict`` no tf.function is traced per model."""
    stack = _dense_stack(model)
    if stack is not None:
        out = np.asarray(X, np.float32).astype(np.float64)
        for kernel, bias, activation in stack:
            out = _ACTIVATIONS[activation](out @ kernel + bias)
        return out
    X = np.asarray(X, np.float32)
    parts = [np.asarray(model(X[i : i + PREDICT_CHUNK], training=False), np.float64)
             for i in range(0, max(len(X), 1), PREDICT_CHUNK)]
    return np.concatenate(parts)


class DenseHeadClassifier(ClassifierMixin, BaseEstimator):
    """Dense(hidden, relu) -> Dropout -> Dense(n_classes, softmax), trained with Adam.

    Early stopping watches ``validation_fraction`` of the training rows (stratified), never the caller's
    validation split, and restores the best epoch. ``class_weight="balanced"`` becomes per-row sample
    weights; ``loss="focal"`` uses categorical focal cross-entropy.
    """

    def __init__(
        self,
        hidden: int = 100,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        epochs: int = 100,
        batch_size: int = 64,
        patience: int = 8,
        validation_fraction: float = 0.1,
        loss: str = "categorical",
        class_weight: str | dict | None = None,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.loss = loss
        self.class_weight = class_weight
        self.random_state = random_state

    def _build(self, n_features: int, n_classes: int):  # noqa: ANN202 - a keras.Model
        import keras

        model = keras.Sequential(
            [
                keras.Input((n_features,)),
                keras.layers.Dense(self.hidden, activation="relu"),
                keras.layers.Dropout(self.dropout),
                keras.layers.Dense(n_classes, activation="softmax"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=make_loss(self.loss))
        return model

    def fit(self, X, y, sample_weight=None):  # noqa: ANN001, ANN201 - scikit-learn signature
        if self.loss not in LOSSES:
            raise ValueError(f"Unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {self.class_weight!r}")
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        weights = _check_sample_weight(sample_weight, X, dtype=np.float32)
        if self.class_weight is not None:
            weights = weights * compute_sample_weight(self.class_weight, y).astype(np.float32)
        if not weights.sum() > 0:
            raise ValueError("Sample weights sum to zero: there is nothing to fit.")
        onehot = np.eye(len(self.classes_), dtype=np.float32)[y_index]

        with keras_seeded(self.random_state):  # the caller's own random state is left as it was
            history = self._train(X, onehot, weights, y_index)
        self.n_epochs_ = len(history.history["loss"])
        return self

    def _train(self, X: np.ndarray, onehot: np.ndarray, weights: np.ndarray, y_index: np.ndarray):  # noqa: ANN202
        """Build and train ``model_``; early stopping on a stratified share of the rows (a Keras History)."""
        import keras

        self.model_ = self._build(X.shape[1], len(self.classes_))
        fit_kw: dict = {}
        counts = np.bincount(y_index)
        n_held = int(round(self.validation_fraction * len(y_index)))
        if self.validation_fraction > 0 and n_held >= len(self.classes_) and counts.min() >= 2:
            tr, va = train_test_split(np.arange(len(y_index)), test_size=n_held, stratify=y_index,
                                      random_state=self.random_state)
            fit_kw["validation_data"] = (X[va], onehot[va], weights[va])
            fit_kw["callbacks"] = [keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True)]
        else:
            tr = np.arange(len(y_index))
        return self.model_.fit(X[tr], onehot[tr], sample_weight=weights[tr], epochs=self.epochs,
                               batch_size=self.batch_size, shuffle=True, verbose=0, **fit_kw)

    def predict_proba(self, X):  # noqa: ANN001, ANN201
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return keras_proba(self.model_, X)

    def predict(self, X):  # noqa: ANN001, ANN201
        proba = self.predict_proba(X)  # checks fitted state first
        return self.classes_[np.argmax(proba, axis=1)]
