"""Open-set scores on tiny synthetic features where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from clothprobe.classifiers import openset
from clothprobe.classifiers.openset import HeadOutput, OpenSetScorer
from clothprobe.errors import ClothprobeError


def blobs(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.normal(0, spread, (n, centres.shape[1])), y


@pytest.fixture
def world():
    """Three known classes around orthogonal directions; unknown photos around a fourth direction."""
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4] * 4
    X, y = blobs(300, centres[:3], rng)
    Xv, _ = blobs(120, centres[:3], rng)
    Xu, _ = blobs(80, centres[3:], rng)
    head = LogisticRegression(max_iter=500).fit(X, y)

    def out(Z: np.ndarray) -> HeadOutput:
        return openset.head_output(head, Z, head.predict_proba(Z))

    return OpenSetScorer(k=5, pca_components=6).fit(X, y), out(Xv), out(Xu), head


def test_every_distance_score_separates_a_far_cluster(world) -> None:
    scorer, known, unknown, _ = world
    k, u = scorer.scores(known), scorer.scores(unknown)
    assert set(k) == {"msp", "energy", "knn", "mahalanobis"}
    for name in ("knn", "mahalanobis"):
        assert openset.auroc(k[name], u[name]) > 0.99, name


def test_knn_is_the_kth_cosine_similarity() -> None:
    bank = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    scorer = OpenSetScorer(k=2, pca_components=1).fit(bank, np.array([0, 1, 0]))
    sims = scorer.knn(np.array([[2.0, 0.0]]))  # cosines 1, 0, 0.707: the 2nd nearest is 0.707
    assert sims[0] == pytest.approx(np.sqrt(0.5), abs=1e-6)


def test_mahalanobis_is_zero_at_a_class_mean_and_falls_away() -> None:
    rng = np.random.default_rng(1)
    X, y = blobs(200, np.eye(4)[:2] * 3, rng)
    scorer = OpenSetScorer(pca_components=3).fit(X, y)
    at_mean = scorer.mahalanobis(np.array([[3.0, 0, 0, 0]]))
    far = scorer.mahalanobis(np.array([[0, 0, 3.0, 0]]))
    assert at_mean[0] > far[0] and at_mean[0] > -5


def test_tune_keeps_95_percent_of_knowns_and_rejects_the_far_cluster(world) -> None:
    scorer, known, unknown, _ = world
    chosen = openset.tune(scorer, known, unknown, seed=0)
    assert set(chosen.tuning_auroc) == {"msp", "energy", "knn", "mahalanobis", "combined"}
    assert chosen.tuning_auroc[chosen.score] == max(chosen.tuning_auroc.values())
    kept = ~chosen.is_unknown(chosen.values(known))
    assert 0.95 <= kept.mean() < 0.97
    assert chosen.is_unknown(chosen.values(unknown)).mean() > 0.9


def test_tune_chooses_the_only_informative_score() -> None:
    """msp is useless here (the head is sure of everything), knn is not: knn must win over msp."""
    rng = np.random.default_rng(2)
    X, y = blobs(200, np.eye(4)[:2] * 5, rng)
    sure = np.tile([1.0, 0.0], (60, 1))
    known = HeadOutput(blobs(60, np.eye(4)[:2] * 5, rng)[0], sure)
    unknown = HeadOutput(blobs(60, np.eye(4)[2:3] * 5, rng)[0], sure)
    chosen = openset.tune(OpenSetScorer(k=3, pca_components=3).fit(X, y), known, unknown,
                          allowed=("msp", "knn"))
    assert chosen.score == "knn" and chosen.tuning_auroc["msp"] == 0.5


def test_evaluate_intervals_bracket_the_figure_and_are_seeded() -> None:
    rng = np.random.default_rng(3)
    known, unknown = rng.normal(1, 1, 200), rng.normal(0, 1, 100)
    a = openset.evaluate(known, unknown, seed=4, resamples=300)
    assert a == openset.evaluate(known, unknown, seed=4, resamples=300)
    assert a["auroc_ci"][0] < a["auroc"] < a["auroc_ci"][1]
    assert a["fpr95_ci"][0] <= a["fpr95"] <= a["fpr95_ci"][1]
    assert 0.6 < a["auroc"] < 0.9  # two unit normals one apart: AUROC = Phi(1/sqrt 2) = 0.76
    assert a["fpr95"] == pytest.approx(np.mean(unknown >= np.quantile(known, 0.05, method="lower")))


def test_split_unknown_is_seeded_stratified_and_disjoint() -> None:
    types = np.repeat([0, 1, 2], [40, 20, 10])
    tuning, report = openset.split_unknown(types, seed=5)
    assert not set(tuning) & set(report) and len(tuning) + len(report) == 70
    assert np.bincount(types[tuning]).tolist() == [20, 10, 5]
    assert np.array_equal(tuning, openset.split_unknown(types, seed=5)[0])
    assert not np.array_equal(tuning, openset.split_unknown(types, seed=6)[0])


@pytest.mark.parametrize("allowed", [("knn",), ("combined",)])
def test_save_and_load_give_the_same_values(world, tmp_path, allowed) -> None:
    scorer, known, unknown, _ = world
    chosen = openset.tune(scorer, known, unknown, allowed=allowed)
    entry = openset.save(chosen, tmp_path)
    back = openset.load(tmp_path, entry)
    assert back.score == chosen.score and back.threshold == chosen.threshold
    assert np.allclose(back.values(unknown), chosen.values(unknown))


def test_negatives_give_a_contrast_score_that_survives_saving(world, tmp_path) -> None:
    scorer, known, unknown, _ = world
    negatives = unknown.X[:40]  # photos like the unknown ones: the contrast must separate better than plain knn
    labels = np.zeros(len(scorer.bank_), int)  # the k-NN scores do not look at labels
    with_neg = OpenSetScorer(k=5, pca_components=6).fit(scorer.bank_, labels, negatives)
    later = HeadOutput(unknown.X[40:], unknown.proba[40:], unknown.logits[40:])
    k, u = with_neg.scores(known), with_neg.scores(later)
    assert openset.auroc(k["knn_negatives"], u["knn_negatives"]) >= openset.auroc(k["knn"], u["knn"])
    chosen = openset.tune(with_neg, known, later, allowed=("knn_negatives",))
    back = openset.load(tmp_path, openset.save(chosen, tmp_path))
    assert np.allclose(back.values(later), chosen.values(later))


def test_load_refuses_a_pickle_and_a_wrong_shape(world, tmp_path) -> None:
    scorer, known, unknown, _ = world
    entry = openset.save(openset.tune(scorer, known, unknown, allowed=("knn",)), tmp_path)
    with np.load(tmp_path / openset.FILE) as f:
        arrays = dict(f)
    np.savez(tmp_path / openset.FILE, **{**arrays, "precision": np.zeros((2, 2))})
    with pytest.raises(ClothprobeError, match="does not hold the open-set state"):
        openset.load(tmp_path, entry)
    np.savez(tmp_path / openset.FILE, **{**arrays, "bank": np.array([object()], dtype=object)})
    with pytest.raises(ClothprobeError, match="not a readable open-set file"):
        openset.load(tmp_path, entry)
