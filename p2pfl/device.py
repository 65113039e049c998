"""Which device a node computes on."""

from __future__ import annotations

import torch


def choose_device(preference: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when available, else the CPU.

    Asking for a CUDA (or MPS) device on a machine without one is an error rather than a silent fallback:
    an operator who configured a GPU wants to know it is not used. So is a CUDA index past the last
    device, which torch would only refuse at the first tensor moved there ("invalid device ordinal").
    """
    if preference is not None:
        device = torch.device(preference)
        if device.type == "cuda":
            _check_cuda(device)
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {device} requested but MPS is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        devices = "1 CUDA device" if count == 1 else f"{count} CUDA devices"
        raise RuntimeError(f"device {device} requested but this machine has {devices}")
