"""Many nodes' models as rows of one tensor, trained in batches: the emulator's learner at scale.

At 10,000 nodes one small SGD step per node costs far more in Python and dispatch than in arithmetic.
A `LearnerPool` keeps every node's parameters as one row of an (N, d) tensor, and
`PooledLearner.train` only schedules its steps: they run together with every other scheduled
learner's, as one `torch.func.vmap`-ed step, the next time any of those learners is read (`state`,
`load`, `evaluate`). The node code does not notice: in a virtual instant every node schedules its
training before any of them wakes up to read a result, and a learner's own steps always run before
its parameters are read or replaced, so the outcome is the one of training on the spot.

Learners are also lazy: a node's row, data and (independent) initialisation are made when it first
needs them, so 100,000 nodes of which a few hundred ever train cost a few hundred rows.

Each learner draws its batches as `Learner` does (same seed, same batches) and steps plain SGD, so a
pooled run matches an unpooled one up to float rounding. What cannot be batched this way (modules
with buffers, non-float parameters, models that mask their own gradients) uses `Learner`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import vector_to_parameters
from torch.utils.data import Dataset, TensorDataset

from p2pfl.learner import Evaluation, ShuffledIndices, cross_entropy, evaluate_on, on_device
from p2pfl.model_state import Layout, ModelState

__all__ = ["LearnerPool", "PooledLearner", "poolable"]

LossFn = Callable[..., torch.Tensor]


def poolable(model: nn.Module) -> bool:
    """Whether `model` can train in a pool: float32 parameters only, no buffers, no custom loading."""
    return not list(model.buffers()) and all(p.dtype == torch.float32 for p in model.parameters())


def _import_torch_dynamo_now() -> None:
    """Import `torch._dynamo` here, not where torch would: inside the first batched gradient.

    Importing it runs `torch.fx.wrap`, which keeps its own frame in a local: a cycle, and the frame's
    `f_back` chain holds every frame above it, so the first step's batches, parameters and gradients
    (about 200 MiB at 10,000 nodes) lived until the cycle collector ran, which an emulation holds
    back (`simulations.emulation`). Imported while the pool is made, the cycle holds nothing big.
    """
    import torch._dynamo  # noqa: F401


class LearnerPool:
    """The parameters of same-architecture models, one row each, and the steps scheduled on them.

    `make_model(seed=...)` builds a node's initial model (as `Task.make_model`); `template` is any
    model of the architecture, used only for its structure. All learners share `lr`, `batch_size`
    and `loss_fn`.
    """

    def __init__(
        self,
        make_model: Callable[..., nn.Module],
        *,
        lr: float,
        batch_size: int,
        test_data: Dataset | None = None,
        loss_fn: LossFn = cross_entropy,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        template = make_model(seed=0)
        if not poolable(template):
            raise ValueError("a pooled model needs float32 parameters and no buffers")
        self.device = torch.device("cpu")
        self.template = template.to(self.device)
        self._evaluator = make_model(seed=0).to(self.device).requires_grad_(False)
        self.layout = Layout.of(dict(template.named_parameters()))
        self.lr = lr
        self.batch_size = batch_size
        self.loss_fn = loss_fn
        self.test_data = on_device(test_data, self.device) if test_data is not None else None
        self._make_model = make_model
        self._initial: tuple[int, torch.Tensor] | None = None  # the last initial state made, by seed
        self._rows = torch.empty(0, self.layout.numel)
        self._used = 0
        self._pending: dict[PooledLearner, int] = {}  # learner -> steps still to run, in schedule order
        self._samples = _Samples()
        self._gradients = vmap(grad(self._loss))
        _import_torch_dynamo_now()

    def learner(self, *, data: Callable[[], Dataset], init_seed: int, seed: int) -> PooledLearner:
        """A learner whose training data is `data()`, made when first needed, and whose initial
        model is `make_model(seed=init_seed)`; `seed` drives its batch order."""
        return PooledLearner(self, data=data, init_seed=init_seed, seed=seed)

    @property
    def rows_used(self) -> int:
        return self._used

    def flush(self) -> None:
        """Run every scheduled step, one batched step per round of pending learners."""
        pending = self._pending
        while pending:
            learners = list(pending)
            self._step(learners)
            for learner in learners:
                if pending[learner] == 1:
                    del pending[learner]
                else:
                    pending[learner] -= 1

    # --- for PooledLearner --------------------------------------------------------------------

    def _schedule(self, learner: PooledLearner, steps: int) -> None:
        self._pending[learner] = self._pending.get(learner, 0) + steps

    def _initial_flat(self, seed: int) -> torch.Tensor:
        """The initial parameters for `seed` (cached for the last seed: a shared init costs one model)."""
        if self._initial is None or self._initial[0] != seed:
            model = self._make_model(seed=seed)
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(self.device)
            self._initial = (seed, flat)
        return self._initial[1]

    def _new_row(self, flat: torch.Tensor) -> int:
        if self._used == len(self._rows):
            self._rows = _grown(self._rows, max(16, 2 * len(self._rows)), self._used)
        self._rows[self._used] = flat
        self._used += 1
        return self._used - 1

    def _row(self, index: int) -> torch.Tensor:
        return self._rows[index]

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of the parameters in `flat`, which is (d,) or (n, d)."""
        lead = flat.shape[:-1]
        return {
            spec.name: flat[..., spec.offset : spec.offset + spec.numel].view(*lead, *spec.shape)
            for spec in self.layout.specs
        }

    def _evaluator_on(self, flat: torch.Tensor) -> nn.Module:
        """The evaluation model with the values of `flat` (d,) as its parameters: views of it, not
        copies, so valid until `flat` changes. A node evaluates once per evaluated round, and
        `functional_call` costs more per call than pointing a model's parameters at the row."""
        vector_to_parameters(flat, self._evaluator.parameters())
        return self._evaluator

    def _loss(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor):
        return self.loss_fn(functional_call(self.template, params, (inputs,)), targets)

    @torch.no_grad()
    def _step(self, learners: list[PooledLearner]) -> None:
        """One SGD step for each of `learners`, batched over those whose batches have one size."""
        groups: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
        for learner in learners:
            positions = learner._indices.next()
            rows, batches = groups.setdefault(len(positions), ([], []))
            rows.append(learner._index)
            batches.append(positions)
        for rows, batches in groups.values():
            index = torch.tensor(rows)
            inputs, targets = self._samples.gather(torch.cat(batches), len(rows))
            with torch.enable_grad():
                gradients = self._gradients(self._params(self._rows.index_select(0, index)), inputs, targets)
            flat = torch.cat([gradients[spec.name].reshape(len(rows), -1) for spec in self.layout.specs], 1)
            self._rows.index_add_(0, index, flat, alpha=-self.lr)


