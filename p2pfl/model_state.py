"""Model parameters as one flat vector with named views.

Aggregation rules do vector math over many models at once (stack, median, Gram matrices). Keeping
every floating-point tensor of a model in one contiguous buffer makes "stack m models" a single
`torch.stack` and per-tensor work a matter of offsets, with no per-parameter Python loops.
Non-floating buffers (e.g. BatchNorm's `num_batches_tracked`) are carried beside it, never averaged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from p2pfl.errors import IncompatibleModel


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int  # start in the flat vector

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """Names, shapes, dtypes and flat offsets of a model's floating tensors. Shared, immutable."""

    specs: tuple[TensorSpec, ...]
    numel: int

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> Layout:
        specs, offset = [], 0
        for name, tensor in tensors.items():
            specs.append(TensorSpec(name, tuple(tensor.shape), tensor.dtype, offset))
            offset += tensor.numel()
        return cls(tuple(specs), offset)

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)


class ModelState:
    """An ordered name -> tensor mapping on one device, backed by a flat float32 vector."""

    def __init__(self, layout: Layout, flat: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None):
        if flat.ndim != 1 or flat.numel() != layout.numel:
            raise ValueError(
                f"flat vector of {flat.numel()} elements does not fit a layout of {layout.numel}"
            )
        self.layout = layout
        self.flat = flat
        self.extras = dict(extras or {})

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], *, device: torch.device | str | None = None):
        """Copy `tensors` (e.g. a `state_dict()`) into a new state; non-float tensors go to `extras`."""
        floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
        layout = Layout.of(floats)
        device = torch.device(device) if device is not None else _device_of(tensors)
        parts = [tensor.detach().reshape(-1) for tensor in floats.values()]
        if parts and all(t.dtype == torch.float32 and t.device == device for t in parts):
            flat = torch.cat(parts)  # one copy, the same values as the loop below
        else:
            flat = torch.empty(layout.numel, dtype=torch.float32, device=device)
            for spec, part in zip(layout.specs, parts, strict=True):
                flat[spec.offset : spec.offset + spec.numel].copy_(part)
        extras = {
            k: v.detach().to(device, copy=True) for k, v in tensors.items() if not v.is_floating_point()
        }
        return cls(layout, flat, extras)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> ModelState:
        return cls.from_tensors(module.state_dict())

    def tensor(self, name: str) -> torch.Tensor:
        """A view of one tensor (float32) inside the flat vector."""
        spec = self.layout.specs[self.layout.names.index(name)]
        return self.flat[spec.offset : spec.offset + spec.numel].view(spec.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in their original dtypes, ready for `Module.load_state_dict`."""
        out = {
            spec.name: self.flat[spec.offset : spec.offset + spec.numel].view(spec.shape).to(spec.dtype)
            for spec in self.layout.specs
        }
        out.update(self.extras)
        return out

    def with_flat(self, flat: torch.Tensor) -> ModelState:
        """A state with the same layout and extras and new float values."""
        return ModelState(self.layout, flat, self.extras)

    def clone(self) -> ModelState:
        return ModelState(self.layout, self.flat.clone(), {k: v.clone() for k, v in self.extras.items()})

    @property
    def device(self) -> torch.device:
        return self.flat.device

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size() + sum(
            t.numel() * t.element_size() for t in self.extras.values()
        )

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Host arrays for the wire, in the original dtypes.

        float32 tensors of a state on the CPU are views of its flat vector (no copy): the state must
        not change while they are in use, which holds for the states nodes send (fresh copies).
        """
        flat = self.flat.detach().cpu().numpy()
        out = {
            spec.name: flat[spec.offset : spec.offset + spec.numel].reshape(spec.shape)
            if spec.dtype == torch.float32
            else self.tensor(spec.name).to(spec.dtype).cpu().numpy()
            for spec in self.layout.specs
        }
        out.update((name, t.detach().cpu().numpy()) for name, t in self.extras.items())
        return out

    def from_numpy(self, arrays: Mapping[str, np.ndarray]) -> ModelState:
        """Decode a received model against this state's layout; raise `IncompatibleModel` if it differs.

        The check happens before anything is copied, and the new state never shares memory with the
        wire buffer, so a bad payload can neither crash the node nor corrupt its model.
        """
        expected = set(self.layout.names) | set(self.extras)
        if set(arrays) != expected:
            missing, unexpected = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise IncompatibleModel(f"tensor names differ: missing {missing}, unexpected {unexpected}")
        for spec in self.layout.specs:
            _check_array(spec.name, arrays[spec.name], spec.shape, spec.dtype)
        for name, tensor in self.extras.items():
            _check_array(name, arrays[name], tuple(tensor.shape), tensor.dtype)
        host = np.concatenate([arrays[name].reshape(-1) for name in self.layout.names], dtype=np.float32)
        if not np.isfinite(host).all():  # one pass over all tensors; name the first bad one
            for spec in self.layout.specs:
                if not np.isfinite(arrays[spec.name]).all():
                    raise IncompatibleModel(f"tensor {spec.name!r} has NaN or infinite values")
        flat = torch.from_numpy(host).to(self.device)
        extras = {name: torch.from_numpy(arrays[name].copy()).to(self.device) for name in self.extras}
        return ModelState(self.layout, flat, extras)


def _check_array(name: str, array: np.ndarray, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    expected_dtype = _numpy_dtype(dtype)
    if array.dtype != expected_dtype or array.shape != shape:
        raise IncompatibleModel(
            f"tensor {name!r}: expected {expected_dtype}{list(shape)}, got {array.dtype}{list(array.shape)}"
        )


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _device_of(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device if tensors else torch.device("cpu")
