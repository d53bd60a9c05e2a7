"""How sure a figure is: bootstrap intervals, the paired test, calibration error and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from clothprobe.classifiers.metrics import classification_metrics
from clothprobe.classifiers.stats import (
    apply_temperature,
    bootstrap_intervals,
    expected_calibration_error,
    fit_temperature,
    mcnemar,
)


def predictions(n: int, accuracy: float, n_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions right on exactly ``accuracy`` of the photos (wrong ones: another class)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    wrong = rng.permutation(n)[: int(round((1 - accuracy) * n))]
    pred = y.copy()
    pred[wrong] = (y[wrong] + rng.integers(1, n_classes, len(wrong))) % n_classes
    return y, pred


@pytest.mark.parametrize("accuracy", [0.6, 0.85, 0.95])
def test_intervals_contain_the_estimate_and_narrow_with_more_photos(accuracy: float) -> None:
    widths = []
    for n in (100, 400, 1600):
        y, pred = predictions(n, accuracy)
        ci = bootstrap_intervals(y, pred, 4, seed=0)
        point = {"accuracy": np.mean(y == pred), "macro_f1": f1_score(y, pred, average="macro"),
                 "balanced_accuracy": balanced_accuracy_score(y, pred)}
        for key, value in point.items():
            assert ci[key][0] <= value <= ci[key][1], (key, n, ci[key], value)
        assert ci["accuracy"][0] <= accuracy <= ci["accuracy"][1]  # the true accuracy too
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[0] > widths[1] > widths[2]
    # the binomial standard error predicts the width: 2 * 1.96 * sqrt(p(1-p)/n), within 20%
    expected = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / 1600)
    assert widths[2] == pytest.approx(expected, rel=0.2)


def test_intervals_are_seeded() -> None:
    y, pred = predictions(300, 0.8)
    assert bootstrap_intervals(y, pred, 4, seed=1) == bootstrap_intervals(y, pred, 4, seed=1)
    assert bootstrap_intervals(y, pred, 4, seed=1) != bootstrap_intervals(y, pred, 4, seed=2)


def test_metrics_carry_their_intervals() -> None:
    y, pred = predictions(200, 0.8, n_classes=3)
    proba = np.full((200, 3), 0.1)
    proba[np.arange(200), pred] = 0.8
    m = classification_metrics(y, proba, ["a", "b", "c"], seed=0, source="test split")
    assert m.accuracy == pytest.approx(0.8) and set(m.ci) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert m.interval("accuracy")[0] < 0.8 < m.interval("accuracy")[1]
    assert m.ece == pytest.approx(0.0, abs=1e-9)  # 80% confident and 80% right


def test_paired_test_clearly_better_and_tie() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.9
    b = a & (rng.random(400) < 0.8)  # b loses about 70 of a's right answers and gains none
    better = mcnemar(a, b)
    assert better.only_b == 0 and better.only_a > 50 and better.p_value < 1e-10 and not better.within_noise
    assert better.difference == pytest.approx(a.mean() - b.mean())
    c = a.copy()
    swap = rng.choice(400, 20, replace=False)
    c[swap] = ~c[swap]  # different mistakes, the same number of each kind (10 and 10)
    c[swap[:10]], c[swap[10:]] = True, False
    d = a.copy()
    d[swap[:10]], d[swap[10:]] = False, True
    tie = mcnemar(c, d)
    assert tie.only_a == tie.only_b == 10 and tie.p_value == pytest.approx(1.0) and tie.within_noise
    assert mcnemar(a, a).p_value == 1.0 and mcnemar(a, a).difference == 0.0


def test_temperature_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4000, 5))
    true_proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true_proba])
    overconfident = apply_temperature(true_proba, 0.5)  # sharpened: T = 2 undoes it
    assert fit_temperature(y, overconfident) == pytest.approx(2.0, rel=0.1)
    assert expected_calibration_error(y, true_proba) < 0.03 < expected_calibration_error(y, overconfident)
    assert np.allclose(apply_temperature(true_proba, 1.0), true_proba)
