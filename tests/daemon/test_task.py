"""The daemon's digits task: disjoint shards, a shared initialisation, and its SGD."""

from __future__ import annotations

import torch
from daemon_helpers import node_config

from p2pfl.daemon.task import PlainSGD, build_learner


def test_shards_are_disjoint_and_cover_the_training_set(tmp_path):
    learners = [build_learner(node_config(tmp_path, index=i, of=3)) for i in range(3)]
    rows = [{tuple(x.tolist()) for x in learner._train.data.tensors[0]} for learner in learners]
    assert sum(len(r) for r in rows) == sum(learner.num_samples for learner in learners)
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2])
    assert all(learner.state().flat.equal(learners[0].state().flat) for learner in learners)


def test_plain_sgd_matches_torch_sgd():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    ours, theirs = PlainSGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    for step in range(5):
        x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(step)), torch.arange(8) % 3
        for model, optimizer in ((a, ours), (b, theirs)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
