import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from p2pfl.learner import Learner
from p2pfl.models import mlp
from simulations.config import EmulationConfig
from simulations.emulator import run_emulation
from simulations.learner_pool import LearnerPool, poolable
from simulations.synthetic import synthetic_task


@pytest.fixture
def task():
    # 40 samples in batches of 16: every third step has a short batch, which trains in its own group.
    return synthetic_task(seed=1, samples_per_node=40, alpha=0.5)


def _pool(task, **kwargs) -> LearnerPool:
    return LearnerPool(task.make_model, lr=0.1, batch_size=16, test_data=task.test, **kwargs)


def test_pooled_training_matches_a_learner_per_node(task):
    pool = _pool(task)
    plain = [  # on the pool's device (the CPU), also where CUDA is present: the same arithmetic
        Learner(
            task.make_model(seed=i % 2),
            task.local_data(i),
            task.test,
            batch_size=16,
            lr=0.1,
            seed=i,
            device="cpu",
        )
        for i in range(5)
    ]
    pooled = [pool.learner(data=partial(task.local_data, i), init_seed=i % 2, seed=i) for i in range(5)]
    for round_ in range(4):
        for i, (a, b) in enumerate(zip(plain, pooled, strict=True)):
            steps = 1 + (i + round_) % 3  # learners with different step counts batch together
            a.train(steps=steps)
            b.train(steps=steps)
        for a, b in zip(plain, pooled, strict=True):
            torch.testing.assert_close(b.state().flat, a.state().flat, rtol=0, atol=1e-6)
    assert pooled[0].evaluate().accuracy == pytest.approx(plain[0].evaluate().accuracy, abs=1e-9)


def test_scheduled_steps_run_before_the_parameters_are_replaced(task):
    pool = _pool(task)
    learner, other = (pool.learner(data=partial(task.local_data, i), init_seed=0, seed=i) for i in range(2))
    replacement = other.state()
    replacement.flat.fill_(0.5)
    learner.train(steps=2)
    other.train(steps=1)
    learner.load(replacement)  # the two steps ran first, then were overwritten
    assert torch.equal(learner.state().flat, replacement.flat)
    assert not torch.equal(other.state().flat, pool.learner(data=list, init_seed=0, seed=9).state().flat)


def test_learners_are_lazy_until_they_train_or_are_loaded(task):
    made = []

    def data(i):
        made.append(i)
        return task.local_data(i)

    pool = _pool(task)
    learners = [pool.learner(data=partial(data, i), init_seed=0, seed=i) for i in range(100)]
    initial = learners[0].state().flat
    assert torch.equal(learners[99].state().flat, initial) and pool.rows_used == 0 and made == []
    learners[3].train(steps=1)
    learners[3].state()
    learners[7].load(learners[3].state())
    assert pool.rows_used == 2 and made == [3]
    assert torch.equal(learners[7].state().flat, learners[3].state().flat)
    assert torch.equal(learners[5].state().flat, initial)  # never touched: still the shared init


def test_load_refuses_a_state_of_another_model(task):
    pool = _pool(task)
    learner = pool.learner(data=partial(task.local_data, 0), init_seed=0, seed=0)
    other = Learner(mlp((16, 8, 10), seed=0), task.local_data(0)).state()
    with pytest.raises(ValueError, match="does not fit"):
        learner.load(other)
    assert torch.equal(learner.state().flat, pool.learner(data=list, init_seed=0, seed=1).state().flat)


def test_models_with_buffers_are_not_poolable():
    assert poolable(mlp((4, 3)))
    assert not poolable(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="no buffers"):
        LearnerPool(lambda seed: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), lr=0.1, batch_size=4)


def test_an_emulation_trains_all_its_nodes_in_one_batch_and_matches_per_node_training(monkeypatch):
    config = dict(
        nodes=12, task="synthetic", protocol="dpsgd", rounds=6, local_steps=2, seed=3, init="independent"
    )
    batch_sizes = []
    step = LearnerPool._step

    def counted(pool, learners):
        batch_sizes.append(len(learners))
        step(pool, learners)

    monkeypatch.setattr(LearnerPool, "_step", counted)
    batched = run_emulation(EmulationConfig(**config))
    assert batch_sizes == [12] * 12  # 6 rounds x 2 steps, every node in each
    plain = run_emulation(EmulationConfig(**config, batched_training=False))
    assert len(batch_sizes) == 12
    assert [r.mean_accuracy for r in batched.rounds] == pytest.approx(
        [r.mean_accuracy for r in plain.rounds], abs=1e-9
    )
    assert batched.final_mean_accuracy > 0.3


def test_the_first_batched_step_leaves_no_cycle_holding_its_tensors():
    # In a fresh process, where torch has not imported torch._dynamo yet: the first gradient would
    # import it, and torch.fx.wrap's frame cycle then kept the whole step's frames (and tensors)
    # alive until the cycle collector ran.
    script = """
import gc
from functools import partial
import torch
from simulations.learner_pool import LearnerPool
from simulations.synthetic import synthetic_task

task = synthetic_task(seed=1, samples_per_node=40, alpha=0.5)
gc.collect()
gc.disable()
gc.set_debug(gc.DEBUG_SAVEALL)
pool = LearnerPool(task.make_model, lr=0.1, batch_size=16)
learners = [pool.learner(data=partial(task.local_data, i), init_seed=0, seed=i) for i in range(64)]
for learner in learners:
    learner.train(steps=1)
pool.flush()
gc.collect()
frames = sorted({o.f_code.co_name for o in gc.garbage if type(o).__name__ == "frame"})
tensors = sum(isinstance(o, torch.Tensor) for o in gc.garbage)
print(frames, tensors)
assert "_step" not in frames and "flush" not in frames, frames
assert tensors == 0, tensors
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
