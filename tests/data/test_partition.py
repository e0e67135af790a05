"""Tests for tadlora.data.partition: the paper's label skew, Dirichlet, iid."""

import numpy as np
import pytest

from tadlora.data.partition import label_counts, label_skew_proportions, partition


def test_label_skew_reproduces_paper_cases() -> None:
    binary = [[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3 + [[0.5, 0.5]] * 4
    np.testing.assert_array_equal(label_skew_proportions(10, 2), binary)
    mnli = [[0.9, 0.05, 0.05]] * 4 + [[0.05, 0.9, 0.05]] * 3 + [[0.05, 0.05, 0.9]] * 3
    np.testing.assert_array_equal(label_skew_proportions(10, 3), mnli)


@pytest.mark.parametrize("n, k", [(2, 2), (3, 2), (7, 2), (11, 2), (3, 3), (5, 4), (20, 3)])
def test_label_skew_proportions_sane(n: int, k: int) -> None:
    props = label_skew_proportions(n, k)
    assert props.shape == (n, k)
    np.testing.assert_allclose(props.sum(1), 1.0)
    assert set(props.argmax(1)[props.max(1) == 0.9]) == set(range(k))  # every class dominant


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def test_label_skew_partition_follows_proportions_and_is_disjoint() -> None:
    labels = _labels([1500, 1500, 1500])
    parts = partition(labels, 10, "label_skew", seed=0, examples_per_client=200)
    flat = np.concatenate(parts)
    assert len(flat) == 2000 and len(np.unique(flat)) == 2000  # disjoint
    counts = np.asarray(label_counts(labels, parts))  # (10, 3)
    np.testing.assert_array_equal(counts / 200, label_skew_proportions(10, 3))


def test_label_skew_default_size_is_maximal_and_overflow_errors() -> None:
    labels = _labels([400, 600])
    parts = partition(labels, 10, "label_skew", seed=0)
    per = len(parts[0])
    assert per > 0 and all(len(p) == per for p in parts)
    assert len(np.unique(np.concatenate(parts))) == 10 * per
    with pytest.raises(ValueError, match=f"needs .* of class 0, and the training set has 400: "
                       f"set data.examples_per_client to {per} or less"):
        partition(labels, 10, "label_skew", seed=0, examples_per_client=per + 1)
    with pytest.raises(ValueError, match="has 0: use fewer clients or more data"):
        partition(_labels([400, 0, 600]), 10, "label_skew", seed=0, examples_per_client=10)


def test_dirichlet_and_iid_partitions() -> None:
    labels = _labels([700, 300])
    for scheme in ("dirichlet", "iid"):
        parts = partition(labels, 8, scheme, seed=1, alpha=0.3)
        assert [len(p) for p in parts] == [125] * 8  # default: N // n_clients, all used
        assert len(np.unique(np.concatenate(parts))) == 1000
    iid = np.asarray(label_counts(labels, partition(labels, 4, "iid", 0))) / 250  # (4, 2)
    assert np.all(np.abs(iid[:, 0] - 0.7) < 0.1)
    skewed = np.asarray(label_counts(labels, partition(labels, 4, "dirichlet", 0, alpha=0.05)))
    assert np.abs(skewed[:, 0] / 250 - 0.7).max() > 0.2  # small alpha: strong skew
    with pytest.raises(ValueError, match="set a smaller data.examples_per_client"):
        partition(labels, 4, "iid", 0, examples_per_client=251)


def test_partitions_reproducible_and_seed_dependent() -> None:
    labels = _labels([500, 500, 500])
    for scheme in ("label_skew", "dirichlet", "iid"):
        a, b = partition(labels, 5, scheme, 3), partition(labels, 5, scheme, 3)
        c = partition(labels, 5, scheme, 4)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    with pytest.raises(ValueError, match="dirichlet.*iid.*label_skew"):
        partition(labels, 5, "pathological", 0)
