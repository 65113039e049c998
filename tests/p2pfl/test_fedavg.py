import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.aggregation import Contribution, FedAvg
from p2pfl.model_state import ModelState


def state_of(values):
    return ModelState.from_tensors({"w": torch.tensor(values, dtype=torch.float32)})


def test_weighted_mean():
    own = Contribution("a", state_of([0.0, 0.0]), weight=1)
    other = Contribution("b", state_of([4.0, 8.0]), weight=3)
    merged = FedAvg().aggregate(own, [other])
    torch.testing.assert_close(merged.tensor("w"), torch.tensor([3.0, 6.0]))
    assert merged.layout is own.state.layout


def test_include_own_false_ignores_the_own_model():
    own = Contribution("a", state_of([100.0]), weight=1)
    received = [Contribution("b", state_of([1.0])), Contribution("c", state_of([3.0]))]
    merged = FedAvg(include_own=False).aggregate(own, received)
    torch.testing.assert_close(merged.tensor("w"), torch.tensor([2.0]))


def test_bad_weights_are_refused():
    own = Contribution("a", state_of([1.0]), weight=0)
    with pytest.raises(ValueError, match="positive sum"):
        FedAvg().aggregate(own, [Contribution("b", state_of([1.0]), weight=0)])
    with pytest.raises(ValueError, match="non-negative"):
        FedAvg().aggregate(own, [Contribution("b", state_of([1.0]), weight=-1)])


floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(st.lists(floats, min_size=1, max_size=5), st.integers(0, 5))
def test_fedavg_of_identical_inputs_is_the_input(values, copies):
    own = Contribution("a", state_of(values), weight=2)
    received = [Contribution(f"p{i}", state_of(values), weight=i + 1) for i in range(copies)]
    torch.testing.assert_close(FedAvg().aggregate(own, received).flat, own.state.flat, rtol=1e-5, atol=1e-4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(floats, min_size=3, max_size=3), min_size=2, max_size=6), st.randoms())
def test_fedavg_does_not_depend_on_the_order_of_received_models(rows, rnd):
    own = Contribution("a", state_of([0.0, 0.0, 0.0]))
    received = [Contribution(f"p{i}", state_of(row), weight=i + 1) for i, row in enumerate(rows)]
    shuffled = received[:]
    rnd.shuffle(shuffled)
    torch.testing.assert_close(
        FedAvg().aggregate(own, received).flat, FedAvg().aggregate(own, shuffled).flat, rtol=1e-5, atol=1e-3
    )
