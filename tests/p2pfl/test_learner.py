import pytest
import torch
from torch.utils.data import Dataset

from p2pfl.datasets import load_digits
from p2pfl.device import choose_device
from p2pfl.learner import Learner, ShuffledIndices, cross_entropy
from p2pfl.models import mlp


def test_training_on_digits_raises_test_accuracy_well_above_chance():
    train, test = load_digits(seed=0)
    learner = Learner(mlp((64, 32, 10), seed=0), train, test, batch_size=32, lr=0.2, seed=0)
    before = learner.evaluate()
    learner.train(epochs=5)
    after = learner.evaluate()
    assert before.accuracy < 0.3
    assert after.accuracy > 0.85
    assert after.loss < before.loss
    assert after.samples == len(test)


def test_same_seed_same_batches_and_steps_compose():
    train, test = load_digits(seed=0)
    a = Learner(mlp((64, 16, 10), seed=1), train, test, seed=5)
    b = Learner(mlp((64, 16, 10), seed=1), train, test, seed=5)
    a.train(steps=4)
    a.train(steps=3)
    b.train(steps=7)
    assert torch.equal(a.state().flat, b.state().flat)
    c = Learner(mlp((64, 16, 10), seed=1), train, test, seed=6)
    c.train(steps=7)
    assert not torch.equal(a.state().flat, c.state().flat)


class ListDataset(Dataset):
    """Not a TensorDataset: exercises the DataLoader path."""

    def __init__(self, base):
        self.items = [base[i] for i in range(len(base))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_any_torch_dataset_works():
    train, test = load_digits(seed=0)
    learner = Learner(mlp((64, 32, 10), seed=0), ListDataset(train), ListDataset(test), lr=0.2, seed=0)
    learner.train(epochs=3)
    assert learner.evaluate().accuracy > 0.8


def test_load_replaces_parameters():
    train, test = load_digits(seed=0)
    a = Learner(mlp((64, 8, 10), seed=1), train, test)
    b = Learner(mlp((64, 8, 10), seed=2), train, test)
    b.load(a.state())
    assert torch.equal(a.state().flat, b.state().flat)


def test_argument_errors():
    train, _ = load_digits(seed=0)
    learner = Learner(mlp((64, 8, 10)), train)
    with pytest.raises(ValueError, match="exactly one"):
        learner.train()
    with pytest.raises(ValueError, match="no test data"):
        learner.evaluate()
    with pytest.raises(ValueError, match="batch_size"):
        Learner(mlp((64, 8, 10)), train, batch_size=0)


def test_device_is_cuda_when_available_else_cpu_and_overridable():
    train, _ = load_digits(seed=0)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Learner(mlp((64, 8, 10)), train).device.type == expected
    assert Learner(mlp((64, 8, 10)), train, device="cpu").device.type == "cpu"


def test_asking_for_cuda_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device() == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        choose_device("cuda")


@pytest.mark.parametrize("rows", [5, 127, 128, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_with_its_gradient(rows, reduction):
    generator = torch.Generator().manual_seed(rows)
    logits = (10 * torch.randn(rows, 10, generator=generator)).requires_grad_()
    targets = torch.randint(0, 10, (rows,), generator=generator)
    ours = cross_entropy(logits, targets, reduction=reduction)
    (gradient,) = torch.autograd.grad(ours.sum(), logits)
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)
    (expected_gradient,) = torch.autograd.grad(expected.sum(), logits)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(gradient, expected_gradient)


def test_cross_entropy_passes_other_shapes_to_torch():
    logits, targets = torch.randn(2, 10, 3), torch.randint(0, 10, (2, 3))
    assert torch.equal(cross_entropy(logits, targets), torch.nn.functional.cross_entropy(logits, targets))


def test_shuffled_indices_cover_every_sample_once_per_epoch_and_offset_shifts_them():
    plain, offset = ShuffledIndices(10, 4, seed=3), ShuffledIndices(10, 4, seed=3, offset=100)
    batches = [plain.next() for _ in range(6)]  # two epochs of 4 + 4 + 2
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches[:3]), torch.cat(batches[3:]))  # a fresh shuffle
    again = [offset.next() for _ in range(6)]
    assert all(torch.equal(a, b + 100) for a, b in zip(again, batches, strict=True))
    with pytest.raises(ValueError, match="size and batch_size"):
        ShuffledIndices(0, 4, seed=0)
