"""Which device a node computes on."""

from __future__ import annotations

import torch


def choose_device(preference: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when available, else the CPU.

    Asking for a CUDA (or MPS) device on a machine without one is an error rather than a silent fallback:
    an operator who configured a GPU wants to know it is not used.
    """
    if preference is not None:
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {device} requested but MPS is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
