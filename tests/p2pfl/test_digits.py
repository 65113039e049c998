import numpy as np
from sklearn.datasets import load_digits as sklearn_digits

from p2pfl.datasets.digits import digits_arrays, load_digits


def test_the_shipped_file_is_read_as_scikit_learn_reads_it():
    data, target = digits_arrays()
    reference = sklearn_digits()
    np.testing.assert_array_equal(data, reference.data)
    np.testing.assert_array_equal(target, reference.target)


def test_the_split_is_seeded_stratified_and_scaled():
    train, test = load_digits(seed=1)
    again, _ = load_digits(seed=1)
    assert len(train) + len(test) == 1797
    assert np.array_equal(train.tensors[0].numpy(), again.tensors[0].numpy())
    assert float(train.tensors[0].min()) >= 0.0 and float(train.tensors[0].max()) <= 1.0
    assert set(np.bincount(test.tensors[1].numpy())) <= {35, 36, 37}
