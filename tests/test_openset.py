"""Open-set scores on tiny synthetic features where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    Xv, yv = blobs(120, centres[:3], rng)
    Xu, _ = blobs(80, centres[3:], rng)
    head = LogisticRegression(max_iter=500).fit(X, y)

    def out(Z: np.ndarray) -> HeadOutput:
        return openset.head_output(head, Z, head.predict_proba(Z))

    return OpenSetScorer(k=5, pca_components=6).fit(X, y), out(Xv), out(Xu), head, yv


def test_every_distance_score_separates_a_far_cluster(world) -> None:
    scorer, known, unknown, _, yv = world
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


def test_tune_costs_at_most_1_pp_of_validation_accuracy_and_rejects_the_far_cluster(world) -> None:
    scorer, known, unknown, _, yv = world
    chosen = openset.tune(scorer, known, unknown, known_y=yv, seed=0)
    assert set(chosen.tuning_auroc) == {"msp", "energy", "knn", "mahalanobis", "combined"}
    assert chosen.tuning_auroc[chosen.score] == max(chosen.tuning_auroc.values())
    rejected = chosen.is_unknown(chosen.values(known))
    right = known.proba.argmax(1) == yv
    assert np.sum(rejected & right) <= 0.01 * len(yv) and rejected.any()
    assert chosen.is_unknown(chosen.values(unknown)).mean() > 0.9


def test_threshold_at_cost_rejects_wrong_answers_freely_and_right_ones_within_the_cost() -> None:
    values = np.arange(200, dtype=float)
    right = np.ones(200, bool)
    right[:10] = False  # the ten lowest scores are wrong answers: rejecting them costs nothing
    t = openset.threshold_at_cost(values, right, cost=0.01)
    assert t == 12.0  # rejects 0-11: the 10 wrong and 2 right (1% of 200)
    assert openset.threshold_at_cost(values, np.zeros(200, bool)) == np.inf  # nothing right: nothing to lose
    assert openset.threshold_at_cost(values, right, cost=0.0) == 10.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=300),
       st.floats(0, 0.2))
def test_threshold_at_cost_is_the_highest_within_the_cost(rows, cost) -> None:
    values, right = np.array([v for v, _ in rows]), np.array([r for _, r in rows])
    t = openset.threshold_at_cost(values, right, cost)
    allowed = np.floor(cost * len(values) + 1e-9)
    assert np.sum((values < t) & right) <= allowed
    higher = values[right & (values >= t)]
    if len(higher):  # the next right answer's score as the threshold would reject too many right answers
        nxt = np.nextafter(higher.min(), np.inf)
        assert np.sum((values < nxt) & right) > allowed


def test_tune_chooses_the_only_informative_score() -> None:
    """msp is useless here (the head is sure of everything), knn is not: knn must win over msp."""
    rng = np.random.default_rng(2)
    X, y = blobs(200, np.eye(4)[:2] * 5, rng)
    sure = np.tile([1.0, 0.0], (60, 1))
    known = HeadOutput(blobs(60, np.eye(4)[:2] * 5, rng)[0], sure)
    unknown = HeadOutput(blobs(60, np.eye(4)[2:3] * 5, rng)[0], sure)
    chosen = openset.tune(OpenSetScorer(k=3, pca_components=3).fit(X, y), known, unknown, known_y=np.zeros(60, int),
                          allowed=("msp", "knn"))
    assert chosen.score == "knn" and chosen.tuning_auroc["msp"] == 0.5


def test_combiner_is_scikit_learns_logistic_regression_when_no_weight_is_held_at_zero() -> None:
    rng = np.random.default_rng(7)
    known = rng.integers(0, 2, 400)
    S = np.column_stack([known + rng.normal(0, 1, 400), 2 * known + rng.normal(0, 3, 400)])
    ours = openset.Combiner.fit(["a", "b"], S, known)
    theirs = LogisticRegression(class_weight="balanced").fit((S - ours.mean) / ours.scale, known)
    assert (ours.coef > 0).all()
    assert np.allclose(ours.coef, theirs.coef_[0], atol=1e-3)
    assert ours.intercept == pytest.approx(theirs.intercept_[0], abs=1e-3)


def test_combiner_gives_no_weight_to_a_score_that_points_the_wrong_way() -> None:
    """A score that is *higher* for the unknown rows (like a distance score when these unknown photos look
    more like the training photos than the known ones do) must not be used upside down."""
    rng = np.random.default_rng(8)
    known = rng.integers(0, 2, 400)
    right_way, wrong_way = known + rng.normal(0, 1, 400), -3 * known + rng.normal(0, 1, 400)
    combiner = openset.Combiner.fit(["msp", "knn"], np.column_stack([right_way, wrong_way]), known)
    assert combiner.coef[0] > 0.5 and combiner.coef[1] == 0.0
    unconstrained = LogisticRegression(class_weight="balanced").fit(np.column_stack([right_way, wrong_way]), known)
    assert unconstrained.coef_[0][1] < 0  # what the bound prevents


def test_energy_sees_both_views_when_the_probabilities_do(world) -> None:
    from scipy.special import logsumexp

    scorer, known, _, head, _ = world
    flipped = known.X[::-1].copy()  # any second view
    out = openset.head_output(head, known.X, known.proba, flipped=flipped)
    mean_logits = (head.decision_function(known.X) + head.decision_function(flipped)) / 2
    assert np.allclose(scorer.scores(out)["energy"], logsumexp(mean_logits, axis=1))
    assert not np.allclose(out.logits, openset.head_output(head, known.X, known.proba).logits)


def test_a_saved_entry_records_the_logit_views_and_an_older_one_reads_as_the_original_view(world, tmp_path) -> None:
    scorer, known, unknown, _, yv = world
    entry = openset.save(openset.tune(scorer, known, unknown, known_y=yv), tmp_path)
    assert openset.load(tmp_path, entry).logits_of_every_view is True
    older = {k: v for k, v in entry.items() if k != "logits_of_every_view"}
    assert openset.load(tmp_path, older).logits_of_every_view is False
    with pytest.raises(ClothprobeError, match="logits_of_every_view 'yes'"):
        openset.load(tmp_path, {**entry, "logits_of_every_view": "yes"})


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
    scorer, known, unknown, _, yv = world
    chosen = openset.tune(scorer, known, unknown, known_y=yv, allowed=allowed)
    entry = openset.save(chosen, tmp_path)
    back = openset.load(tmp_path, entry)
    assert back.score == chosen.score and back.threshold == chosen.threshold
    assert np.allclose(back.values(unknown), chosen.values(unknown))


def test_negatives_give_a_contrast_score_that_survives_saving(world, tmp_path) -> None:
    scorer, known, unknown, _, yv = world
    negatives = unknown.X[:40]  # photos like the unknown ones: the contrast must separate better than plain knn
    labels = np.zeros(len(scorer.bank_), int)  # the k-NN scores do not look at labels
    with_neg = OpenSetScorer(k=5, pca_components=6).fit(scorer.bank_, labels, negatives)
    later = HeadOutput(unknown.X[40:], unknown.proba[40:], unknown.logits[40:])
    k, u = with_neg.scores(known), with_neg.scores(later)
    assert openset.auroc(k["knn_negatives"], u["knn_negatives"]) >= openset.auroc(k["knn"], u["knn"])
    chosen = openset.tune(with_neg, known, later, known_y=yv, allowed=("knn_negatives",))
    back = openset.load(tmp_path, openset.save(chosen, tmp_path))
    assert np.allclose(back.values(later), chosen.values(later))


def test_load_refuses_a_pickle_and_a_wrong_shape(world, tmp_path) -> None:
    scorer, known, unknown, _, yv = world
    entry = openset.save(openset.tune(scorer, known, unknown, known_y=yv, allowed=("knn",)), tmp_path)
    with np.load(tmp_path / openset.FILE) as f:
        arrays = dict(f)
    np.savez(tmp_path / openset.FILE, **{**arrays, "precision": np.zeros((2, 2))})
    with pytest.raises(ClothprobeError, match="does not hold the open-set state"):
        openset.load(tmp_path, entry)
    np.savez(tmp_path / openset.FILE, **{**arrays, "bank": np.array([object()], dtype=object)})
    with pytest.raises(ClothprobeError, match="not a readable open-set file"):
        openset.load(tmp_path, entry)
