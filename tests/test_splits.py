"""Seeded, stratified, grouped splits (featurize/splits.py), property-tested: no group in two splits, every class
in train, the proportions asked for (within what whole folds and whole groups allow), the same seed the same split
whatever the order of the rows."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clothprobe.errors import ClothprobeError
from clothprobe.featurize.splits import SPLITS, assign_splits, fold_counts, parse_proportions

PROPORTIONS = [(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.5, 0.0), (0.75, 0.0, 0.25)]


@st.composite
def photos(draw: st.DrawFn) -> tuple[list[str], list[str], int]:
    """Labels and groups of 20 to 120 groups of 1 to ``max_group`` photos; each photo's class drawn at random
    (so groups mix classes), and the largest group size."""
    n_groups = draw(st.integers(20, 120))
    max_group = draw(st.integers(1, 5))
    n_classes = draw(st.integers(2, 5))
    sizes = draw(st.lists(st.integers(1, max_group), min_size=n_groups, max_size=n_groups))
    groups = [f"sender-{g}" for g, size in enumerate(sizes) for _ in range(size)]
    labels = draw(st.lists(st.sampled_from([f"class-{c}" for c in range(n_classes)]), min_size=len(groups),
                           max_size=len(groups)))
    return labels, groups, max(sizes)


@settings(max_examples=40, deadline=None)
@given(data=photos(), proportions=st.sampled_from(PROPORTIONS), seed=st.integers(0, 2**32 - 1),
       order=st.randoms(use_true_random=False))
def test_grouped_split_properties(data, proportions, seed, order) -> None:
    labels, groups, max_group = data
    out = assign_splits(labels, groups, proportions, seed)
    split_of_group: dict[str, set[str]] = {}
    for group, split in zip(groups, out.splits):
        split_of_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values()), "a group in two splits"
    assert {lab for lab, s in zip(labels, out.splits) if s == "train"} == set(labels), "a class without training photos"
    shares = Counter(out.splits)
    # whole folds (0.5/folds from the rounding) and whole groups (a group taken back into train per class at most)
    tolerance = 0.5 / out.folds + len(set(labels)) * max_group / len(labels)
    for split, wanted in zip(SPLITS, proportions):
        assert abs(shares[split] / len(labels) - wanted) <= tolerance, (split, shares, out.folds)
    assert assign_splits(labels, groups, proportions, seed) == out  # the same seed, the same split
    rows = list(range(len(labels)))
    order.shuffle(rows)
    shuffled = assign_splits([labels[i] for i in rows], [groups[i] for i in rows], proportions, seed)
    assert [shuffled.splits[rows.index(i)] for i in range(len(labels))] == out.splits  # row order changes nothing


@settings(max_examples=40, deadline=None)
@given(data=photos(), seed=st.integers(0, 2**32 - 1))
def test_photo_by_photo_split_is_stratified(data, seed) -> None:
    labels, _, _ = data
    out = assign_splits(labels, None, (0.7, 0.15, 0.15), seed)
    assert {lab for lab, s in zip(labels, out.splits) if s == "train"} == set(labels)
    for split, wanted in zip(SPLITS, (0.7, 0.15, 0.15)):
        tolerance = 0.5 / out.folds + len(set(labels)) / len(labels)
        assert abs(Counter(out.splits)[split] / len(labels) - wanted) <= tolerance


def test_other_seeds_give_other_splits() -> None:
    labels = [f"c{i % 3}" for i in range(300)]
    groups = [f"g{i // 3}" for i in range(300)]
    assert assign_splits(labels, groups, (0.7, 0.15, 0.15), 0) != assign_splits(labels, groups, (0.7, 0.15, 0.15), 1)


def test_a_class_left_out_of_train_takes_its_smallest_group_back() -> None:
    # "rare" is one group of 2 photos; whichever fold holds it, the class must end up in train
    labels = ["common"] * 200 + ["rare"] * 2
    groups = [f"g{i // 4}" for i in range(200)] + ["r", "r"]
    for seed in range(10):
        out = assign_splits(labels, groups, (0.7, 0.15, 0.15), seed)
        assert out.splits[-2:] == ["train", "train"]


def test_missing_photos_are_split_but_do_not_count_for_train() -> None:
    labels = ["a"] * 40 + ["b"] * 40
    groups = [f"g{i}" for i in range(80)]
    present = [True] * 79 + [False]
    out = assign_splits(labels, groups, (0.7, 0.15, 0.15), 0, present=present)
    assert any(s == "train" and p for s, p, lab in zip(out.splits, present, labels) if lab == "b")


@given(parts=st.lists(st.floats(0, 100, allow_nan=False), min_size=3, max_size=3))
def test_parse_proportions_takes_percentages_summing_to_100(parts) -> None:
    text = "/".join(repr(p) for p in parts)
    if abs(sum(parts) - 100) <= 1e-6 and parts[0] > 0:
        assert parse_proportions(text) == pytest.approx(tuple(p / 100 for p in parts))
    else:
        with pytest.raises(ClothprobeError, match="--proportions"):
            parse_proportions(text)


@pytest.mark.parametrize("text", ["70/15", "a/b/c", "70/15/15/0", "-10/60/50", "nan/50/50", "inf/0/0", "120/-10/-10"])
def test_parse_proportions_refuses_in_one_line(text) -> None:
    with pytest.raises(ClothprobeError, match="--proportions"):
        parse_proportions(text)


def test_fold_counts_give_each_asked_split_a_fold() -> None:
    assert fold_counts((0.7, 0.15, 0.15), 20) == (14, 3, 3)
    assert fold_counts((0.05, 0.9, 0.05), 3) == (1, 1, 1)
    assert fold_counts((1.0, 0.0, 0.0), 20) == (20, 0, 0)
    assert sum(fold_counts((0.34, 0.33, 0.33), 7)) == 7


def test_too_few_groups_or_photos_is_one_line() -> None:
    with pytest.raises(ClothprobeError, match=r"2 group\(s\) .* cannot fill 3 splits"):
        assign_splits(["a", "a", "b", "b"], ["x", "x", "y", "y"], (0.7, 0.15, 0.15), 0)
    with pytest.raises(ClothprobeError, match="the largest class: 2"):
        assign_splits(["a", "a", "b", "b", "c"], None, (0.7, 0.15, 0.15), 0)
    assert assign_splits(["a", "b"], None, (1.0, 0.0, 0.0), 0).splits == ["train", "train"]
