"""The libp2p transport of the node daemon: TCP + Noise + Yamux, a model plane, a gossip control plane,
and rendezvous-based peer discovery.

Importing this package imports py-libp2p (heavy, about a second); the emulator never needs to.
"""

from transport.libp2p.control_plane import ControlPlaneConfig
from transport.libp2p.discovery import DiscoveryConfig
from transport.libp2p.errors import (
    InsecureKeyFile,
    KeyFileError,
    ListenFailed,
    MessageTooLarge,
    TransferRejected,
)
from transport.libp2p.identity import load_or_create_key_pair, peer_id_of
from transport.libp2p.model_plane import ModelPlaneConfig, TransferHeader
from transport.libp2p.stats import Libp2pStats
from transport.libp2p.transport import Libp2pTransport, open_libp2p_transport

__all__ = [
    "ControlPlaneConfig",
    "DiscoveryConfig",
    "InsecureKeyFile",
    "KeyFileError",
    "Libp2pStats",
    "Libp2pTransport",
    "ListenFailed",
    "MessageTooLarge",
    "ModelPlaneConfig",
    "TransferHeader",
    "TransferRejected",
    "load_or_create_key_pair",
    "open_libp2p_transport",
    "peer_id_of",
]
