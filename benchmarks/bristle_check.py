"""Reference check for Bristle (ALGORITHMS.md section 3): average vs median vs Bristle under label shift.

Setup (all seeded by --seed):

* digits (8x8, 10 classes); 300 held-out samples pre-train a 64 -> 32 tanh feature extractor that
  is then frozen and shared by every node (`p2pfl.transfer.pretrain_features`); 400 further samples
  are the global test set on which benign accuracy is measured (all 10 classes); the rest is the
  pool the nodes draw their data from.
* 20 benign nodes with 4 classes each, node i having classes i, i+1, i+2, i+3 (mod 10), so every
  class belongs to 8 nodes and two nodes share 0 to 4 classes. Each draws, per own class, `--train`
  training samples and 10 local test samples from the pool (draws of different nodes may overlap).
* attackers hold `--train * 4 / 10` samples of every class with every label shifted k -> k+1
  (`p2pfl.attacks.LabelFlip`), train all columns and never integrate anything.
* model: the frozen features, then `W` (32 x 10, starts at zero, exchanged) and a local bias. Every
  iteration each node takes `--local-steps` full-batch gradient steps (benign nodes on the columns
  of their own classes only, `p2pfl.transfer.local_step`), then every benign node merges with all
  other nodes' W (all-to-all): average (of own and received), coordinate-wise median (of own and
  received, the mean of the two middle values for an even count), or `Bristle` (defaults 20 closest
  + 5 random, 3 shared classes, the node's 10-per-class local test set, its own bias).

Prints mean benign accuracy after --iterations (300) for 0 of 20, 10 of 30 and 30 of 50 attackers,
and the wall time. Standalone: `python benchmarks/bristle_check.py --seed 0`.

Note on the median column: with own-column training (the spec's setup, the default) every class
belongs to 8 of the 20 benign nodes, so in every coordinate at least 12 of the 20 values are the
previous consensus and the coordinate-wise median never moves: median stays at chance without
attackers. `--baseline-columns all` lets benign nodes train every column under average and median.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pfl.aggregation.base import Contribution
from p2pfl.aggregation.bristle import Bristle
from p2pfl.attacks import LabelFlip
from p2pfl.model_state import ModelState
from p2pfl.transfer import accuracy, local_step, pretrain_features

NUM_CLASSES = 10
BENIGN = 20
CLASSES_PER_NODE = 4
LOCAL_TEST_PER_CLASS = 10
ROWS = ((0, 20), (10, 30), (30, 50))  # (attackers, nodes)
RULES = ("average", "median", "bristle")


class World:
    """The data every run of one seed shares: frozen features, node data, the global test set."""

    def __init__(self, *, seed: int, train_per_class: int, max_attackers: int) -> None:
        digits = load_digits()
        inputs = torch.from_numpy((digits.data / 16.0).astype(np.float32))
        labels = torch.from_numpy(digits.target.astype(np.int64))
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        pretrain, test, pool = order[:300], order[300:700], order[700:]
        extractor = pretrain_features(inputs[pretrain], labels[pretrain], seed=seed)
        with torch.no_grad():
            feats = extractor(inputs)
        self.test_x, self.test_y = feats[test], labels[test]
        by_class = [pool[labels[pool].numpy() == c] for c in range(NUM_CLASSES)]

        # Benign nodes: train and local test samples of their own classes.
        self.classes = [[(i + j) % NUM_CLASSES for j in range(CLASSES_PER_NODE)] for i in range(BENIGN)]
        train_idx, local_idx = [], []
        for own in self.classes:
            picks = [
                rng.choice(by_class[c], train_per_class + LOCAL_TEST_PER_CLASS, replace=False) for c in own
            ]
            train_idx.append(np.concatenate([p[:train_per_class] for p in picks]))
            local_idx.append(np.concatenate([p[train_per_class:] for p in picks]))
        # Attackers: the same number of training samples, spread over all classes, labels shifted.
        per_class = train_per_class * CLASSES_PER_NODE // NUM_CLASSES
        flip = LabelFlip(num_classes=NUM_CLASSES, shift=1)
        attacker_idx = [
            np.concatenate([rng.choice(by_class[c], per_class, replace=False) for c in range(NUM_CLASSES)])
            for _ in range(max_attackers)
        ]
        self.benign_x = torch.stack([feats[i] for i in train_idx])  # (B, n, f)
        self.benign_y = torch.stack([labels[i] for i in train_idx])
        self.local_x = [feats[i] for i in local_idx]
        self.local_y = [labels[i] for i in local_idx]
        self.attacker_x = [feats[i] for i in attacker_idx]
        self.attacker_y = [flip(labels[i]) for i in attacker_idx]
        self.benign_columns = torch.zeros(BENIGN, NUM_CLASSES, dtype=torch.bool)
        for i, own in enumerate(self.classes):
            self.benign_columns[i, own] = True


def run(
    world: World,
    rule: str,
    attackers: int,
    *,
    iterations: int,
    lr: float,
    local_steps: int,
    seed: int,
    baseline_columns: str = "own",
) -> float:
    """Mean accuracy of the benign nodes on the global test set after `iterations`."""
    n = BENIGN + attackers
    features = world.test_x.shape[1]
    x = torch.cat([world.benign_x, *(a.unsqueeze(0) for a in world.attacker_x[:attackers])])
    y = torch.cat([world.benign_y, *(a.unsqueeze(0) for a in world.attacker_y[:attackers])])
    benign_columns = world.benign_columns
    if rule != "bristle" and baseline_columns == "all":
        benign_columns = torch.ones_like(benign_columns)
    columns = torch.cat([benign_columns, torch.ones(attackers, NUM_CLASSES, dtype=torch.bool)])
    weight = torch.zeros(n, features, NUM_CLASSES)
    bias = torch.zeros(n, NUM_CLASSES)
    bristles = [
        Bristle(
            test_features=world.local_x[i],
            test_labels=world.local_y[i],
            classes=world.classes[i],
            bias_name="bias",
            seed=seed * 1000 + i,
        )
        for i in range(BENIGN)
    ]
    for _ in range(iterations):
        for _ in range(local_steps):
            local_step(weight, bias, x, y, lr=lr, columns=columns)
        if rule == "average":
            weight[:BENIGN] = weight.mean(dim=0)
        elif rule == "median":
            weight[:BENIGN] = weight.quantile(0.5, dim=0)  # interpolates: mean of the two middles
        else:
            sent = [ModelState.from_tensors({"weight": weight[j]}) for j in range(n)]
            merged = []
            for i in range(BENIGN):
                own = ModelState.from_tensors({"weight": weight[i], "bias": bias[i]})
                received = [Contribution(str(j), sent[j]) for j in range(n) if j != i]
                merged.append(bristles[i].aggregate(Contribution(str(i), own), received).tensor("weight"))
            weight[:BENIGN] = torch.stack(merged)
    return accuracy(weight[:BENIGN], bias[:BENIGN], world.test_x, world.test_y).mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.5, help="full-batch gradient step size")
    parser.add_argument("--local-steps", type=int, default=1)
    parser.add_argument("--train", type=int, default=20, help="training samples per own class per node")
    parser.add_argument(
        "--baseline-columns",
        choices=("own", "all"),
        default="own",
        help="which W columns benign nodes train under average and median (Bristle: always own)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the ops are tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Softmax probabilities underflow into subnormal floats as training goes on; without flushing
    # them to zero the CPU matmuls get up to 50x slower.
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    world = World(seed=args.seed, train_per_class=args.train, max_attackers=max(a for a, _ in ROWS))
    print(
        f"Bristle reference check: seed {args.seed}, {args.iterations} iterations, lr {args.lr}, "
        f"{args.local_steps} local step(s), baselines train {args.baseline_columns} columns"
    )
    print(f"| attackers | {' | '.join(RULES)} |")
    print(f"|---|{'---|' * len(RULES)}")
    for attackers, nodes in ROWS:
        results = [
            run(
                world,
                rule,
                attackers,
                iterations=args.iterations,
                lr=args.lr,
                local_steps=args.local_steps,
                seed=args.seed,
                baseline_columns=args.baseline_columns,
            )
            for rule in RULES
        ]
        row = " | ".join(f"{r:.2f}" for r in results)
        print(f"| {attackers} of {nodes} | {row} |", flush=True)
    print(f"wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