class _Samples:
    """Every pooled learner's training samples, appended to one inputs and one targets tensor.

    A batched step then gathers the batches of all its learners with one index per tensor, where
    slicing each learner's own data cost two small tensor operations per learner and step.
    """

    def __init__(self) -> None:
        self._inputs: torch.Tensor | None = None
        self._targets = torch.empty(0, dtype=torch.long)
        self._used = 0

    def add(self, data: Dataset) -> int:
        """Append `data` (a `TensorDataset` of inputs and targets); return where it starts."""
        if not (isinstance(data, TensorDataset) and len(data.tensors) == 2):
            raise TypeError("a pooled learner's data must be a TensorDataset of (inputs, targets)")
        inputs, targets = data.tensors
        if self._inputs is None:
            self._inputs = torch.empty(0, *inputs.shape[1:], dtype=inputs.dtype)
            self._targets = torch.empty(0, *targets.shape[1:], dtype=targets.dtype)
        stored = (self._inputs, self._targets)
        if any(
            t.shape[1:] != s.shape[1:] or t.dtype != s.dtype
            for t, s in zip((inputs, targets), stored, strict=True)
        ):
            raise ValueError("every pooled learner's samples need one shape and dtype")
        start, end = self._used, self._used + len(inputs)
        if end > len(self._inputs):
            size = max(1024, end, 2 * len(self._inputs))
            self._inputs, self._targets = (_grown(t, size, start) for t in stored)
        self._inputs[start:end] = inputs
        self._targets[start:end] = targets
        self._used = end
        return start

    def gather(self, positions: torch.Tensor, learners: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at `positions`, as (learners, batch, ...) inputs and targets."""
        assert self._inputs is not None, "gather before any add"
        inputs, targets = self._inputs[positions], self._targets[positions]
        return inputs.view(learners, -1, *inputs.shape[1:]), targets.view(learners, -1, *targets.shape[1:])


def _grown(tensor: torch.Tensor, size: int, used: int) -> torch.Tensor:
    """`tensor` in a new one of `size` rows, its first `used` rows copied (the rest uninitialised)."""
    grown = torch.empty(size, *tensor.shape[1:], dtype=tensor.dtype)
    grown[:used] = tensor[:used]
    return grown


class PooledLearner:
    """One node's learner in a `LearnerPool`; `train` schedules steps, which run batched later.

    `train` returns None: the loss of a step that has not run yet is not known.
    """

    def __init__(self, pool: LearnerPool, *, data: Callable[[], Dataset], init_seed: int, seed: int) -> None:
        self._pool = pool
        self._data = data
        self._init_seed = init_seed
        self._seed = seed
        self._index: int | None = None  # the row, once the learner has parameters of its own
        self._train: ShuffledIndices | None = None

    @property
    def batch_size(self) -> int:
        return self._pool.batch_size

    @property
    def num_samples(self) -> int:
        return self._indices.size

    @property
    def has_test_data(self) -> bool:
        return self._pool.test_data is not None

    @property
    def _indices(self) -> ShuffledIndices:
        if self._train is None:
            pool = self._pool
            data = self._data()
            if len(data) == 0:
                raise ValueError("train_data is empty")
            offset = pool._samples.add(data)
            self._train = ShuffledIndices(len(data), pool.batch_size, seed=self._seed, offset=offset)
        return self._train

    def train(self, *, steps: int) -> None:
        """Schedule `steps` SGD steps; they run before this learner's parameters are next read."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if steps:
            self._materialise()
            self._pool._schedule(self, steps)

    def state(self) -> ModelState:
        return ModelState(self._pool.layout, self._flat().clone())

    def load(self, state: ModelState) -> None:
        pool = self._pool
        if (state.layout is not pool.layout and state.layout != pool.layout) or state.extras:
            raise ValueError("the state does not fit the pooled model: other tensor names or shapes")
        self._settle()
        if self._index is None:
            self._index = pool._new_row(state.flat)
        else:
            pool._row(self._index).copy_(state.flat)

    def evaluate(self) -> Evaluation:
        pool = self._pool
        if pool.test_data is None:
            raise ValueError("no test data: the pool was made without test_data")
        return evaluate_on(pool._evaluator_on(self._flat()), pool.test_data, pool.loss_fn, pool.device)

    def _settle(self) -> None:
        """Run this learner's scheduled steps (and everyone else's: they batch together)."""
        if self in self._pool._pending:
            self._pool.flush()

    def _flat(self) -> torch.Tensor:
        self._settle()
        pool = self._pool
        return pool._row(self._index) if self._index is not None else pool._initial_flat(self._init_seed)

    def _materialise(self) -> None:
        if self._index is None:
            self._index = self._pool._new_row(self._pool._initial_flat(self._init_seed))
