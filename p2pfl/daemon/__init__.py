"""The node daemon: config, checkpoints, status and metrics endpoint, runner and embedding handles.

Names are imported lazily, so ``p2pfl status`` and config validation do not pay for importing the
libp2p transport::

    from p2pfl.daemon import NodeThread, load_config
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NodeConfig": "p2pfl.daemon.config",
    "load_config": "p2pfl.daemon.config",
    "parse_config": "p2pfl.daemon.config",
    "Checkpoint": "p2pfl.daemon.checkpoint",
    "CheckpointError": "p2pfl.daemon.checkpoint",
    "load_checkpoint": "p2pfl.daemon.checkpoint",
    "save_checkpoint": "p2pfl.daemon.checkpoint",
    "NodeHandle": "p2pfl.daemon.runner",
    "ProtocolEnded": "p2pfl.daemon.runner",
    "open_node": "p2pfl.daemon.runner",
    "run_daemon": "p2pfl.daemon.runner",
    "NodeThread": "p2pfl.daemon.embed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'p2pfl.daemon' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
