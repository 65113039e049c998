import numpy as np
import pytest
import torch
from torch import nn

from p2pfl.errors import IncompatibleModel
from p2pfl.model_state import ModelState


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_flat_vector_holds_every_float_tensor_with_named_views():
    model = small_model()
    state = ModelState.from_module(model)
    floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    assert state.flat.numel() == sum(v.numel() for v in floats.values())
    assert state.layout.names == tuple(floats)
    for name, tensor in floats.items():
        torch.testing.assert_close(state.tensor(name), tensor)
    # views, not copies: writing the flat vector changes the named tensor
    state.flat[state.layout.specs[0].offset] = 42.0
    assert state.tensor("0.weight").reshape(-1)[0] == 42.0
    assert list(state.extras) == ["1.num_batches_tracked"]
    assert state.nbytes == state.flat.numel() * 4 + 8


def test_state_dict_round_trip_restores_the_model_exactly():
    model = small_model()
    state = ModelState.from_module(model)
    other = small_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_state_dict(state.state_dict())
    for (k, v), (_, w) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_numpy_round_trip_keeps_values_and_dtypes():
    state = ModelState.from_module(small_model())
    arrays = state.to_numpy()
    assert arrays["1.num_batches_tracked"].dtype == np.int64
    back = state.from_numpy(arrays)
    assert torch.equal(back.flat, state.flat)
    assert torch.equal(back.extras["1.num_batches_tracked"], state.extras["1.num_batches_tracked"])


def test_received_arrays_are_copied_so_the_wire_buffer_is_not_shared():
    state = ModelState.from_module(small_model())
    arrays = {k: v.copy() for k, v in state.to_numpy().items()}
    back = state.from_numpy(arrays)
    arrays["0.weight"][:] = 7.0
    assert not torch.any(back.tensor("0.weight") == 7.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("0.bias"), "missing"),
        (lambda a: a.update(extra=np.zeros(1, np.float32)), "unexpected"),
        (lambda a: a.update({"0.weight": np.zeros((3, 4), np.float32)}), "expected float32"),
        (lambda a: a.update({"0.weight": np.zeros((4, 3), np.float64)}), "expected float32"),
        (lambda a: a["2.bias"].__setitem__(0, np.nan), "NaN"),
        (lambda a: a["2.bias"].__setitem__(1, np.inf), "infinite"),
    ],
)
def test_incompatible_models_are_refused_by_name(mutate, message):
    state = ModelState.from_module(small_model())
    arrays = {k: v.copy() for k, v in state.to_numpy().items()}
    mutate(arrays)
    with pytest.raises(IncompatibleModel, match=message):
        state.from_numpy(arrays)
