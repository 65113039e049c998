import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset, TensorDataset

from p2pfl.datasets import dirichlet_split, iid_split, labels_of, load_digits, take


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 500), st.integers(1, 50), st.integers(0, 2**32))
def test_iid_split_is_a_balanced_partition(num_samples, parts, seed):
    if num_samples < parts:
        with pytest.raises(ValueError, match="non-empty"):
            iid_split(num_samples, parts, seed=seed)
        return
    split = iid_split(num_samples, parts, seed=seed)
    assert len(split) == parts
    assert np.array_equal(np.sort(np.concatenate(split)), np.arange(num_samples))
    sizes = [len(p) for p in split]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_split_partitions_every_sample_and_skews_labels_more_for_small_alpha():
    labels = labels_of(load_digits(seed=0)[0])

    def skew(alpha):
        split = dirichlet_split(labels, 16, alpha=alpha, seed=3)
        assert np.array_equal(np.sort(np.concatenate(split)), np.arange(len(labels)))
        assert min(len(p) for p in split) > 0
        # mean over parts of the share of the most common label
        return np.mean([np.bincount(labels[p]).max() / len(p) for p in split])

    assert skew(0.1) > skew(100.0) + 0.3
    assert skew(100.0) < 0.25


def test_splits_are_deterministic_for_a_seed():
    labels = np.repeat(np.arange(10), 30)
    a = dirichlet_split(labels, 8, alpha=0.5, seed=1)
    b = dirichlet_split(labels, 8, alpha=0.5, seed=1)
    c = dirichlet_split(labels, 8, alpha=0.5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_bad_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_split(np.zeros(10, dtype=int), 2, alpha=0, seed=0)


def test_take_keeps_tensor_datasets_fast_and_wraps_others():
    data = TensorDataset(torch.arange(10.0), torch.arange(10))
    part = take(data, np.array([1, 3]))
    assert isinstance(part, TensorDataset) and part.tensors[1].tolist() == [1, 3]
    plain = [(float(i), i) for i in range(10)]
    sub = take(plain, np.array([2, 4]))
    assert isinstance(sub, Subset) and [sub[i][1] for i in range(2)] == [2, 4]
    assert labels_of(plain).tolist() == list(range(10))


def test_digits_split_is_stratified_and_scaled():
    train, test = load_digits(seed=0)
    assert len(train) + len(test) == 1797
    assert 0.19 < len(test) / 1797 < 0.21
    assert set(labels_of(test).tolist()) == set(range(10))
    assert train.tensors[0].dtype == torch.float32 and float(train.tensors[0].max()) <= 1.0
